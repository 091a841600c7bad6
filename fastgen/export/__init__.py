"""torch -> ONNX -> TensorRT engine, with a cache keyed on everything an export is tied to.

Three separate steps: `onnx_export` (export + checker + parity), `tensorrt_build` (engine from
ONNX), `cache` (keys, atomic publishing); `pipeline` chains them with cache lookups and
`loading.load_backend` hands the result to a backend. The I/O spec of each model kind
(`fastgen.backends.spec`) feeds all of them. onnx, onnxruntime and tensorrt are imported only
when a step needs them.
"""

from fastgen.backends.spec import IOSpec, adapter_spec, denoiser_spec
from fastgen.export.cache import ExportCache, ExportKey, default_cache_dir
from fastgen.export.pipeline import FORMATS, ExportResult, export_model

__all__ = [
    "FORMATS",
    "ExportCache",
    "ExportKey",
    "ExportResult",
    "IOSpec",
    "adapter_spec",
    "default_cache_dir",
    "denoiser_spec",
    "export_model",
]
