"""The checkout root is on sys.path for `python -m ...`, for Ray workers (they inherit the driver's
working directory) and for subprocesses started from it. No folder or module at the root may then
take the place of another distribution's top-level package: `kernels/` did, and every model load
failed once transformers began importing Hugging Face's own `kernels`."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _importable_names_at(root: Path) -> set[str]:
    """Top-level names that `import NAME` finds in `root` itself: packages and modules."""
    names = {path.parent.name for path in root.glob("*/__init__.py")}
    names |= {path.stem for path in root.glob("*.py")}
    return names


def test_no_checkout_folder_shadows_an_installed_distribution():
    provided = importlib.metadata.packages_distributions()
    clashes = {
        name: provided[name]
        for name in _importable_names_at(ROOT)
        if name in provided and any(dist != "fastgen" for dist in provided[name])
    }
    assert not clashes, f"importing these from the checkout root would hide installed packages: {clashes}"


def test_kernels_folder_is_not_a_package():
    # The folder holds the source of fastgen.kernels one level down; as a package of its own it
    # would be found before site-packages from the root.
    assert (ROOT / "kernels" / "fastgen_kernels" / "__init__.py").is_file()
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert "kernels" not in _importable_names_at(ROOT)


def test_model_stack_imports_from_the_checkout_root():
    """What `python -m pytest`, `python -m fastgen` and a Ray worker do: the root first on sys.path,
    then transformers, diffusers' model classes and fastgen's kernels."""
    probe = (
        "import importlib.util, sys\n"
        "sys.path.insert(0, '')\n"
        "from diffusers import AutoencoderKL, UNet2DConditionModel\n"
        "from transformers import CLIPTextModel\n"
        "import fastgen.kernels\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(fastgen.kernels.__file__)\n"
        "print(spec.origin if spec is not None else 'none')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    fastgen_kernels_file, other_kernels = done.stdout.split()[-2:]
    assert Path(fastgen_kernels_file).parent.name in ("fastgen_kernels", "kernels")
    assert Path(fastgen_kernels_file).parent.parent.name in ("kernels", "fastgen")
    # Whatever `import kernels` finds (Hugging Face's, which the test extra installs, or nothing),
    # it is not this checkout's folder.
    if other_kernels != "none":
        assert not Path(other_kernels).resolve().is_relative_to(ROOT / "kernels"), other_kernels
