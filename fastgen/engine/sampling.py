"""The (timestep, noise) pairs every class of an image is scored on.

Sample `s` always means the same pair for a given seed and shape: its timestep comes from a
nested sequence (any prefix is itself a well spread grid, so a later stage reuses every earlier
score), and its noise from a generator seeded by (seed, block of s). Neither depends on how many
samples are drawn, on the batch, or on the other images, which is what makes results independent
of batch size and image order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

TIMESTEP_MODES = ("even", "random", "stratified")
STRATA = 16  # bands of [0, T) the stratified order visits in turn, unless the error weights have their own
_NOISE_BLOCK = 64
_TIMESTEP_BLOCK = 256


def van_der_corput(index: int) -> float:
    """Base-2 radical inverse: 0, 1/2, 1/4, 3/4, 1/8, ... Each prefix of 2^k is an even grid."""
    value, scale = 0.0, 0.5
    while index:
        if index & 1:
            value += scale
        index >>= 1
        scale *= 0.5
    return value


def bit_reversal_order(k: int) -> list[int]:
    """0..k-1 in the order a base-2 radical inverse visits them: each prefix is spread evenly."""
    return sorted(range(k), key=lambda i: (van_der_corput(i), i))


def stratum_order(k: int) -> list[int]:
    """The order in which the stratified sequence visits k equal bands of [0, T): from the
    highest band down, spread evenly (k - 1 - the bit-reversal order), so that the high
    timesteps, where classes differ most for their noise, come first, and every prefix of 2^j
    pairs covers [0, T) evenly: a prefix's mean stays an estimate of the whole grid's."""
    return [k - 1 - i for i in bit_reversal_order(k)]


def stratified_fractions(n: int, order: list[int]) -> list[float]:
    """Points in [0, 1) for samples 0..n-1: consecutive samples come in pairs that share a point
    (their noises differ: the pair's difference is noise alone, which lets a run check its noise
    from its second sample on); pair j falls in band order[j mod k], at a position within the band
    that moves through a nested even grid from one round of k pairs to the next (the centre first)."""
    k, out = len(order), []
    for s in range(n):
        round_, slot = divmod(s // 2, k)
        within = (van_der_corput(round_) + 0.5) % 1.0
        out.append((order[slot] + within) / k)
    return out


def warp_by_band_weights(u: torch.Tensor, weights: tuple[float, ...]) -> torch.Tensor:
    """Map points u in [0, 1) through the inverse CDF of the density that is constant on each of
    len(weights) equal bands of [0, 1) and proportional to its weight there. Equal weights give
    u back; a zero-weight band receives no point. Monotone, so a nested, even sequence of u
    stays nested and evenly spread under the density."""
    w = torch.tensor(weights, dtype=torch.float64)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(w / w.sum(), 0)])
    band = torch.searchsorted(cdf, u.double(), right=True).clamp(1, len(weights)) - 1
    inside = (u.double() - cdf[band]) / (cdf[band + 1] - cdf[band]).clamp_min(1e-300)
    return ((band + inside.clamp(0, 1 - 1e-12)) / len(weights)).clamp(0, 1 - 1e-12)


def band_error_weight(t: torch.Tensor, weights: tuple[float, ...] | None, num_train_timesteps: int) -> torch.Tensor:
    """The factor each timestep's error is multiplied by under `error_weights` (the weight of its
    band among len(weights) equal bands of [0, T)), in float64; 1 when there are none."""
    t = torch.as_tensor(t)
    if weights is None:
        return torch.ones(t.shape, dtype=torch.float64, device=t.device)
    band = (t.long() * len(weights) // num_train_timesteps).clamp(0, len(weights) - 1)
    return torch.tensor(weights, dtype=torch.float64, device=t.device)[band]


def timestep_sequence(
    n: int,
    num_train_timesteps: int,
    *,
    mode: str = "even",
    seed: int = 0,
    band_weights: tuple[float, ...] | None = None,
    density: Callable[[torch.Tensor], torch.Tensor] | None = None,
    stratum_weights: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """The first `n` timesteps of the nested sequence, as int64.

    `even`: a low-discrepancy grid over [0, T) (the reference's even spacing, made nestable).
    `random`: i.i.d. uniform draws over [0, T) from `seed` (Clark & Jaini), also nested because
    draw s is fixed once the seed is.
    `stratified`: samples in pairs that share a timestep, the pairs visiting equal bands of [0, T)
    in turn (`stratified_fractions`), every band once in the first 2 x bands samples, from the
    highest band down, spread evenly (`stratum_order`): a prefix reaches the decisive high bands
    in its first samples and every band soon after. The bands are those of `stratum_weights` (a
    model's error weights) when there are several, else `STRATA`.
    `band_weights` (fitted per model, see `fastgen.eval.timestep_fit`): the same points drawn
    with density proportional to the weight of each of K equal bands of [0, T) instead of
    uniformly, so the samples go where the model tells classes apart.
    `density` (a flow model's choice of noise levels, `fastgen.models.schedules`): the inverse
    CDF mapping the points u in [0, 1) to the fraction of [0, T) they stand for; band weights,
    fitted on the model itself, take its place when both are given.
    """
    if mode not in TIMESTEP_MODES:
        raise ValueError(f"timesteps must be one of {TIMESTEP_MODES}, got {mode!r}")
    if mode == "stratified":
        # A model's fitted error weights have their bands: the strata are those bands.
        k = len(stratum_weights) if stratum_weights is not None and len(stratum_weights) > 1 else STRATA
        points = stratified_fractions(n, stratum_order(k))
    else:
        points = [van_der_corput(s) for s in range(n)]
    if band_weights is None and density is None:
        if mode in ("even", "stratified"):
            values = [int(u * num_train_timesteps) for u in points]
            return torch.tensor(values, dtype=torch.int64)
        return _random_timesteps(n, num_train_timesteps, seed)
    if mode in ("even", "stratified"):
        u = torch.tensor(points, dtype=torch.float64)
    else:
        u = (_random_timesteps(n, 1 << 30, seed).double() + 0.5) / (1 << 30)
    warped = warp_by_band_weights(u, band_weights) if band_weights is not None else density(u).double()
    return (warped.clamp(0, 1 - 1e-12) * num_train_timesteps).long()


def _random_timesteps(n: int, high: int, seed: int) -> torch.Tensor:
    # Drawn in seeded blocks so that draw s never depends on how many are asked for.
    blocks = []
    for block in range((n + _TIMESTEP_BLOCK - 1) // _TIMESTEP_BLOCK):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 + block)
        blocks.append(torch.randint(0, high, (_TIMESTEP_BLOCK,), generator=generator))
    return torch.cat(blocks)[:n] if blocks else torch.empty(0, dtype=torch.int64)


class NoiseBank:
    """Noise for sample indices 0..n-1 of one shape, grown on demand and kept on `device`."""

    def __init__(self, shape: tuple[int, ...], *, seed: int, device: torch.device | str = "cpu"):
        self.shape = tuple(shape)
        self.seed = seed
        self.device = torch.device(device)
        self._noise = torch.empty((0, *self.shape), device=self.device)

    def __len__(self) -> int:
        return self._noise.shape[0]

    def _block(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.randn((_NOISE_BLOCK, *self.shape), generator=generator)

    def ensure(self, n: int) -> torch.Tensor:
        """Return noise for samples 0..n-1 (or more), drawing whole blocks as needed."""
        have = len(self)
        if n > have:
            first, last = have // _NOISE_BLOCK, (n - 1) // _NOISE_BLOCK
            blocks = [self._block(b) for b in range(first, last + 1)]
            self._noise = torch.cat([self._noise, torch.cat(blocks).to(self.device)])
        return self._noise

    def get(self, samples: torch.Tensor | list[int]) -> torch.Tensor:
        samples = torch.as_tensor(samples, dtype=torch.int64)
        bank = self.ensure(int(samples.max()) + 1 if samples.numel() else 0)
        return bank[samples.to(self.device)]


class SamplePlan:
    """Timesteps and weights for sample indices, for one model's schedule and one config."""

    def __init__(self, schedule: Any, config: Any):
        """`schedule`: the adapter's (`fastgen.models.schedules`); `config`: a `ScoringConfig`
        (its timesteps, seed, weighting, timestep_weights, error_weights and flow settings are
        read)."""
        schedule.check_config(config)
        self.schedule = schedule
        self.num_train_timesteps = int(schedule.num_train_timesteps)
        self.mode = config.timesteps
        self.seed = config.seed
        self.config = config
        self.band_weights = config.timestep_weights
        self.stratum_weights = config.error_weights
        self.density = schedule.density(config)
        timestep_sequence(1, self.num_train_timesteps, mode=self.mode, seed=self.seed)  # validates mode
        self._timesteps = torch.empty(0, dtype=torch.int64)

    @classmethod
    def for_config(cls, schedule: Any, config: Any) -> SamplePlan:
        """The plan a `ScoringConfig` asks for on a model's schedule."""
        return cls(schedule, config)

    def timesteps(self, n: int) -> torch.Tensor:
        if n > self._timesteps.shape[0]:
            grown = max(n, 2 * self._timesteps.shape[0])
            self._timesteps = timestep_sequence(
                grown, self.num_train_timesteps, mode=self.mode, seed=self.seed, band_weights=self.band_weights,
                density=self.density, stratum_weights=self.stratum_weights,
            )  # fmt: skip
        return self._timesteps[:n]

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """Each timestep's weight in fp32: the schedule's rule for the config, times the band
        weight of `error_weights` when the config has them."""
        band = band_error_weight(t, self.config.error_weights, self.num_train_timesteps)
        return (self.schedule.weight(t, self.config) * band.to(t.device)).float()
