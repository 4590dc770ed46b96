"""A training sampler whose batches are a pure function of the position in the run.

Lightning restarts a plain DataLoader at the start of its epoch after a resume, so a run
resumed at step k would see different crops than the run that never stopped. Here the
index drawn at per-rank position ``p`` depends only on (seed, rank, world size, p): the
sampler starts at the position the trainer has reached (``start()``, read when iteration
begins, i.e. after a checkpoint is restored), and the dataset seeds each item's crops by
its index. Epochs are an endless stream of per-epoch permutations; ``max_steps`` ends a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler

from medssl.transforms.rng import keyed_generator


class StepSampler(Sampler[int]):
    """Endless indices ``epoch * n + item``: item from epoch's permutation of ``range(n)``.

    ``start()`` gives the number of samples this rank has already consumed (the trainer's
    batches so far times the batch size). Ranks take interleaved positions of one global
    stream, so together they see each epoch's permutation once.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, start: Callable[[], int] = lambda: 0) -> None:
        if n < 1:
            raise ValueError(f"a sampler over {n} items")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.seed, self.rank, self.world_size, self.start = n, seed, rank, world_size, start

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=keyed_generator(self.seed, epoch))

    def __iter__(self) -> Iterator[int]:
        position = int(self.start())
        epoch, perm = -1, None
        while True:
            g = position * self.world_size + self.rank
            if g // self.n != epoch:
                epoch = g // self.n
                perm = self._permutation(epoch)
            yield epoch * self.n + int(perm[g % self.n])
            position += 1


def resumable_sampler(trainer, n: int, seed: int, batch_size: int) -> StepSampler:
    """A :class:`StepSampler` that starts where ``trainer`` (a Lightning Trainer or None) has got to.

    The start is read when iteration begins, i.e. after a checkpoint is restored:
    ``global_step * accumulate_grad_batches * batch_size`` samples per rank.
    """
    if trainer is None:
        return StepSampler(n, seed)

    def consumed() -> int:
        return trainer.global_step * trainer.accumulate_grad_batches * batch_size

    return StepSampler(n, seed, trainer.global_rank, trainer.world_size, consumed)
