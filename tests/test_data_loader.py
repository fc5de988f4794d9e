"""The streaming loader: padding, truncation, OOV mapping, shuffling, sharding and exact resume."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rankstack.data.dataset import Dataset
from rankstack.data.loader import BatchLoader, pad_sequences
from rankstack.data.schema import OOV_ID, PAD_ID
from tests._datasets import write_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return Dataset.open(write_toy_dataset(tmp_path_factory.mktemp("data") / "toy"))


def test_pad_sequences_left_pads_and_keeps_newest():
    arr = pa.array([[1, 2, 3, 4, 5], [], [7], [8, 9]])
    source, target = pad_sequences(arr.offsets.to_numpy(), np.arange(len(arr)), 3)
    out = np.zeros(4 * 3, dtype=np.int64)
    out[target] = arr.values.to_numpy()[source]
    assert out.reshape(4, 3).tolist() == [[3, 4, 5], [0, 0, 0], [0, 0, 7], [0, 8, 9]]


def test_pad_sequences_on_a_sliced_array():
    arr = pa.array([[1, 2], [3, 4, 5, 6], [7]]).slice(1, 2)
    source, target = pad_sequences(arr.offsets.to_numpy(), np.arange(len(arr)), 2)
    out = np.zeros(2 * 2, dtype=np.int64)
    out[target] = arr.values.to_numpy()[source]
    assert out.reshape(2, 2).tolist() == [[5, 6], [0, 7]]


def test_batches_have_the_contract_shapes_and_ids(toy):
    loader = BatchLoader(toy, "train", batch_size=100)
    batch = next(iter(loader))
    assert batch["realtime_poi_id"].shape == (100, 4)
    assert batch["attrs"].shape == (100, 3)
    assert batch["distance_km"].dtype == torch.float32
    assert batch["distance_km__bucket"].min() >= 2
    assert batch["poi_id"].dtype == torch.int64
    # Padding only on the left: once a real event appears, the rest of the row is real events.
    seq = batch["realtime_poi_id"]
    real = seq != PAD_ID
    assert torch.all(real[:, 1:] >= real[:, :-1])
    # Sequences and target share the `poi_id` table: the same raw id maps to the same embedding id.
    raw = pq.read_table(toy.split_file("train"), columns=["poi_id", "realtime_poi_id"]).slice(0, 100)
    first_raw = raw.column("poi_id")[0].as_py()
    same = toy.vocab.encode(toy.schema.column("poi_id"), pa.array([first_raw]))[0]
    assert batch["poi_id"][0].item() == same
    last_events = [r[-1] if r else None for r in raw.column("realtime_poi_id").to_pylist()]
    for row, raw_last in enumerate(last_events):
        if raw_last is not None:
            expected = toy.vocab.encode(toy.schema.column("poi_id"), pa.array([raw_last]))[0]
            assert seq[row, -1].item() == expected


def test_rare_and_unseen_values_map_to_oov(toy):
    column = toy.schema.column("category")  # min_count 2: every category value is frequent here
    ids = toy.vocab.encode(column, pa.array([0, 1, 2, 3, 4, 999]))
    assert ids[-1] == OOV_ID and (ids[:-1] >= 2).all()
    poi = toy.schema.column("poi_id")
    assert (toy.vocab.encode(poi, pa.array([-5, 10**9])) == OOV_ID).all()
    city = toy.vocab.encode(toy.schema.column("city"), pa.array(["paris", "atlantis"]))
    assert city[0] >= 2 and city[1] == OOV_ID


def test_epoch_covers_every_row_once_and_shuffles_by_seed(toy):
    def order(seed, epoch):
        loader = BatchLoader(toy, "train", batch_size=64, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([b["request_id"] * 10_000 + b["poi_id"] for b in loader]).tolist()

    plain = torch.cat([b["request_id"] * 10_000 + b["poi_id"] for b in BatchLoader(toy, "train", 64)]).tolist()
    a, b, c = order(0, 0), order(0, 0), order(0, 1)
    assert sorted(a) == sorted(plain) and len(a) == toy.num_rows("train")
    assert a == b and a != c and a != plain


def test_resume_continues_after_the_last_batch(toy):
    full = BatchLoader(toy, "train", batch_size=64, shuffle=True, seed=3)
    expected = [b["poi_id"] for b in full]
    first = BatchLoader(toy, "train", batch_size=64, shuffle=True, seed=3)
    it = iter(first)
    seen = [next(it)["poi_id"] for _ in range(5)]
    state = first.state_dict()
    resumed = BatchLoader(toy, "train", batch_size=64, shuffle=True, seed=3)
    resumed.load_state_dict(state)
    rest = [b["poi_id"] for b in resumed]
    assert len(seen) + len(rest) == len(expected)
    for got, want in zip(seen + rest, expected):
        assert torch.equal(got, want)


def test_shards_are_disjoint_and_equal_length(toy):
    shards = [BatchLoader(toy, "train", batch_size=50, rank=r, world_size=2, drop_last=True) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    ids = [set(torch.cat([b["request_id"] * 10_000 + b["poi_id"] for b in s]).tolist()) for s in shards]
    assert not ids[0] & ids[1]


def test_bucketize_keeps_a_point_mass_apart_from_larger_values():
    """A zero-inflated count's quantile boundaries collapse onto 0; zero and positive counts must still differ,
    and each boundary value belongs to the bucket below it."""
    import numpy as np

    from rankstack.data.vocab import NUM_RESERVED_IDS, Vocabulary

    vocab = Vocabulary({}, {"visits": np.array([0.0]), "gap": np.array([0.0, 2.0])}, {})
    assert vocab.bucketize("visits", np.array([0.0, 1.0, 7.0])).tolist() == [NUM_RESERVED_IDS, NUM_RESERVED_IDS + 1,
                                                                             NUM_RESERVED_IDS + 1]
    assert vocab.bucketize("gap", np.array([-1.0, 0.0, 1.0, 2.0, 3.0])).tolist() == [
        NUM_RESERVED_IDS, NUM_RESERVED_IDS, NUM_RESERVED_IDS + 1, NUM_RESERVED_IDS + 1, NUM_RESERVED_IDS + 2]
    assert vocab.bucket_count("gap") == NUM_RESERVED_IDS + 3
