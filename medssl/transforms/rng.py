"""Keyed randomness: a generator that is a pure function of a seed and integer keys.

Every draw that must not depend on where it runs (which loader worker, which rank, before or
after a resume) is seeded from what identifies it, e.g. ``(seed, step, batch index, rank)``
for a method's step or ``(seed, item)`` for a dataset item. The keys are hashed (BLAKE2b), so
distinct key tuples give unrelated streams: ``(seed, 1, 0)``, ``(seed, 0, 1)`` and
``(seed, 1)`` never share one, whatever the magnitudes of the keys.
"""

from __future__ import annotations

import hashlib

import torch

SEED_BITS = 63  # a non-negative int64: what torch.Generator.manual_seed and numpy both take
KEY_BYTES = 16  # each key as a signed 128-bit integer


def derive_seed(seed: int, *keys: int) -> int:
    """A ``SEED_BITS``-bit seed from ``seed`` and integer ``keys`` (order matters).

    Keys may be negative (a salt of -1) or large (``1 << 40``); anything ``int()`` accepts,
    a 0-d integer tensor included.
    """
    try:
        data = b"".join(int(k).to_bytes(KEY_BYTES, "little", signed=True) for k in (seed, *keys))
    except OverflowError as err:
        raise ValueError(f"seed and keys must fit in {8 * KEY_BYTES} bits, got {(seed, *keys)}") from err
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


def keyed_generator(
    seed: int, *keys: int, device: torch.device | str | None = None
) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (default CPU) seeded by :func:`derive_seed`."""
    generator = torch.Generator(device=device) if device is not None else torch.Generator()
    return generator.manual_seed(derive_seed(seed, *keys))
