"""Amazon review sequences in the S3Rec layout (Beauty, Sports_and_Outdoors, ...) → rankstack datasets.

Spec: geogr.md §2 (TIGER leave-last-out protocol) and hemix.md §7 (implicit-feedback CTR with 4 random
negatives, L_s = 50, L_r = 10).

Input: `X.txt`, one user a line, `user item item ...` in time order (integer ids from 1), and beside it
`X_item2attributes.json`, item id → list of attribute ids. S3Rec's preprocessing writes an item's brand first
(when it has one) and then its category path, most general first, so a **brand** is an attribute that only ever
appears first in a list, and every other attribute is a category (checked on Beauty: 435 such ids, none
appearing twice in one item; 4,609 items have no brand). An item whose only attribute is a category that never
follows another attribute would be misread as a brand (that needs a category no branded item has). We keep
`brand_id` (0 when none) and `category_id`, the item's last (most specific) category attribute (0 when none);
`tables/items.parquet` keeps the full attribute list too. Raw ids are kept: the vocabularies map them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rankstack.data.converters.behavior import (
    EventLog,
    SeenItems,
    ctr_requests,
    sample_uniform,
    sequence_columns,
)
from rankstack.data.converters.common import SPLITS, Converter, Option, require_file, require_positive
from rankstack.data.dataset import DatasetWriter
from rankstack.data.schema import ColumnSpec, Schema
from rankstack.errors import DataError, RankstackError

NAME = "amazon-s3rec"
ITEM_FIELDS = {"item_id": "item_id", "brand_id": "brand_id", "category_id": "category_id"}
_CHUNK_TARGETS = 20_000


def read_sequences(file: Path, max_users: int = 0) -> EventLog:
    """The S3Rec `X.txt` as an event log; `time` is the position in the line (the file gives order only)."""
    require_file(file, "an S3Rec sequence file (`X.txt`: one user a line, `user item item ...`)")
    users, items, positions = [], [], []
    seen_users: set[int] = set()
    with open(file, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            tokens = line.split()
            if not tokens:
                continue
            try:
                ids = np.array(tokens, dtype=np.int64)
            except ValueError:
                bad = next(t for t in tokens if not t.lstrip("-").isdigit())
                field = "the user id (first field)" if bad == tokens[0] else "the item list"
                raise DataError(f"{file}, line {line_no}: `{bad}` in {field} is not an integer id; each line must "
                                "be `user item item ...` with integer ids (the S3Rec format).") from None
            if len(ids) < 2:
                raise DataError(f"{file}, line {line_no}: user {ids[0]} has no items; each line must be "
                                "`user item item ...`. Remove the line.")
            if (ids < 0).any():
                raise DataError(f"{file}, line {line_no}: negative id {ids[ids < 0][0]}; ids must be >= 0.")
            if int(ids[0]) in seen_users:
                raise DataError(f"{file}, line {line_no}: user {ids[0]} appears on two lines; merge its items "
                                "into one line in time order.")
            seen_users.add(int(ids[0]))
            users.append(np.full(len(ids) - 1, ids[0]))
            items.append(ids[1:])
            positions.append(np.arange(len(ids) - 1))
            if max_users and len(seen_users) >= max_users:
                break
    if not users:
        raise DataError(f"{file} is empty; expected one line per user, `user item item ...`.")
    item = np.concatenate(items)
    return EventLog.from_events(np.concatenate(users), item, np.concatenate(positions), {"item_id": item})


def read_item_attributes(file: Path, n_items: int) -> dict[str, np.ndarray | list]:
    """Brand, most specific category and all attribute ids per item id (dense arrays of size n_items)."""
    require_file(file, "the S3Rec attribute file (`X_item2attributes.json`: item id → list of attribute ids); "
                       "pass its path with `--option attributes=PATH`")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        table = {int(k): [int(a) for a in v] for k, v in raw.items()}
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{file} is not a JSON object of item id → list of integer attribute ids ({err}); "
                        "regenerate it with S3Rec's data_process.py.") from None
    later = {a for attrs in table.values() for a in attrs[1:]}
    brand = np.zeros(n_items, dtype=np.int64)
    category = np.zeros(n_items, dtype=np.int64)
    attributes: list[list[int]] = [[] for _ in range(n_items)]
    for item, attrs in table.items():
        if not 0 <= item < n_items:
            continue
        attributes[item] = attrs
        has_brand = bool(attrs) and attrs[0] not in later
        brand[item] = attrs[0] if has_brand else 0
        categories = attrs[1:] if has_brand else attrs
        category[item] = categories[-1] if categories else 0
    return {"brand_id": brand, "category_id": category, "attribute_ids": attributes}


def _ctr_schema(name: str, seq_len: int, realtime_len: int) -> Schema:
    columns = [
        ColumnSpec("request_id", "categorical", "key", description="one per (user, positive position)"),
        ColumnSpec("user_id", "categorical", "key", description="raw user id (GAUC group)"),
        ColumnSpec("item_id", "categorical", "item", description="candidate item (positive or sampled negative)"),
        ColumnSpec("brand_id", "categorical", "item", description="candidate's brand attribute id, 0 = none"),
        ColumnSpec("category_id", "categorical", "item",
                   description="candidate's most specific category attribute id, 0 = none"),
        ColumnSpec("click", "numeric", "label", description="1 for the real next item, 0 for sampled negatives"),
        *sequence_columns(ITEM_FIELDS, seq_len, realtime_len),
    ]
    return Schema(name=name, columns=columns, group_key="user_id", request_key="request_id",
                  description="Amazon (S3Rec) implicit-feedback CTR: each positive plus random unseen negatives, "
                              "leave-last-out splits (hemix.md §7)")


def _sequential_schema(name: str, max_history: int) -> Schema:
    columns = [
        ColumnSpec("request_id", "categorical", "key", description="the target's position in the event log"),
        ColumnSpec("user_id", "categorical", "key"),
        ColumnSpec("history_item_id", "sequence", "history", embedding_group="item_id", max_len=max_history,
                   description="items before the target, oldest first"),
        ColumnSpec("target_item_id", "categorical", "item", embedding_group="item_id",
                   description="the next item"),
    ]
    return Schema(name=name, columns=columns, group_key="user_id", request_key="request_id",
                  description="Amazon (S3Rec) next-item samples, TIGER leave-last-out protocol (geogr.md §2)")


def _write_items(writer: DatasetWriter, catalogue: np.ndarray, attrs: dict) -> None:
    (writer.path / "tables").mkdir()
    pq.write_table(pa.table({
        "item_id": catalogue,
        "brand_id": attrs["brand_id"][catalogue],
        "category_id": attrs["category_id"][catalogue],
        "attribute_ids": pa.array([attrs["attribute_ids"][i] for i in catalogue], pa.list_(pa.int64())),
    }), writer.path / "tables" / "items.parquet")


def convert_amazon(input: Path, out: Path, task: str, attributes: str, negatives: int, seq_len: int,
                   realtime_len: int, max_history: int, train_samples: str, max_train_per_user: int,
                   max_users: int, seed: int) -> Path:
    """Convert an S3Rec Amazon sequence file (`X.txt`) into a CTR or a next-item dataset.

    Options:
        task: `ctr` (default) or `sequential`.
        attributes: the item → attributes JSON; default `<stem>_item2attributes.json` beside the input.
        seed: seed of the negative sampler (default 0); the output is a pure function of input and options.
        max_users: convert only the first N users of the file (0 = all), for quick runs.

    Splits (both tasks) are leave-last-out per user: the last item → test, the second-last → valid, the rest →
    train (a user with two items has no train sample, with one only a test sample).

    `task=ctr` (hemix.md §7): every item of every user is a positive (also the first, with an empty history),
    plus `negatives` (default 4) items drawn uniformly from the items in the file the user **never**
    interacted with, distinct within the request. All rows of a request share the user's items before the
    positive: at most `seq_len` (default 50), the newest `realtime_len` (default 10) as `realtime_*`, the older
    ones as `longterm_*`. `max_train_per_user` (default 0 = all) keeps only the user's newest N train
    positives. Columns: request_id, user_id (keys; group_key user_id, request_key request_id); item_id,
    brand_id, category_id (item); click (label); longterm_/realtime_ item_id, brand_id, category_id
    (embedding groups item_id, brand_id, category_id). Rows per request: 1 + negatives, positive first.

    `task=sequential` (TIGER protocol): one row per target with `history_item_id` (at most `max_history`,
    default 20, items before it) and `target_item_id`. test: target = last item; valid: the second-last; train:
    `train_samples=every_position` (default) gives one sample per train position t >= 1 (target = item t,
    history = the items before it), `per_user` one sample per user, its last train item with the train items
    before it (for models that score every position of a sequence themselves).

    Both write `tables/items.parquet` (item_id, brand_id, category_id, attribute_ids) for the items in the file.
    """
    if task not in ("ctr", "sequential"):
        raise RankstackError(f"converter `{NAME}`: option `task` must be ctr or sequential, got {task!r}.")
    for option, value in (("negatives", negatives), ("realtime_len", realtime_len), ("max_history", max_history)):
        require_positive(value, option, NAME)
    if seq_len <= realtime_len:
        raise RankstackError(f"converter `{NAME}`: `seq_len` ({seq_len}) must exceed `realtime_len` "
                             f"({realtime_len}): the long-term sequence holds the {seq_len} - {realtime_len} older "
                             "events.")
    if input.is_dir():
        raise DataError(f"{input} is a folder; pass the sequence file itself, e.g. {input / 'Beauty.txt'}.")
    log = read_sequences(input, max_users)
    attr_file = Path(attributes) if attributes else input.with_name(f"{input.stem}_item2attributes.json")
    attrs = read_item_attributes(attr_file, int(log.item.max()) + 1)
    catalogue = np.unique(log.item)
    split = np.where(log.rank_from_end == 0, "test", np.where(log.rank_from_end == 1, "valid", "train"))
    name = input.stem
    if task == "sequential":
        schema = _sequential_schema(name, max_history)
        train = (split == "train") & (log.position >= 1)
        if train_samples == "per_user":
            train &= log.rank_from_end == 2
        elif train_samples != "every_position":
            raise RankstackError(f"converter `{NAME}`: option `train_samples` must be every_position or per_user, "
                                 f"got {train_samples!r}.")
        chosen = {"train": np.flatnonzero(train), "valid": np.flatnonzero(split == "valid"),
                  "test": np.flatnonzero(split == "test")}
        with DatasetWriter(out, schema) as writer:
            for split_name in SPLITS:
                targets = chosen[split_name]
                writer.write(split_name, {
                    "request_id": targets, "user_id": log.user[targets],
                    "history_item_id": log.history("item_id", targets, max_history),
                    "target_item_id": log.item[targets],
                })
            _write_items(writer, catalogue, attrs)
        return out

    log.fields.update(brand_id=attrs["brand_id"][log.item], category_id=attrs["category_id"][log.item])
    keep = (split != "train") | (log.rank_from_end < 2 + max_train_per_user if max_train_per_user > 0 else True)
    rng = np.random.default_rng(seed)
    seen = SeenItems(log.user, log.item)
    lookups = {"item_id": np.arange(len(attrs["brand_id"])), "brand_id": attrs["brand_id"],
               "category_id": attrs["category_id"]}
    with DatasetWriter(out, _ctr_schema(name, seq_len, realtime_len)) as writer:
        for split_name in SPLITS:
            targets = np.flatnonzero(keep & (split == split_name))
            for begin in range(0, len(targets), _CHUNK_TARGETS):
                chunk = targets[begin:begin + _CHUNK_TARGETS]
                users = log.user[chunk]
                rows = ctr_requests(log, chunk, sample_uniform(rng, users, negatives, catalogue, seen), lookups,
                                    seq_len, realtime_len)
                writer.write(split_name, {"request_id": chunk[rows.request], "user_id": users[rows.request],
                                          **rows.columns})
        _write_items(writer, catalogue, attrs)
    return out


CONVERTER = Converter(
    name=NAME,
    description="Amazon Beauty/Sports in the S3Rec layout (X.txt + X_item2attributes.json) → implicit CTR with "
                "sampled negatives, or TIGER leave-last-out next-item samples",
    options=(
        Option("task", "ctr", "ctr (positives + sampled negatives) or sequential (next-item samples)",
               choices=("ctr", "sequential")),
        Option("attributes", "", "item → attributes JSON; default <stem>_item2attributes.json beside the input"),
        Option("negatives", 4, "ctr: random unseen negatives per positive"),
        Option("seq_len", 50, "ctr: history events kept in all (L_s)"),
        Option("realtime_len", 10, "ctr: newest history events in the real-time sequence (L_r)"),
        Option("max_history", 20, "sequential: history items kept per sample"),
        Option("train_samples", "every_position", "sequential: every_position or per_user train samples",
               choices=("every_position", "per_user")),
        Option("max_train_per_user", 0, "ctr: keep only each user's newest N train positives (0 = all)"),
        Option("max_users", 0, "convert only the first N users of the file (0 = all)"),
        Option("seed", 0, "seed of the negative sampler"),
    ),
    run=convert_amazon,
)
