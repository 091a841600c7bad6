"""The names of fastgen's options that have a fixed set of values, without importing torch.

The command line builds its parser from these (so `fastgen --help` stays fast); the modules that
implement each option import them from here, so there is one list of each.
"""

from __future__ import annotations

LOSSES = ("l2", "l1", "huber")
POLICIES = ("exhaustive", "stages", "paired")
TIMESTEP_MODES = ("even", "random")
BACKENDS = ("torch", "onnxruntime", "tensorrt")
EXPORT_FORMATS = ("onnx", "tensorrt")
EXPORTERS = ("dynamo", "torchscript")
DTYPE_NAMES = ("fp32", "float32", "fp16", "float16", "bf16", "bfloat16")
INVERT_MODES = ("auto", "always", "never")
# Image files with more pixels are refused from their header (fastgen.images; --max-pixels).
DEFAULT_MAX_PIXELS = 100_000_000
# Seeds are combined with block indices into torch generator seeds; this keeps them in range.
MAX_SEED = 2**32 - 1
