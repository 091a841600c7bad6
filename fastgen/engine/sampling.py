"""The (timestep, noise) pairs every class of an image is scored on.

Sample `s` always means the same pair for a given seed and shape: its timestep comes from a
nested sequence (any prefix is itself a well spread grid, so a later stage reuses every earlier
score), and its noise from a generator seeded by (seed, block of s). Neither depends on how many
samples are drawn, on the batch, or on the other images, which is what makes results independent
of batch size and image order.
"""

from __future__ import annotations

import torch

from fastgen.choices import TIMESTEP_MODES

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


def timestep_sequence(
    n: int, num_train_timesteps: int, *, mode: str = "even", seed: int = 0
) -> torch.Tensor:
    """The first `n` timesteps of the nested sequence, as int64.

    `even`: a low-discrepancy grid over [0, T) (the reference's even spacing, made nestable).
    `random`: i.i.d. uniform draws over [0, T) from `seed` (Clark & Jaini), also nested because
    draw s is fixed once the seed is.
    """
    if mode == "even":
        values = [int(van_der_corput(s) * num_train_timesteps) for s in range(n)]
        return torch.tensor(values, dtype=torch.int64)
    if mode == "random":
        # Drawn in seeded blocks so that draw s never depends on how many are asked for.
        blocks = []
        for block in range((n + _TIMESTEP_BLOCK - 1) // _TIMESTEP_BLOCK):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + 7919 + block)
            blocks.append(torch.randint(0, num_train_timesteps, (_TIMESTEP_BLOCK,), generator=generator))
        return torch.cat(blocks)[:n] if blocks else torch.empty(0, dtype=torch.int64)
    raise ValueError(f"timesteps must be one of {TIMESTEP_MODES}, got {mode!r}")


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
    """Timesteps, weights and target coefficients for sample indices, for one model schedule."""

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        *,
        mode: str = "even",
        seed: int = 0,
        weighting: float = 0.0,
    ):
        self.alphas_cumprod = alphas_cumprod.double().cpu()
        self.num_train_timesteps = int(alphas_cumprod.shape[0])
        self.mode = mode
        self.seed = seed
        self.weighting = float(weighting)
        timestep_sequence(1, self.num_train_timesteps, mode=mode, seed=seed)  # validates mode
        self._timesteps = torch.empty(0, dtype=torch.int64)

    def timesteps(self, n: int) -> torch.Tensor:
        if n > self._timesteps.shape[0]:
            grown = max(n, 2 * self._timesteps.shape[0])
            self._timesteps = timestep_sequence(
                grown, self.num_train_timesteps, mode=self.mode, seed=self.seed
            )
        return self._timesteps[:n]

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """w(t) = exp(-k t / T); k = 0 is uniform weighting."""
        return torch.exp(-self.weighting * t.double() / self.num_train_timesteps).float()
