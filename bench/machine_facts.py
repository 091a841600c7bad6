"""The machine a bench row was measured on, as /proc/cpuinfo names it: shared by the bench scripts
(run as `python bench/NAME.py`, so this folder is on their path)."""

from __future__ import annotations

import os
import platform


def cpu_facts() -> dict[str, object]:
    """The CPU model, the number of cores and whether it has native bf16 (AVX512-BF16)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags}


def cpu_label() -> str:
    """One text for a result file: "MODEL, with avx512_bf16" or "MODEL, no avx512_bf16"."""
    facts = cpu_facts()
    return f"{facts['cpu']}, {'with' if facts['avx512_bf16'] else 'no'} avx512_bf16"
