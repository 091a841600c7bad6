"""Packs rows of (image, prompt, sample) from many images into denoiser batches.

Each image's round is pushed as one block of rows; batches are cut from the front of the queue,
so a batch may hold the tail of one image's round and the head of the next image's.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class RowBlock:
    owner: Any  # the image job the rows belong to
    slot: int  # the image's row in the x0 bank
    prompt: torch.Tensor  # [R] int64
    sample: torch.Tensor  # [R] int64
    start: int = 0

    @property
    def remaining(self) -> int:
        return self.prompt.shape[0] - self.start


@dataclass
class Batch:
    """Row indices of one denoiser call, and which image owns which consecutive run of rows."""

    slot: torch.Tensor
    prompt: torch.Tensor
    sample: torch.Tensor
    segments: list[tuple[Any, int, int]]  # (owner, first row, end row)

    def __len__(self) -> int:
        return self.prompt.shape[0]


class RowQueue:
    def __init__(self):
        self._blocks: deque[RowBlock] = deque()
        self.queued = 0

    def push(self, owner: Any, slot: int, prompts: list[int], first: int, end: int) -> int:
        """Queue rows for every prompt in `prompts` and samples first..end-1; returns the count."""
        n = end - first
        prompt = torch.tensor(prompts, dtype=torch.int64).repeat_interleave(n)
        sample = torch.arange(first, end, dtype=torch.int64).repeat(len(prompts))
        self._blocks.append(RowBlock(owner, slot, prompt, sample))
        self.queued += prompt.shape[0]
        return prompt.shape[0]

    def take(self, batch_size: int) -> Batch:
        slots, prompts, samples, segments = [], [], [], []
        rows = 0
        while self._blocks and rows < batch_size:
            block = self._blocks[0]
            n = min(block.remaining, batch_size - rows)
            piece = slice(block.start, block.start + n)
            prompts.append(block.prompt[piece])
            samples.append(block.sample[piece])
            slots.append(torch.full((n,), block.slot, dtype=torch.int64))
            segments.append((block.owner, rows, rows + n))
            rows += n
            block.start += n
            if block.remaining == 0:
                self._blocks.popleft()
        self.queued -= rows
        return Batch(torch.cat(slots), torch.cat(prompts), torch.cat(samples), segments)
