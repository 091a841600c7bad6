"""The I/O contract of a denoiser, one per model kind.

Every backend runs `forward(x_t [B,C,H,W], t [B] int64, cond [B,...]) -> prediction [B,C,H,W]`.
Only the batch axis varies; everything else is fixed by the model. This one description feeds
the ONNX input/output names and dynamic axes, the TensorRT shape profile, the dummy inputs used
for export and parity checks, and the shape checks a backend runs on every call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from fastgen.models.base import DiTDenoiser, LabelUNetDenoiser, TextDenoiser, sample_hw
from fastgen.models.flow_text import PackedTextDenoiser
from fastgen.models.flux import FluxDenoiser

BATCH_AXIS = "batch"
INPUT_NAMES = ("x_t", "t", "cond")
OUTPUT_NAME = "prediction"
DEFAULT_TEXT_LENGTH = 77  # CLIP's context length, when no tokenizer says otherwise


@dataclass(frozen=True)
class TensorSpec:
    """One tensor: its name, its shape after the batch axis, and its dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "model" means the denoiser's floating dtype; otherwise a torch dtype name

    def torch_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        return model_dtype if self.dtype == "model" else getattr(torch, self.dtype)

    def full_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.shape)


@dataclass(frozen=True)
class IOSpec:
    """Inputs (x_t, t, cond) and output of one denoiser; the batch axis is axis 0 of each."""

    family: str  # "unet-text", "unet-label", "dit-label", "sd3-text" or "flux-text"
    inputs: tuple[TensorSpec, TensorSpec, TensorSpec]
    output: TensorSpec
    num_labels: int = 0  # label-conditioned models: dummy labels stay below this

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Names -> {0: "batch"}, the form `torch.onnx.export` takes for every exporter."""
        names = [*self.input_names, self.output.name]
        return {name: {0: BATCH_AXIS} for name in names}

    def dynamic_shapes(self) -> dict[str, dict[int, str]]:
        """The dynamo exporter's form: inputs only, keyed like `forward`'s arguments."""
        return {name: {0: BATCH_AXIS} for name in self.input_names}

    def shape_profile(self, min_batch: int, opt_batch: int, max_batch: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Input name -> (min, opt, max) shapes, as a TensorRT optimization profile takes them."""
        check_batch_sizes((min_batch, opt_batch, max_batch))
        return {s.name: tuple(s.full_shape(b) for b in (min_batch, opt_batch, max_batch)) for s in self.inputs}

    def dummy_inputs(
        self, batch: int, *, dtype: torch.dtype, device: torch.device | str = "cpu", seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Seeded, non-trivial inputs: unit-normal x_t, timesteps across the whole schedule, and
        normal embeddings or labels cycling through the model's label range."""
        g = torch.Generator().manual_seed(seed)
        x_spec, _, c_spec = self.inputs
        x_t = torch.randn(x_spec.full_shape(batch), generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g, dtype=torch.int64)
        if c_spec.dtype == "int64":
            cond = torch.arange(batch, dtype=torch.int64) % max(1, self.num_labels)
        else:
            cond = torch.randn(c_spec.full_shape(batch), generator=g)
        to = lambda v, s: v.to(device=device, dtype=s.torch_dtype(dtype))
        return to(x_t, x_spec), t.to(device), to(cond, c_spec)

    def check(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, rows: torch.Tensor | None = None) -> int:
        """The batch size, after checking every input against the spec. With `rows` (row ->
        index into x_t and t), cond has one entry per row and x_t, t one per distinct input.

        Only shapes and dtypes are checked, which the host knows; the values of `rows` are
        checked only when they are on the host: reading a device tensor's min/max would wait for
        the GPU on every call. The engine makes `rows` on the host, in range by construction."""
        batch = x_t.shape[0] if x_t.dim() > 0 else -1
        out_rows = batch
        if rows is not None:
            out_rows = rows.shape[0] if rows.dim() == 1 else -1
            if (
                rows.dim() != 1
                or rows.is_floating_point()
                or (rows.device.type == "cpu" and rows.numel() and not 0 <= int(rows.min()) <= int(rows.max()) < batch)
            ):
                raise ValueError(
                    f"denoiser input 'rows' must be a 1-d integer tensor of indices below {batch} (the rows of x_t)"
                )
        for spec, value, n in zip(self.inputs, (x_t, t, cond), (batch, batch, out_rows)):
            if tuple(value.shape) != spec.full_shape(n):
                raise ValueError(
                    f"denoiser input {spec.name!r} has shape {tuple(value.shape)}, expected "
                    f"{spec.full_shape(n)} (batch {n} from {'rows' if n is out_rows and rows is not None else 'x_t'}) "
                    f"for a {self.family} model"
                )
            if spec.dtype == "int64" and value.is_floating_point():
                raise ValueError(f"denoiser input {spec.name!r} must hold integers, got {value.dtype}")
        return out_rows

    def as_dict(self) -> dict:
        return asdict(self)


def check_batch_sizes(sizes: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(sizes) != 3 or not 1 <= sizes[0] <= sizes[1] <= sizes[2]:
        raise ValueError(f"batch sizes must be MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {sizes}")
    return tuple(int(s) for s in sizes)  # type: ignore[return-value]


def denoiser_spec(denoiser: nn.Module, *, text_length: int | None = None) -> IOSpec:
    """The I/O spec of one of fastgen's denoiser wrappers, read from its model config."""
    x = lambda c, hw: TensorSpec("x_t", (c, *hw), "model")
    t = TensorSpec("t", (), "int64")
    if isinstance(denoiser, TextDenoiser):
        config = denoiser.unet.config
        hw, channels = sample_hw(config.sample_size), int(config.in_channels)
        cond = TensorSpec("cond", (int(text_length or DEFAULT_TEXT_LENGTH), int(config.cross_attention_dim)), "model")
        out = TensorSpec(OUTPUT_NAME, (int(config.out_channels), *hw), "model")
        return IOSpec("unet-text", (x(channels, hw), t, cond), out)
    if isinstance(denoiser, (LabelUNetDenoiser, DiTDenoiser)):
        is_dit = isinstance(denoiser, DiTDenoiser)
        net = denoiser.transformer if is_dit else denoiser.unet
        config = net.config
        hw, channels = sample_hw(config.sample_size), int(config.in_channels)
        out_channels = denoiser.latent_channels if is_dit else int(config.out_channels)
        cond = TensorSpec("cond", (), "int64")
        family = "dit-label" if is_dit else "unet-label"
        out = TensorSpec(OUTPUT_NAME, (out_channels, *hw), "model")
        labels = int(config.num_embeds_ada_norm if is_dit else config.num_class_embeds)
        return IOSpec(family, (x(channels, hw), t, cond), out, num_labels=labels)
    if isinstance(denoiser, PackedTextDenoiser):
        return _flow_spec(denoiser, text_length)
    raise TypeError(
        f"no I/O spec for denoiser type {type(denoiser).__name__}; backends and export take "
        "the `denoiser` of a fastgen adapter (TextDenoiser, LabelUNetDenoiser, DiTDenoiser, SD3Denoiser, "
        "FluxDenoiser)"
    )


def _flow_spec(denoiser: PackedTextDenoiser, text_length: int | None) -> IOSpec:
    """SD3 / Flux: x_t in the VAE's latent layout, cond one packed row of `text_length` tokens
    of the joint-attention width followed by the pooled projection."""
    if text_length is None:
        raise ValueError("a flow transformer's I/O spec needs text_length (its condition's tokens per prompt)")
    cond = TensorSpec("cond", (int(text_length) * denoiser.text_width + denoiser.pooled_width,), "model")
    config = denoiser.transformer.config
    if isinstance(denoiser, FluxDenoiser):
        shape, family = (int(config.in_channels) // 4, *denoiser.latent_hw), "flux-text"
    else:
        shape, family = (int(config.in_channels), *sample_hw(config.sample_size)), "sd3-text"
    x = TensorSpec("x_t", shape, "model")
    return IOSpec(family, (x, TensorSpec("t", (), "int64"), cond), TensorSpec(OUTPUT_NAME, shape, "model"))


def adapter_spec(adapter) -> IOSpec:
    """The I/O spec of an adapter's denoiser; text models take their length from the tokenizer
    (flow transformers from the adapter, which knows its T5 length)."""
    tokenizer = getattr(adapter, "tokenizer", None)
    length = getattr(adapter, "text_length", None)
    if length is None and tokenizer is not None:
        length = int(tokenizer.model_max_length)
    return denoiser_spec(adapter.denoiser, text_length=length)
