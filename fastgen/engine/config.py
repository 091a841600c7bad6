"""`ScoringConfig`: every setting that decides an image's scores, in one frozen object.

The API, the engine, the reference, the command line and the benchmark all take this one object,
results files and benchmark JSON record `as_dict()`, and a model's `fastgen.json` supplies the
defaults (`from_model_defaults`). Two runs with equal configs on the same model and classes give
the same per-class errors, whatever the batch size or image order; `batch_size` is here only
because it is a setting users tune with the others, it never changes a score.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from fastgen.engine.policies import Policy, PolicyOptionError, describe_policy, make_policy
from fastgen.engine.sampling import TIMESTEP_MODES
from fastgen.inputs.classes import AGGREGATES
from fastgen.losses import check_loss
from fastgen.models.schedules import FLOW_TIMESTEPS, FLOW_WEIGHTINGS

# Seeds are combined with block indices into torch generator seeds; this keeps them in range.
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class ScoringConfig:
    """How images are scored. `docs/python-api.md` ("Scoring") says what each setting means."""

    policy: Policy = field(default_factory=make_policy)
    loss: str = "l2"
    timesteps: str = "even"
    weighting: float = 0.0  # k in w(t) = exp(-k t / T); 0 is uniform
    seed: int = 0
    aggregate: str = "mean"  # several prompts of one class: mean of their errors, or the best one
    # Fitted per model (fastgen.eval.timestep_fit): relative weights of K equal bands of [0, T);
    # timesteps are drawn with density proportional to them. None: uniform over [0, T).
    timestep_weights: tuple[float, ...] | None = None
    # Fitted per model (fastgen.eval.error_weight_fit): relative weights of K equal bands of
    # [0, T) that multiply each sample's error, so the score leans on the timesteps where the
    # classes differ most for their spread. None: every sample's error counts the same.
    error_weights: tuple[float, ...] | None = None
    # Flow-matching models only (SD3, Flux): the density of noise levels drawn and the weight of
    # each sample's velocity error; None is the model's default (docs/flow_matching.md).
    flow_timesteps: str | None = None
    flow_weighting: str | None = None
    batch_size: int = 64  # denoiser rows per batch

    def __post_init__(self):
        check_loss(self.loss)
        _check_choice("timesteps", self.timesteps, TIMESTEP_MODES)
        _check_choice("aggregate", self.aggregate, AGGREGATES)
        if self.flow_timesteps is not None:
            _check_choice("flow_timesteps", self.flow_timesteps, FLOW_TIMESTEPS)
        if self.flow_weighting is not None:
            _check_choice("flow_weighting", self.flow_weighting, FLOW_WEIGHTINGS)
        if not isinstance(self.policy, Policy):
            raise TypeError(f"policy must be a Policy (see fastgen.make_policy), got {type(self.policy).__name__}")
        _check_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        _check_int("batch_size", self.batch_size, minimum=1)
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "weighting", float(self.weighting))
        object.__setattr__(self, "timestep_weights", _check_band_weights("timestep_weights", self.timestep_weights))
        object.__setattr__(self, "error_weights", _check_band_weights("error_weights", self.error_weights))
        check_scoring = getattr(self.policy, "check_scoring", None)
        if check_scoring is not None:  # a policy fitted for some settings (a noise profile)
            check_scoring({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "policy"})

    @classmethod
    def build(
        cls,
        *,
        policy: str | Policy | None = None,
        policy_options: dict[str, Any] | None = None,
        model_defaults: dict[str, Any] | None = None,
        **settings: Any,
    ) -> ScoringConfig:
        """A config from a policy name and options, falling back to a model's `fastgen.json`
        policy when no policy is named and to its `scoring` settings (such as fitted
        `timestep_weights`) for settings left as None; `settings` are the other fields. An
        unknown setting or policy option, given here or in the model's file, is a ValueError
        that names the valid ones."""
        defaults = model_defaults or {}
        scoring = dict(defaults.get("scoring") or {})
        _check_setting_names(settings, "ScoringConfig")
        _check_setting_names(scoring, 'the model\'s fastgen.json "scoring"')
        chosen = _policy_with_model_default(policy, policy_options, defaults.get("policy"))
        given = {k: v for k, v in settings.items() if v is not None}
        from_model = {k: v for k, v in scoring.items() if settings.get(k) is None}
        return cls(policy=chosen, **{**from_model, **given})

    def updated(
        self, *, policy: str | Policy | None = None, policy_options: dict[str, Any] | None = None, **settings: Any
    ) -> ScoringConfig:
        """This config with the settings given (not None) changed, checked like `build`: a policy
        named here takes `policy_options` over its own defaults; options alone change this
        config's policy. (`replace` is the plain field copy, for setting a field to None.)"""
        _check_setting_names(settings, "ScoringConfig")
        if policy is None and policy_options:
            described = describe_policy(self.policy)
            policy, policy_options = described.pop("name"), {**described, **policy_options}
        chosen = self.policy if policy is None else make_policy(policy, **(policy_options or {}))
        return self.replace(policy=chosen, **{k: v for k, v in settings.items() if v is not None})

    def replace(self, **changes: Any) -> ScoringConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: what results files and benchmark reports record."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["policy"] = describe_policy(self.policy)
        return values

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoringConfig:
        values = dict(data)
        policy = dict(values.pop("policy", None) or {})
        name = policy.pop("name", None)
        return cls.build(policy=name, policy_options=policy, **values)


def setting_names() -> tuple[str, ...]:
    """The settings besides the policy (which has its own name and options)."""
    return tuple(f.name for f in dataclasses.fields(ScoringConfig) if f.name != "policy")


def _check_setting_names(settings: dict[str, Any], where: str) -> None:
    unknown = sorted(k for k in settings if k not in setting_names())
    if unknown:
        raise ValueError(
            f"{where} has no setting {', '.join(map(repr, unknown))}; the settings are {', '.join(setting_names())}, "
            "and policy with policy_options"
        )


def _policy_with_model_default(
    policy: str | Policy | None, options: dict[str, Any] | None, model_policy: dict[str, Any] | None
) -> Policy:
    """The policy named with its options; when none is named, the model's own (its `fastgen.json`
    "policy") with `options` over the file's. Options that do not apply are refused, naming
    where they came from."""
    options = dict(options or {})
    from_file = dict(model_policy or {})
    if policy is not None:
        return make_policy(policy, **options)
    name = from_file.pop("name", None)
    if options.get("bound") not in (None, "profile"):  # another boundary over the file's: its profile goes too
        from_file.pop("noise_profile", None)
        from_file.pop("coverage", None)
    default = "the model's default policy" if model_policy else "the default policy"
    try:
        return make_policy(name, **{**from_file, **options})
    except PolicyOptionError as error:
        from_caller = [k for k in error.unknown if k in options]
        if from_caller:
            whose, hint = f"{default} ({error.policy})", "name the policy whose options they are"
            raise PolicyOptionError(from_caller, error.policy, error.valid, whose=whose, hint=hint) from None
        whose = f"policy {error.policy!r} (in the model's fastgen.json)"
        raise PolicyOptionError(error.unknown, error.policy, error.valid, whose=whose) from None


def _check_band_weights(name: str, weights: Any) -> tuple[float, ...] | None:
    if weights is None:
        return None
    values = tuple(float(w) for w in weights)
    if not values or any(not math.isfinite(w) or w < 0 for w in values) or not any(values):
        raise ValueError(f"{name} must be finite, >= 0 and not all zero, got {weights!r}")
    return values


def _check_choice(name: str, value: Any, choices: tuple[str, ...] | dict) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def _check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> None:
    within = f"in {minimum}..{maximum}" if maximum is not None else f">= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer {within}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {within}, got {value!r}")
