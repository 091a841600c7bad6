"""Import every module of the installed fastgen package; print what failed and exit 1 if any did.
Modules that need an optional extra (ONNX, TensorRT, Ray, Triton, ...) must import without it too:
they load those libraries only when used."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback


def main() -> int:
    import fastgen.kernels  # installed from kernels/fastgen_kernels/, beside the package folder

    names = ["fastgen", *(m.name for m in pkgutil.walk_packages(fastgen.__path__, prefix="fastgen."))]
    names += [m.name for m in pkgutil.walk_packages(fastgen.kernels.__path__, prefix="fastgen.kernels.")]
    names = sorted(set(names) | {"fastgen.kernels"})
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name)
            print(f"cannot import {name}:\n{traceback.format_exc()}", file=sys.stderr)
    print(f"imported {len(names) - len(failed)} of {len(names)} modules")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
