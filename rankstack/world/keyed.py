"""Counter-based random numbers: every draw is a hash of (seed, stream name, integer keys).

Per-user behaviour is drawn with `KeyedRandom` instead of a sequential `np.random.Generator`, so a value depends
only on *what* it is (user 17's 3rd session's start hour), never on how many users were generated before it or
together with it. That is what makes a world identical whatever `chunk_users` is, while every draw stays
vectorised. Global objects (POIs, queries, field costs) are drawn once with `np.random.Generator`.

The hash is SplitMix64's finaliser applied key by key; uniforms take its top 53 bits.
"""

from __future__ import annotations

import hashlib

import numpy as np

from rankstack.data.vocab import mix64

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_TWO_PI = 2.0 * np.pi


class KeyedRandom:
    """Vectorised draws keyed by integers: `rng.uniform("session_hour", user_ids, session_idx)`.

    Keys broadcast like NumPy arrays; the same (stream, keys) always gives the same value for one seed.
    """

    def __init__(self, seed: int) -> None:
        self._root = int(mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0])

    def bits(self, stream: str, *keys: np.ndarray | int) -> np.ndarray:
        tag = int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=8).digest(), "little")
        arrays = np.broadcast_arrays(*[np.asarray(k, dtype=np.int64) for k in keys]) if keys else [np.zeros(())]
        h = np.full(arrays[0].shape, np.uint64(tag ^ self._root), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in arrays:
                h = mix64(h ^ mix64(k.astype(np.uint64) + _GOLDEN))
        return h

    def uniform(self, stream: str, *keys: np.ndarray | int) -> np.ndarray:
        """Uniform in the open interval (0, 1)."""
        return ((self.bits(stream, *keys) >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))

    def normal(self, stream: str, *keys: np.ndarray | int) -> np.ndarray:
        """Standard normal (Box–Muller over two keyed uniforms)."""
        u1 = self.uniform(stream, *keys, 0)
        u2 = self.uniform(stream, *keys, 1)
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)

    def integers(self, stream: str, high: np.ndarray | int, *keys: np.ndarray | int) -> np.ndarray:
        """Uniform integers in [0, high)."""
        high = np.asarray(high)
        return np.minimum((self.uniform(stream, *keys) * high).astype(np.int64), high - 1)

    def categorical(self, stream: str, probs: np.ndarray, *keys: np.ndarray | int) -> np.ndarray:
        """One index per row of `probs` ([rows, k], rows need not be normalised), by inverse CDF."""
        cdf = np.cumsum(probs, axis=1)
        u = self.uniform(stream, *keys) * cdf[:, -1]
        return np.minimum((cdf < u[:, None]).sum(axis=1), probs.shape[1] - 1)


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax that tolerates -inf entries (rows of all -inf become uniform)."""
    top = np.max(logits, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(logits - top)
    total = e.sum(axis=-1, keepdims=True)
    return np.where(total > 0, e / np.where(total > 0, total, 1.0), 1.0 / logits.shape[-1])
