"""Taobao UserBehavior (Tianchi) → CTR requests with behaviour sequences that carry action types.

Input: `UserBehavior.csv`, rows `user_id,item_id,category_id,behavior,timestamp` (no header in the release; a
header line is skipped), behavior one of pv (click), fav, cart, buy. The release lists each user's rows together
(not in time order); the converter relies on that to stream one block of users at a time, so memory holds a
block, the item catalogue and a per-minute histogram, never the whole file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankstack.data.converters.behavior import (
    EventLog,
    SeenItems,
    ctr_requests,
    sample_uniform,
    sequence_columns,
)
from rankstack.data.converters.common import (
    SPLITS,
    Converter,
    Option,
    check_fractions,
    iter_csv,
    require_file,
    require_positive,
)
from rankstack.data.dataset import DatasetWriter
from rankstack.data.schema import ColumnSpec, Schema
from rankstack.errors import DataError, RankstackError

NAME = "taobao-userbehavior"
COLUMNS = ["user_id", "item_id", "category_id", "behavior", "timestamp"]
#: action ids of the behaviours (0 is left free: it is never a real action)
ACTIONS = {"pv": 1, "fav": 2, "cart": 3, "buy": 4}
_CHUNK_TARGETS = 10_000


def _has_header(file: Path) -> bool:
    with open(file, encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    if not first.strip():
        raise DataError(f"{file} is empty; expected rows `{','.join(COLUMNS)}`.")
    return not first.split(",")[0].strip().isdigit()


def _batches(file: Path) -> Iterator[pa.RecordBatch]:
    """Typed record batches; a header line, if any, is skipped."""
    types = {"user_id": pa.int64(), "item_id": pa.int64(), "category_id": pa.int64(), "timestamp": pa.int64()}
    fix = f"Each row must be `{','.join(COLUMNS)}` with integer ids and a unix timestamp."
    yield from iter_csv(file, names=COLUMNS, types=types, fix=fix, skip_rows=int(_has_header(file)))


def _decode(batch: pa.RecordBatch, file: Path, row_offset: int) -> dict[str, np.ndarray]:
    columns = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in COLUMNS if name != "behavior"}
    for name, values in columns.items():
        if len(values) and values.min() < 0:
            row = row_offset + int(np.flatnonzero(values < 0)[0])
            raise DataError(f"{file}: column `{name}` has a negative value at data row {row}; ids and timestamps "
                            "must be >= 0. Fix or drop the row.")
    behavior = batch.column("behavior")
    index = pc.index_in(pc.utf8_trim_whitespace(behavior), value_set=pa.array(list(ACTIONS)))
    unknown = pc.is_null(index).to_numpy(zero_copy_only=False)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DataError(f"{file}: column `behavior` has `{behavior[row].as_py()}` at data row {row_offset + row}; "
                        f"expected one of {', '.join(ACTIONS)}. Fix or drop the row.")
    columns["action"] = np.array(list(ACTIONS.values()))[index.to_numpy(zero_copy_only=False)]
    return columns


def _scan(file: Path, max_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """First pass: item catalogue with categories, per-minute event counts, and the rows of the first users.

    Returns (items, their categories, minutes, counts per minute, rows to read).
    """
    items, cats, minutes, counts = [], [], [], []
    run_users: list[np.ndarray] = []
    last_user, rows, n_users = -1, 0, 0
    for batch in _batches(file):
        cols = _decode(batch, file, rows + 1)
        user = cols["user_id"]
        heads = np.flatnonzero(np.r_[user[:1] != last_user, user[1:] != user[:-1]])
        if max_users and n_users + len(heads) > max_users:
            stop = heads[max_users - n_users]
            cols = {k: v[:stop] for k, v in cols.items()}
            heads = heads[: max_users - n_users]
        run_users.append(user[heads])
        n_users += len(heads)
        last_user = int(user[-1]) if len(user) else last_user
        rows += len(cols["user_id"])
        pairs = np.unique(np.stack([cols["item_id"], cols["category_id"]]), axis=1)
        items.append(pairs[0])
        cats.append(pairs[1])
        minute, count = np.unique(cols["timestamp"] // 60, return_counts=True)
        minutes.append(minute)
        counts.append(count)
        if max_users and n_users >= max_users and len(cols["user_id"]) < batch.num_rows:
            break
    if not rows:
        raise DataError(f"{file} has no data rows; expected rows `{','.join(COLUMNS)}`.")
    runs = np.concatenate(run_users)
    if len(np.unique(runs)) != len(runs):
        raise DataError(f"{file}: column `user_id` is not grouped (a user's rows appear in more than one place); "
                        f"the converter streams one user at a time. Sort the file first: `sort -t, -k1,1n -s {file}`.")
    item, first = np.unique(np.concatenate(items), return_index=True)  # an item's first category wins
    category = np.concatenate(cats)[first]
    minute, inverse = np.unique(np.concatenate(minutes), return_inverse=True)
    count = np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)
    return item, category, minute, count, rows


def _user_blocks(file: Path, rows: int, block_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The first `rows` rows in blocks of whole users (at least `block_rows` rows, except the last)."""
    pending: list[dict[str, np.ndarray]] = []
    pending_rows, done = 0, 0
    for batch in _batches(file):
        take = min(batch.num_rows, rows - done)
        cols = {k: v[:take] for k, v in _decode(batch, file, done + 1).items()}
        done += take
        pending.append(cols)
        pending_rows += take
        if done >= rows:
            break
        if pending_rows >= block_rows:
            block = {k: np.concatenate([p[k] for p in pending]) for k in cols}
            user = block["user_id"]
            cut = int(np.flatnonzero(user != user[-1])[-1]) + 1 if (user != user[-1]).any() else 0
            if cut:
                yield {k: v[:cut] for k, v in block.items()}
                pending, pending_rows = [{k: v[cut:] for k, v in block.items()}], len(user) - cut
    if pending_rows:
        yield {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}


def convert_taobao(input: Path, out: Path, negatives: int, seq_len: int, realtime_len: int, valid_fraction: float,
                   test_fraction: float, tz_offset_h: int, max_users: int, block_rows: int, seed: int) -> Path:
    """Convert Taobao UserBehavior rows into CTR requests with item, category and action sequences.

    Options:
        negatives: items per positive drawn uniformly from the file's items that the user **never** interacted
            with, distinct within the request (default 4).
        seq_len, realtime_len: history events kept in all (default 100) and in the real-time part (default 20).
        valid_fraction, test_fraction: time split (default 0.1 each) at minute boundaries: a minute's events are
            train while fewer than 80 % of all events come before it, then valid while fewer than 90 %, then test.
        tz_offset_h: hours added to UTC for `hour`/`weekday` (default 8, China time).
        max_users: convert only the first N users of the file (0 = all); the full release (~1 M users, ~100 M
            rows, 5 rows per event) is large, so start with e.g. 50000.
        block_rows: rows read per block of whole users (default 1,000,000): bounds memory.
        seed: seed of the negative sampler.

    Every event is a positive (a pv as much as a buy); its request shares the user's events strictly earlier
    in time (same-second events are not history). Columns: request_id (the event's row in the file, 0-based),
    user_id (keys; group_key, request_key); timestamp (meta: unix seconds); hour, weekday (context); item_id,
    category_id (item; an item's category is the first one seen in the file); click (label); longterm_/realtime_ item_id, category_id,
    action (group action: pv 1, fav 2, cart 3, buy 4).
    """
    for option, value in (("negatives", negatives), ("realtime_len", realtime_len), ("block_rows", block_rows)):
        require_positive(value, option, NAME)
    check_fractions(valid_fraction, test_fraction, NAME)
    if seq_len <= realtime_len:
        raise RankstackError(f"converter `{NAME}`: `seq_len` ({seq_len}) must exceed `realtime_len` "
                             f"({realtime_len}).")
    require_file(input, f"Taobao UserBehavior.csv (rows `{','.join(COLUMNS)}`)")
    catalogue, catalogue_category, minute, count, rows = _scan(input, max_users)
    before = (np.cumsum(count) - count) / count.sum()  # share of events in earlier minutes
    cut_valid, cut_test = (minute[i] if i < len(minute) else minute[-1] + 1 for i in np.searchsorted(
        before, [1 - valid_fraction - test_fraction, 1 - test_fraction], side="left"))
    category_of = np.zeros(int(catalogue.max()) + 1, dtype=np.int64)
    category_of[catalogue] = catalogue_category
    lookups = {"item_id": np.arange(len(category_of)), "category_id": category_of}
    rng = np.random.default_rng(seed)
    row_start = 0
    with DatasetWriter(out, _schema(seq_len, realtime_len)) as writer:
        for block in _user_blocks(input, rows, block_rows):
            log = EventLog.from_events(block["user_id"], block["item_id"], block["timestamp"], {
                "item_id": block["item_id"], "category_id": category_of[block["item_id"]],
                "action": block["action"]})
            row_ids = row_start + log.source
            row_start += len(log)
            seen = SeenItems(log.user, log.item)
            event_minute = log.time // 60
            split = np.where(event_minute < cut_valid, "train", np.where(event_minute < cut_test, "valid", "test"))
            local = log.time + tz_offset_h * 3600
            hour, weekday = (local // 3600) % 24, (local // 86400 + 3) % 7  # 1970-01-01 was a Thursday
            for name in SPLITS:
                targets = np.flatnonzero(split == name)
                for begin in range(0, len(targets), _CHUNK_TARGETS):
                    t = targets[begin:begin + _CHUNK_TARGETS]
                    users = log.user[t]
                    chunk = ctr_requests(log, t, sample_uniform(rng, users, negatives, catalogue, seen), lookups,
                                         seq_len, realtime_len)
                    r = chunk.request
                    writer.write(name, {"request_id": row_ids[t][r], "user_id": users[r], "timestamp": log.time[t][r],
                                        "hour": hour[t][r], "weekday": weekday[t][r], **chunk.columns})
    return out


def _schema(seq_len: int, realtime_len: int) -> Schema:
    columns = [
        ColumnSpec("request_id", "categorical", "key", description="the positive event's data row in the file"),
        ColumnSpec("user_id", "categorical", "key"),
        ColumnSpec("timestamp", "numeric", "meta", dtype="int64", description="unix time of the positive event"),
        ColumnSpec("hour", "categorical", "context", description="local hour of the event"),
        ColumnSpec("weekday", "categorical", "context", description="weekday of the event, 0 = Monday"),
        ColumnSpec("item_id", "categorical", "item", description="candidate item"),
        ColumnSpec("category_id", "categorical", "item", description="candidate's category"),
        ColumnSpec("click", "numeric", "label", description="1 for the real event (any behaviour), 0 for negatives"),
        *sequence_columns({"item_id": "item_id", "category_id": "category_id", "action": "action"}, seq_len,
                          realtime_len),
    ]
    return Schema(name="taobao-userbehavior", columns=columns, group_key="user_id", request_key="request_id",
                  description="Taobao UserBehavior events as CTR requests with sampled negatives, split by time")


CONVERTER = Converter(
    name=NAME,
    description="Taobao UserBehavior.csv (user,item,category,behavior,timestamp) → CTR requests with item, "
                "category and action sequences, split by time",
    options=(
        Option("negatives", 4, "random unseen negatives per positive"),
        Option("seq_len", 100, "history events kept in all (L_s)"),
        Option("realtime_len", 20, "newest history events in the real-time sequence (L_r)"),
        Option("valid_fraction", 0.1, "share of events (by time) whose requests are valid"),
        Option("test_fraction", 0.1, "share of the latest events whose requests are test"),
        Option("tz_offset_h", 8, "hours added to UTC for hour and weekday"),
        Option("max_users", 0, "convert only the first N users of the file (0 = all)"),
        Option("block_rows", 1_000_000, "rows per streamed block of whole users"),
        Option("seed", 0, "seed of the negative sampler"),
    ),
    run=convert_taobao,
)
