"""Per-request random streams.

Each request owns its own streams, keyed by (seed, request id, purpose), so that its certificate does not
depend on what else ran before it or beside it in the same batches, and the selection and estimation
samples of a certificate come from independent streams. Input noise is counter-based noise of the
stream's key (engine/noise.py), so it does not depend on how samples are cut into batches.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import torch

from smoothgen.engine.noise import NoiseKey
from smoothgen.errors import InvalidParameterError


def _words(value: int) -> list[int]:
    """A value in [0, 2⁶⁴) as exactly two 32-bit words (low first). SeedSequence concatenates the 32-bit
    words of each entry, so variable-width entries would make (s + b·2³², r) and (s, b + r·2³²) the same
    entropy; a fixed width keeps every (seed, request id, purpose) distinct."""
    return [value & 0xFFFFFFFF, value >> 32]


class Purpose(enum.IntEnum):
    """Which step of an algorithm a sample feeds; each gets an independent stream."""

    SELECTION = 0     # Cohen: n0 votes that choose the class
    ESTIMATION = 1    # Cohen: n fresh votes that bound pA
    PREDICT = 2       # Cohen: PREDICT's n votes
    CENTER = 3        # center smoothing: the n samples that choose the center
    CENTER_CHECK = 4  # center smoothing: the n fresh samples of the acceptance check
    CENTER_RADIUS = 5  # center smoothing: the m fresh samples of the certificate radius


@dataclass(frozen=True)
class RandomStream:
    """The random streams of one request.

    Args:
        seed: the user's seed (None: fresh OS entropy, not reproducible).
        request_id: which request of a run (e.g. the input's index), so inputs get different noise.
    """

    seed: int | None
    request_id: int = 0

    def __post_init__(self):
        for name, value in (("seed", self.seed), ("request_id", self.request_id)):
            if value is None and name == "seed":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < 1 << 64:
                raise InvalidParameterError(f"{name} must be an integer in [0, 2^64), got {value!r}")

    def state(self, tag: int) -> int:
        """The 64-bit state of this request's stream `tag`: SeedSequence of the fixed-width words (seed: two,
        request id: two, tag: one). The engine's purposes are tags 0..5; a module with randomness of its own
        (a generator's sampler noise, DiffSmooth's local noise) takes a tag of its own, so its stream is keyed
        exactly like the engine's and no two (seed, request id, tag) share an entropy. Seed None: fresh OS
        entropy (not reproducible).

        Raises:
            InvalidParameterError: a tag outside [0, 2³²).
        """
        if isinstance(tag, bool) or not isinstance(tag, (int, np.integer)) or not 0 <= int(tag) < 1 << 32:
            raise InvalidParameterError(f"a stream tag must be an integer in [0, 2^32), got {tag!r}")
        entropy = None if self.seed is None else _words(int(self.seed)) + _words(int(self.request_id)) + [int(tag)]
        return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])

    def _state(self, purpose: Purpose) -> int:
        return self.state(int(purpose))

    def key(self, purpose: Purpose) -> NoiseKey:
        """The key of this request's input noise for `purpose` (see engine/noise.py): batch-invariant."""
        return NoiseKey(self._state(purpose))

    def generator(self, purpose: Purpose, device: torch.device | str = "cpu") -> torch.Generator:
        """A torch.Generator on `device` seeded from (seed, request_id, purpose), for randomness that is
        not input noise (e.g. a randomized base model's own draws)."""
        gen = torch.Generator(device=torch.device(device))
        # torch seeds take 64-bit values; mask to a non-negative int64.
        gen.manual_seed(self._state(purpose) & 0x7FFF_FFFF_FFFF_FFFF)
        return gen
