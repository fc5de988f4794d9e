"""Samples cut from a behaviour log, shared by the Amazon, Foursquare and Taobao converters (hemix.md §7).

An `EventLog` is one row per event, sorted by (user, time), with the per-event fields a behaviour sequence
repeats (item id, brand, category, action, ...). From it every converter builds the same rows:

- *CTR requests* (`ctr_requests`): a positive event plus `k` sampled negatives that share the user's history,
  the events **strictly earlier** than the positive (an event at the same time is not history). The newest
  `realtime_len` of at most `seq_len` history events are the real-time sequence (`realtime_<field>`), the
  older ones the long-term sequence (`longterm_<field>`), both oldest → newest.
- *Next-item samples* (`EventLog.history`): the target event and its history as one sequence.

Negatives (`sample_uniform`, `sample_from_pools`) are never items the user interacted with at any time
(`SeenItems`), and never repeat within a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from rankstack.data.schema import ColumnSpec
from rankstack.errors import DataError


@dataclass
class EventLog:
    """Events sorted by (user, time); build one with `EventLog.from_events`.

    user, item, time: int64 arrays, one entry per event. `time` orders a user's events; equal times are
    simultaneous (neither is history for the other). Sources with order only use the position.
    fields: per-event values repeated in behaviour sequences, by field name (e.g. `item_id`, `action`).
    source: for each event, its position in the input of `from_events`.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    source: np.ndarray | None = None

    @classmethod
    def from_events(cls, user: np.ndarray, item: np.ndarray, time: np.ndarray,
                    fields: dict[str, np.ndarray] | None = None) -> EventLog:
        """Sort events by (user, time), keeping the input order among equal times (a stable sort)."""
        order = np.lexsort((time, user))
        return cls(np.asarray(user, np.int64)[order], np.asarray(item, np.int64)[order],
                   np.asarray(time, np.int64)[order],
                   {name: np.asarray(values)[order] for name, values in (fields or {}).items()}, order)

    def __post_init__(self) -> None:
        n = len(self.user)
        index = np.arange(n)
        new_user = np.ones(n, dtype=bool)
        new_user[1:] = self.user[1:] != self.user[:-1]
        new_time = new_user.copy()
        new_time[1:] |= self.time[1:] != self.time[:-1]
        #: index of the user's first event, for every event
        self.user_start = np.maximum.accumulate(np.where(new_user, index, 0)) if n else index
        #: end (exclusive) of the events strictly earlier than this one: the first event at the same time
        self.history_end = np.maximum.accumulate(np.where(new_time, index, 0)) if n else index
        starts = np.flatnonzero(new_user)
        counts = np.diff(np.append(starts, n))
        #: events of the same user after this one (0 for the user's last event)
        self.rank_from_end = np.repeat(starts + counts, counts) - index - 1
        #: the event's position within its user's stream (0 for the first)
        self.position = index - self.user_start

    def __len__(self) -> int:
        return len(self.user)

    def history_bounds(self, targets: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) of each target's history: at most `max_len` events strictly earlier than it."""
        end = self.history_end[targets]
        return np.maximum(self.user_start[targets], end - max_len), end

    def history(self, name: str, targets: np.ndarray, max_len: int) -> pa.ListArray:
        """Each target's history of field `name`, oldest → newest, at most `max_len` events."""
        start, end = self.history_bounds(targets, max_len)
        return gather_lists(self.fields[name], start, end)


def gather_lists(values: np.ndarray, start: np.ndarray, end: np.ndarray) -> pa.ListArray:
    """A list array whose row i is `values[start[i]:end[i]]`."""
    lengths = (end - start).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError(f"{offsets[-1]} sequence elements in one chunk overflow Arrow list offsets; use smaller chunks")
    index = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - start, lengths)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values[index]))


class SeenItems:
    """Every (user, item) pair of a log: the items a user may never get as a negative."""

    def __init__(self, user: np.ndarray, item: np.ndarray) -> None:
        self.base = int(item.max()) + 1 if len(item) else 1
        self.keys = np.unique(user.astype(np.int64) * self.base + item)

    def contains(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        keys = user.astype(np.int64) * self.base + item
        pos = np.clip(np.searchsorted(self.keys, keys), 0, max(len(self.keys) - 1, 0))
        if not len(self.keys):
            return np.zeros(keys.shape, dtype=bool)
        return (item >= 0) & (item < self.base) & (self.keys[pos] == keys)


def _repeats_in_row(candidates: np.ndarray) -> np.ndarray:
    """True where a candidate equals an earlier one of the same row."""
    repeat = np.zeros(candidates.shape, dtype=bool)
    for j in range(1, candidates.shape[1]):
        repeat[:, j] = (candidates[:, :j] == candidates[:, j:j + 1]).any(axis=1)
    return repeat


def sample_uniform(rng: np.random.Generator, users: np.ndarray, k: int, catalogue: np.ndarray,
                   seen: SeenItems, max_rounds: int = 200) -> np.ndarray:
    """`k` distinct negatives per user, uniform over `catalogue`, never an item the user interacted with."""
    candidates = catalogue[rng.integers(0, len(catalogue), size=(len(users), k))]
    for _ in range(max_rounds):
        bad = seen.contains(users[:, None], candidates) | _repeats_in_row(candidates)
        if not bad.any():
            return candidates
        candidates[bad] = catalogue[rng.integers(0, len(catalogue), size=int(bad.sum()))]
    user = int(users[np.flatnonzero(bad.any(axis=1))[0]])
    raise DataError(f"user {user} interacted with almost every one of the {len(catalogue)} items, so {k} unseen "
                    "negatives cannot be sampled; lower `--option negatives=`, or drop such users.")


def sample_from_pools(rng: np.random.Generator, users: np.ndarray, k: int, pools: np.ndarray,
                      seen: SeenItems) -> tuple[np.ndarray, np.ndarray]:
    """`k` distinct negatives per row, uniform over the row's `pools[i]` (-1 pads), unseen by the user.

    Returns (negatives [n, k], ok [n]); rows with fewer than `k` eligible pool entries have ok False (their
    negatives are garbage), so the caller can retry them with a wider pool.
    """
    keys = rng.random(pools.shape)
    eligible = (pools >= 0) & ~seen.contains(users[:, None], pools)
    keys[~eligible] = np.inf
    chosen = np.argpartition(keys, k - 1, axis=1)[:, :k] if pools.shape[1] > k else np.argsort(keys, axis=1)[:, :k]
    return np.take_along_axis(pools, chosen, axis=1), eligible.sum(axis=1) >= k


@dataclass
class CtrRequests:
    """The rows of a chunk of CTR requests: the positive first, then its negatives.

    columns: candidate fields (by the names given to `ctr_requests`), `click`, and the `longterm_<field>` /
        `realtime_<field>` sequences of every log field.
    request: for each row, the index of its request (its target) in the chunk.
    item: for each row, the candidate item.
    """

    columns: dict[str, np.ndarray | pa.Array]
    request: np.ndarray
    item: np.ndarray


def ctr_requests(log: EventLog, targets: np.ndarray, negatives: np.ndarray,
                 candidate_fields: dict[str, np.ndarray], seq_len: int, realtime_len: int) -> CtrRequests:
    """CTR rows for `targets` (event indices) with `negatives` [len(targets), k] (item ids).

    candidate_fields: output column → a lookup array indexed by item id (e.g. `brand_id` → brand of each item).
    Every row of a request shares its target's history: at most `seq_len` strictly earlier events, the newest
    `realtime_len` of them real-time, the rest long-term.
    """
    k = negatives.shape[1]
    items = np.concatenate([log.item[targets][:, None], negatives], axis=1).reshape(-1)
    request = np.repeat(np.arange(len(targets)), k + 1)
    columns: dict[str, np.ndarray | pa.Array] = {name: lookup[items] for name, lookup in candidate_fields.items()}
    columns["click"] = np.tile(np.r_[1.0, np.zeros(k)], len(targets)).astype(np.float32)
    start, end = log.history_bounds(targets, seq_len)
    cut = np.maximum(start, end - realtime_len)
    for name, values in log.fields.items():
        columns[f"longterm_{name}"] = gather_lists(values, start[request], cut[request])
        columns[f"realtime_{name}"] = gather_lists(values, cut[request], end[request])
    return CtrRequests(columns, request, items)


def sequence_columns(fields: dict[str, str], seq_len: int, realtime_len: int,
                     costs: dict[str, float] | None = None) -> list[ColumnSpec]:
    """ColumnSpecs of the long-term and real-time sequences of `fields` (field → embedding group).

    costs: optional fetch cost (ms per request) by role, `longterm_seq` and `realtime_seq`.
    """
    costs = costs or {}
    columns = []
    for role, prefix, length in (("longterm_seq", "longterm", seq_len - realtime_len),
                                 ("realtime_seq", "realtime", realtime_len)):
        for name, group in fields.items():
            columns.append(ColumnSpec(
                f"{prefix}_{name}", "sequence", role, embedding_group=group, max_len=length,
                cost_ms=costs.get(role, 0.0),
                description=f"{name} of the user's {'newest' if prefix == 'realtime' else 'older'} strictly "
                            f"earlier events (at most {length}), oldest first"))
    return columns
