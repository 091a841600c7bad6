"""The public API: `DiffusionClassifier` and the one-call `classify`.

Both validate their arguments, then hand the work to the engine.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from fastgen.api.calibration import Calibration
from fastgen.builtin import BUILTIN_PREFIX
from fastgen.engine.config import ScoringConfig
from fastgen.engine.denoiser import Denoiser
from fastgen.engine.faults import DenoiseGuard, fp32_copy
from fastgen.engine.policies import Policy, make_policy
from fastgen.engine.policies.noise_profile import SCORING_FIELDS
from fastgen.engine.reference import reference_classify
from fastgen.engine.result import ImageResult
from fastgen.engine.runner import PAUSE, Engine
from fastgen.engine.sampling import NoiseBank, SamplePlan
from fastgen.inputs.classes import DEFAULT_TEMPLATES, ClassSpec, build_classes, is_label_set, load_label_set
from fastgen.inputs.images import DEFAULT_MAX_PIXELS, ImageError, ImageInput, load_pixels
from fastgen.inputs.polarity import declared_polarity, polarity_rule
from fastgen.losses import check_loss
from fastgen.models import Adapter, load_adapter
from fastgen.models.identity import denoiser_digest
from fastgen.models.schedules import FLOW_DEFAULTS

log = logging.getLogger(__name__)

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}  # fmt: skip


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {sorted(DTYPES)} or a torch.dtype, got {dtype!r}")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch.device that exists here (None: cuda if available, else cpu), or a
    ValueError that says what is wrong with it."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device {str(device)!r} is not a device name torch knows ({error}); use cpu, cuda, cuda:N or mps"
        ) from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r} was asked for, but torch sees no CUDA GPU here; use cpu")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {str(device)!r} was asked for, but torch sees {count} GPU(s): cuda:0..cuda:{count - 1}"
            )
    return resolved


def model_templates(adapter: Adapter) -> list[str] | None:
    """The prompt templates the model declares in its `fastgen.json`; None (the generic
    `DEFAULT_TEMPLATES`) when it declares none."""
    templates = adapter.defaults.get("templates")
    if templates:
        return list(templates)
    if adapter.kind != "class-conditional":
        log.info(
            "model %s declares no prompt templates (fastgen.json); using %s. Pass templates=[...] "
            "(--template on the command line) to choose", adapter.name, list(DEFAULT_TEMPLATES),
        )  # fmt: skip
    return None


def with_schedule_defaults(config: ScoringConfig, schedule) -> ScoringConfig:
    """`config` with a flow model's unset flow settings filled in, so that results headers and
    benchmark JSON record what was used; refuses settings the model's family does not have."""
    schedule.check_config(config)
    if schedule.kind != "flow":
        return config
    unset = {name: value for name, value in FLOW_DEFAULTS.items() if getattr(config, name) is None}
    return config.replace(**unset) if unset else config


def run_facts(adapter: Adapter, units: ClassSpec, config: ScoringConfig) -> dict[str, Any]:
    """What a fitted policy checks it was fitted for: the scoring settings and what the model is
    (`fastgen.engine.policies.noise_profile.FITTED_FOR`)."""
    prompts = units.flat_prompts if units.labels is None else [f"label {label}" for label in units.labels]
    return {
        **{name: getattr(config, name) for name in SCORING_FIELDS},
        "model": adapter.name,
        "denoiser": denoiser_digest(adapter),
        "num_train_timesteps": int(adapter.num_train_timesteps),
        "dtype": str(adapter.dtype).removeprefix("torch."),
        "prompts": tuple(prompts),
    }


class DiffusionClassifier:
    """A diffusion model turned zero-shot classifier over a fixed set of classes.

    Prompt (or label) conditions are computed once here and reused for every image. Every
    scoring setting lives in `config` (a frozen `ScoringConfig`), the one source of truth:
    `policy`, `loss`, `seed` and `batch_size` read it, and assigning `config` (or `batch_size`)
    applies the new settings to everything derived from them before the next image is scored.
    """

    def __init__(
        self,
        adapter: Adapter,
        classes: ClassSpec,
        *,
        config: ScoringConfig | None = None,
        policy: str | Policy | None = None,
        policy_options: dict[str, Any] | None = None,
        encode_batch_size: int = 16,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        invert: bool | str | None = None,
        **settings: Any,
    ):
        """`policy` (a registry name or a `Policy`) with `policy_options`, and `settings` (the
        other fields of `ScoringConfig`: `loss`, `timesteps`, `weighting`, `seed`, `aggregate`,
        `batch_size`, ...) are another way to give `config`, or change it. The classes' own
        `aggregate` is used unless one is given; a given one must agree with it."""
        self.adapter = adapter
        self.classes = classes
        self.encode_batch_size = _check_positive("encode_batch_size", encode_batch_size)
        self.max_pixels = _check_positive("max_pixels", max_pixels)
        self.polarity = polarity_rule(invert, declared_polarity(adapter.defaults, adapter.name), adapter.name)
        # Set by `from_pretrained(calibration=...)`: adds `probabilities` to results lines.
        self.calibration: Calibration | None = None
        self.denoise: Denoiser = adapter.denoiser
        # OOM splitting and the fp32 recompute of overflowed rows (from the plain torch module,
        # whatever fast path `denoise` is later set to); kept across classify calls.
        self.guard = DenoiseGuard(lambda: fp32_copy(adapter.denoiser))
        base = config if config is not None else ScoringConfig(aggregate=classes.aggregate)
        chosen = base.updated(policy=policy, policy_options=policy_options, **settings)
        if chosen.aggregate != classes.aggregate:
            given = "aggregate=" if settings.get("aggregate") is not None else "config.aggregate"
            raise ValueError(
                f"{given} is {chosen.aggregate!r} but the classes' aggregate is {classes.aggregate!r}; "
                "give one of them, or make them agree"
            )
        self._config: ScoringConfig | None = None
        self.config = chosen

    @property
    def config(self) -> ScoringConfig:
        return self._config

    @config.setter
    def config(self, config: ScoringConfig) -> None:
        """Apply `config` whole: the policy bound to the classes, the units it scores (and their
        conditions, encoded again only when they change), the timesteps and the noise; the
        classes take its `aggregate`. Nothing changes when the config is refused."""
        if not isinstance(config, ScoringConfig):
            raise TypeError(f"config must be a ScoringConfig, got {type(config).__name__}")
        config = with_schedule_defaults(config, self.adapter.schedule)
        classes = dataclasses.replace(self.classes, aggregate=config.aggregate)
        bound_policy = config.policy.bind(classes.names)
        units = classes.with_units(bound_policy.extra_units())
        if config.policy.needs_run_facts:  # a policy fitted for one model and run (a noise profile)
            for_run = config.policy.for_run(run_facts(self.adapter, units, config))
            if for_run is not config.policy:
                config = config.replace(policy=for_run)
                bound_policy = for_run.bind(classes.names)
        if len(units) > len(classes) and classes.labels is not None:
            raise ValueError("a label-tree policy scores prompts of inner nodes: it needs a text-conditioned model")
        conditions = self._conditions_for(units)
        plan = SamplePlan.for_config(self.adapter.schedule, config)
        same_noise = self._config is not None and self._config.seed == config.seed
        noise = (
            self.noise if same_noise else NoiseBank(self.adapter.x0_shape, seed=config.seed, device=self.adapter.device)
        )
        self._config, self.classes, self.bound_policy, self.units = config, classes, bound_policy, units
        self.conditions, self.plan, self.noise = conditions, plan, noise

    def _conditions_for(self, units: ClassSpec) -> torch.Tensor:
        """The units' encoded prompts (or labels): the ones already encoded when they are the same."""
        if self._config is not None and (units.prompts, units.labels) == (self.units.prompts, self.units.labels):
            return self.conditions
        with torch.no_grad():
            conditions = self.adapter.encode_conditions(units)
        if torch.is_floating_point(conditions) and not torch.isfinite(conditions).all():
            raise FloatingPointError("the text encoder produced non-finite prompt embeddings")
        return conditions

    @property
    def policy(self) -> Policy:
        return self.config.policy

    @property
    def loss(self) -> str:
        return self.config.loss

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.config = self.config.replace(batch_size=value)

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        *,
        classes: ClassSpec | str | Path | Sequence[str] | dict[str, int] | None = None,
        templates: Sequence[str] | str | None = None,
        aggregate: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        policy: str | Policy | None = None,
        policy_options: dict[str, Any] | None = None,
        loss: str = "l2",
        timesteps: str | None = None,
        weighting: float = 0.0,
        seed: int = 0,
        batch_size: int = 64,
        timestep_weights: Sequence[float] | None = None,
        error_weights: Sequence[float] | None = None,
        flow_timesteps: str | None = None,
        flow_weighting: str | None = None,
        conditioning: dict[str, Any] | None = None,
        config: ScoringConfig | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        invert: bool | str | None = None,
        local_files_only: bool | None = None,
        allow_pickle: bool = False,
        backend: str | None = None,
        backend_options: dict[str, Any] | None = None,
        export_dir: str | Path | None = None,
        calibration: str | Path | Calibration | None = None,
    ) -> DiffusionClassifier:
        """Load `model` (hub id, folder or `builtin:NAME`) and fix the candidate classes.

        `classes`, `templates` and `policy` default to the model's own `fastgen.json` when it
        has one, each on its own: classes given without templates are put in the model's own
        templates (a model that declares none gets `a photo of a {}.`); `classes="builtin:NAME"`, a
        shipped label set such as `builtin:imagenet` or `builtin:cifar10`, brings its own templates
        (see docs/label-sets.md). `policy` is `paired`
        (default), `stages`, `exhaustive` or `tree`, with `policy_options` such as
        `{"n_samples": 100}` or `{"n_samples": (50, 500), "to_keep": (5, 1)}`. A
        `config` (`ScoringConfig`) replaces the policy and every scoring keyword at once.
        `timestep_weights` (where timesteps are drawn) and `error_weights` (how much each
        timestep's error counts) default to the model's fitted ones (its `fastgen.json`
        `scoring`); equal weights, such as `error_weights=[1]`, turn the model's off.
        `timesteps` (the order of the samples: `even`, `random` or `stratified`) defaults to the
        model's, else `even`. Flow-matching models (SD3, Flux) take `flow_timesteps` (`uniform`, `shifted`,
        `logit-normal`) and `flow_weighting` (`velocity`, `epsilon`, `sd3`) instead of
        `weighting`, and `conditioning` for their model settings (`max_sequence_length`; Flux also
        `resolution` (H, W) and `guidance`), over the model's own fastgen.json.

        `aggregate` (how several prompts of a class combine: `mean` or `min`) defaults to the
        `aggregate` of `classes` when they are a `ClassSpec` (a different one given here is
        refused), else to the model's `fastgen.json` `scoring`, else `mean`.

        `max_pixels` refuses image files with more pixels, from their header, as an `ImageError`.
        `invert` matches images to the ink polarity the model declares (`fastgen.inputs.polarity`):
        None (default) is `"auto"` for a model that declares one (an image whose background has
        the other polarity is inverted), else `"never"`; `"always"`/`"never"` (True/False) force it.

        `backend` runs the denoiser: None (the model as loaded), `torch` (SDPA, fused QKV,
        optional `compile` / `cuda_graphs` via `backend_options`), `onnxruntime` or `tensorrt`
        (exported once into `export_dir`, default `~/.cache/fastgen/exports`, then reused).

        `calibration` (a file written by `fastgen calibrate`, or a `Calibration`) makes
        `probabilities(result)` calibrated class probabilities.
        """
        # Cheap checks first: a bad argument should not cost a model load.
        if config is None:
            check_loss(loss)
            ScoringConfig(
                seed=seed, batch_size=batch_size, weighting=weighting, flow_timesteps=flow_timesteps,
                flow_weighting=flow_weighting,
            )  # fmt: skip
            if policy is not None:  # its options (a misspelt one is an error), before the load
                make_policy(policy, **(policy_options or {}))
        _check_positive("max_pixels", max_pixels)
        if is_label_set(classes):
            load_label_set(classes)  # an unknown name fails before the model loads
        aggregate = _aggregate_of(classes, aggregate)
        adapter = load_adapter(
            model,
            device=resolve_device(device),
            dtype=parse_dtype(dtype),
            local_files_only=local_files_only,
            allow_pickle=allow_pickle,
            conditioning=conditioning,
        )
        defaults = adapter.defaults
        if classes is None and "classes" in defaults:
            classes = defaults["classes"]
        if templates is None and not is_label_set(classes):  # a label set brings its own templates
            templates = model_templates(adapter)
        if config is None:
            config = ScoringConfig.build(
                policy=policy, policy_options=policy_options, model_defaults=defaults, loss=loss,
                timesteps=timesteps, weighting=weighting, seed=seed, aggregate=aggregate, batch_size=batch_size,
                timestep_weights=timestep_weights, error_weights=error_weights, flow_timesteps=flow_timesteps,
                flow_weighting=flow_weighting,
            )  # fmt: skip
        spec = build_classes(classes, templates=templates, aggregate=config.aggregate)
        classifier = cls(adapter, spec, config=config, max_pixels=max_pixels, invert=invert)
        if calibration is not None:
            classifier.use_calibration(
                calibration if isinstance(calibration, Calibration) else Calibration.load(calibration)
            )
        if backend is not None:
            from fastgen.export.loading import load_backend

            options = dict(backend_options or {})
            classifier.denoise = load_backend(
                backend, adapter, batch_size=config.batch_size, export_dir=export_dir, **options
            )
        elif backend_options or export_dir is not None:
            raise ValueError(
                "backend_options and export_dir need a backend: pass backend='torch', 'onnxruntime' or 'tensorrt'"
            )
        return classifier

    # -- what a result depends on ---------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """The model as a results header names it: a folder by its absolute path, a hub id or
        `builtin:NAME` as given."""
        name = self.adapter.name
        return os.path.abspath(name) if name and not name.startswith(BUILTIN_PREFIX) and Path(name).is_dir() else name

    def settings(self) -> dict[str, Any]:
        """Everything besides the model that a result depends on, JSON-ready: the classes, the
        scoring config (less its batch size, which changes no score), the dtype and the input
        rule. A results file's header records it so that a resume can check it continues the
        same job; device and backend are left out (results differ only in float rounding)."""
        labels = self.classes.labels
        scoring = {k: v for k, v in self.config.as_dict().items() if k != "batch_size"}
        settings = {
            "classes": list(self.classes.names),
            "prompts": [list(p) for p in self.classes.prompts],
            "labels": list(labels) if labels is not None else None,
            **scoring,
            "dtype": str(self.adapter.dtype).removeprefix("torch."),
            "input": self.polarity.settings(),
        }
        conditioning = self.adapter.conditioning_settings()
        if conditioning:  # flow transformers: sequence length, resolution, guidance
            settings["conditioning"] = conditioning
        return settings

    # -- classification -----------------------------------------------------------------------
    def prepare_pixels(self, image: ImageInput) -> torch.Tensor:
        """One image as the model takes it: [C, H, W] in [0, 1], in the model's ink polarity;
        raises ImageError."""
        pixels = load_pixels(
            image, size=self.adapter.image_hw, channels=self.adapter.image_channels, max_pixels=self.max_pixels
        )
        return self.polarity.apply(pixels)

    def _x0_stream(self, items: Iterable[tuple[Any, ImageInput]]) -> Iterator[tuple[Any, Any]]:
        """(key, x0) per image, encoding in chunks; an image that fails yields (key, error)."""
        chunk: list[tuple[Any, torch.Tensor]] = []

        def flush():
            if chunk:
                x0 = self.adapter.encode_images(torch.stack([p for _, p in chunk]))
                yield from ((key, x0[i]) for i, (key, _) in enumerate(chunk))
                chunk.clear()

        for item in items:
            if item is PAUSE:  # a fed source has nothing ready: encode what it gave, then pass it on
                yield from flush()
                yield PAUSE
                continue
            key, image = item
            try:
                chunk.append((key, self.prepare_pixels(image)))
            except ImageError as error:
                yield key, error
            if len(chunk) >= self.encode_batch_size:
                yield from flush()
        yield from flush()

    def _engine(self) -> Engine:
        return Engine(
            self.denoise, self.conditions, self.classes, self.adapter, config=self.config,
            policy=self.bound_policy, units=self.units, plan=self.plan, noise=self.noise, guard=self.guard,
        )  # fmt: skip

    def classify_stream(
        self, items: Iterable[tuple[Any, ImageInput]]
    ) -> Iterator[tuple[Any, ImageResult | ImageError]]:
        """Classify (key, image) pairs; yields (key, result or ImageError) as images finish."""
        yield from self._engine().run(self._x0_stream(items))

    def classify(
        self, images: ImageInput | Sequence[ImageInput], *, on_error: str = "raise"
    ) -> list[ImageResult | ImageError]:
        """Classify images (PIL images, paths, encoded file bytes, HWC arrays, CHW tensors, or a batched NCHW
        tensor); results come back in input order. `on_error="return"` puts an `ImageError` in
        place of an image that cannot be read instead of raising it."""
        if on_error not in ("raise", "return"):
            raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        if (
            isinstance(images, (str, Path, bytes, bytearray))  # one file, or one file's bytes
            or not isinstance(images, (Sequence, torch.Tensor))
            or isinstance(images, torch.Tensor)
            and images.dim() in (2, 3)  # one grey HW image or one CHW image, as for numpy arrays
        ):
            images = [images]
        results: list[Any] = [None] * len(images)
        for index, outcome in self.classify_stream(enumerate(images)):
            if isinstance(outcome, ImageError) and on_error == "raise":
                raise outcome
            results[index] = outcome
        for index, image in enumerate(images):
            if isinstance(image, (str, Path)) and isinstance(results[index], ImageResult):
                results[index].path = str(image)
        return results

    def as_module(
        self,
        *,
        temperature: float = 1.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> torch.nn.Module:
        """A `torch.nn.Module` mapping images [N, C, H, W] to class logits [N, K], usable where a
        torchvision/timm classifier is. Inputs are in [0, 1] unless `mean`/`std` say they were
        normalised as (x - mean) / std; logits are -errors / temperature, -inf for pruned
        classes. See `fastgen.api.module.ClassifierModule`."""
        from fastgen.api.module import ClassifierModule

        return ClassifierModule(self, temperature=temperature, mean=mean, std=std)

    def use_calibration(self, calibration: Calibration | None) -> None:
        """Attach `calibration` (None detaches); warns when it was fitted on other classes."""
        self.calibration = calibration
        mismatch = calibration.class_mismatch(self.classes.names) if calibration is not None else None
        if mismatch:
            log.warning(mismatch)

    def probabilities(self, result: ImageResult) -> dict[str, float]:
        """Calibrated `{class: probability}` of `result` (needs `calibration`)."""
        if self.calibration is None:
            raise ValueError("no calibration: pass calibration='calibration.json' (made by fastgen calibrate)")
        partial = {c: (None if math.isnan(e) else float(e)) for c, e in zip(result.classes, result.partial_errors)}
        return self.calibration.probabilities(result.scores, result.unet_evals, partial)

    def classify_reference(self, image: ImageInput) -> ImageResult:
        """The same classification through `fastgen.engine.reference` (slow; for checking)."""
        pixels = self.prepare_pixels(image)
        return reference_classify(self.adapter, pixels, self.classes, self.config)


def classify(
    images: ImageInput | Sequence[ImageInput],
    classes: ClassSpec | str | Path | Sequence[str] | dict[str, int] | None = None,
    *,
    model: str | Path = "builtin:digits",
    **options: Any,
) -> list[ImageResult]:
    """Load `model`, classify `images` among `classes`, return one result per image. Classes,
    their prompt templates and the policy default to the model's own (see `from_pretrained`)."""
    return DiffusionClassifier.from_pretrained(model, classes=classes, **options).classify(images)


def _aggregate_of(classes: Any, aggregate: str | None) -> str | None:
    """The explicit `aggregate`, or a `ClassSpec`'s own; a conflict between the two is refused."""
    if not isinstance(classes, ClassSpec):
        return aggregate
    if aggregate is not None and aggregate != classes.aggregate:
        raise ValueError(
            f"aggregate={aggregate!r} conflicts with the aggregate {classes.aggregate!r} of the given ClassSpec; "
            "leave aggregate unset to use the ClassSpec's, or build the ClassSpec with the one you want"
        )
    return classes.aggregate


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value
