"""The retrieval stage's serving API (geogr.md §4.4, §9): a finished GeoGR run answers "given this user's history
and context, which K POIs next?" for a batch of requests.

    retriever = GeoGRRetriever.from_run("runs/geogr_city_tiny")
    poi_ids, scores = retriever.retrieve([[278, 63, 280], []], [{"hour": 17, "weekday": 6, "lat": 31.19,
                                                                "lon": 121.45}, {"lat": 31.2, "lon": 121.4}], k=10)

POIs are external ids (the catalogue's `poi_id` / `item_id`) in and out. A request whose history holds no known
POI is a *cold* request: it is answered by geo-nearest popular (log(1 + n_p) - dist / h, with the bandwidth the
run tuned on valid) when the request has a location and the catalogue coordinates, else by popularity. Warm
requests are decoded together by the trie-constrained beam search (W = `num_beams`, at least K); their scores
are exp(Σ log p) of the SID, the fallback rows' scores a softmax over their K fallback scores (so both lie in
(0, 1], but they are not comparable across the two sources: `sources` says which answered each row).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from safetensors.numpy import load_file, save_file

from rankstack.config import from_dict
from rankstack.errors import DataError
from rankstack.retrieval.baselines import geo_popular_topk, popularity_topk
from rankstack.retrieval.data import PoiCatalog, haversine_km
from rankstack.retrieval.lm import AreaGrid, PromptConfig, PromptWriter, generate_candidates, load_lm
from rankstack.retrieval.semantic_ids import SemanticIds
from rankstack.retrieval.trie import sid_level_offsets

RETRIEVER_FILE = "retriever.json"
CATALOGUE_FILE = "catalogue.safetensors"


def save_serving_files(out: Path, catalogue: PoiCatalog, popularity: np.ndarray, meta: dict[str, Any]) -> None:
    """What `GeoGRRetriever.from_run` reads beside the model: the catalogue's ids, coordinates and popularity."""
    arrays = {"poi_ids": catalogue.ids.astype(np.int64), "popularity": popularity.astype(np.int64)}
    if catalogue.lat is not None and catalogue.lon is not None:
        arrays |= {"lat": catalogue.lat.astype(np.float64), "lon": catalogue.lon.astype(np.float64)}
    save_file(arrays, str(out / CATALOGUE_FILE))
    (out / RETRIEVER_FILE).write_text(json.dumps(meta, indent=2))


class GeoGRRetriever:
    """Top-K next POIs for batches of (history, context) requests from a finished run (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, sids: SemanticIds, prompt: PromptConfig, arrays: dict[str, Any],
                 num_beams: int, geo_bandwidth_km: float | None, batch_size: int = 64) -> None:
        self.model, self.tokenizer, self.sids = model, tokenizer, sids
        self.poi_ids = arrays["poi_ids"]
        self.popularity = arrays["popularity"]
        self.lat, self.lon = arrays.get("lat"), arrays.get("lon")
        grid = None if self.lat is None else AreaGrid(float(self.lat.mean()), float(self.lon.mean()), prompt.cell_km)
        self.writer = PromptWriter(sids, grid, prompt, self.lat, self.lon)
        self.trie = sids.trie(sid_level_offsets(tokenizer, sids.level_sizes))
        self.num_beams = num_beams
        self.geo_bandwidth_km = geo_bandwidth_km
        self.batch_size = batch_size
        self.sources: np.ndarray = np.zeros(0, dtype="<U10")

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "cpu", num_beams: int | None = None) -> GeoGRRetriever:
        """Load the served model, SIDs and catalogue of a `train_retrieval` run folder."""
        run = Path(run_dir)
        if not (run / RETRIEVER_FILE).is_file() or not (run / CATALOGUE_FILE).is_file():
            raise DataError(f"{run} is not a finished GeoGR run ({RETRIEVER_FILE} or {CATALOGUE_FILE} is missing); "
                            "run `rankstack train retrieval` into it first.")
        meta = json.loads((run / RETRIEVER_FILE).read_text())
        model, tokenizer = load_lm(run / meta["model"], device)
        return cls(model, tokenizer, SemanticIds.load(run / meta["sids"]),
                   from_dict(PromptConfig, meta["prompt"], where=str(run / RETRIEVER_FILE)),
                   load_file(str(run / CATALOGUE_FILE)), num_beams or int(meta["num_beams"]),
                   meta.get("geo_bandwidth_km"))

    def _index(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue indices of the known ids, and which of `ids` they are (a boolean mask)."""
        ids = np.asarray(list(ids), dtype=np.int64)
        if not len(ids):
            return ids, np.zeros(0, dtype=bool)
        pos = np.clip(np.searchsorted(self.poi_ids, ids), 0, len(self.poi_ids) - 1)
        known = self.poi_ids[pos] == ids
        return pos[known], known

    def retrieve(self, histories: Sequence[Sequence[int]], contexts: Sequence[Mapping[str, Any]] | None = None,
                 k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` POI ids [B, k] (-1 pad) and scores [B, k] for B requests.

        `histories[b]`: the user's earlier POI ids, oldest first (unknown ids are ignored). `contexts[b]`: any of
        `hour` (0-23), `weekday` (0 = Monday), `lat`, `lon` (degrees), and `history_hours` (the hour of each
        history visit, aligned with `histories[b]`; read by runs trained with `lm.prompt.history_times`).
        `self.sources[b]` afterwards says `"geogr"`, `"geo"` or `"popularity"`.
        """
        batch = len(histories)
        contexts = contexts if contexts is not None else [{} for _ in range(batch)]
        if len(contexts) != batch:
            raise ValueError(f"{batch} histories but {len(contexts)} contexts; pass one context per request.")
        items = np.full((batch, k), -1, dtype=np.int64)
        scores = np.zeros((batch, k), dtype=np.float32)
        sources = np.full(batch, "geogr", dtype="<U10")
        indexed = [self._index(h) for h in histories]
        history = [index for index, _ in indexed]
        hours: list[np.ndarray | None] = []
        for b, (_, known) in enumerate(indexed):
            given = contexts[b].get("history_hours")
            if given is not None and len(given) != len(known):
                raise ValueError(f"request {b}: {len(given)} history_hours for {len(known)} history POIs; give one "
                                 "hour per visit.")
            hours.append(None if given is None else np.asarray(given, dtype=np.int64)[known])
        lat = np.array([float(c.get("lat", np.nan)) for c in contexts])
        lon = np.array([float(c.get("lon", np.nan)) for c in contexts])
        warm = [b for b in range(batch) if len(history[b])]
        if warm:
            located = ~np.isnan(lat[warm]) & ~np.isnan(lon[warm])
            where: list[str | None] = [None] * len(warm)
            if self.lat is not None and located.any():
                rows = np.flatnonzero(located)
                for r, w in zip(rows, self.writer.where(lat[warm][rows], lon[warm][rows])):
                    where[r] = w
            prompts = [self.writer.prompt(history[b], contexts[b].get("hour"), contexts[b].get("weekday"), where[i],
                                          hours[b]) for i, b in enumerate(warm)]
            out = generate_candidates(self.model, self.tokenizer, prompts, self.trie, max(self.num_beams, k),
                                      self.batch_size, top_k=k, histories=[history[b] for b in warm])
            items[warm] = np.where(out.items >= 0, self.poi_ids[np.maximum(out.items, 0)], -1)
            scores[warm] = out.scores
        cold = np.array([b for b in range(batch) if not len(history[b])], dtype=np.int64)
        if len(cold):
            geo = ~np.isnan(lat[cold]) & ~np.isnan(lon[cold]) & (self.lat is not None)
            for rows, source in ((cold[geo], "geo"), (cold[~geo], "popularity")):
                if not len(rows):
                    continue
                if source == "geo":
                    index = geo_popular_topk(self.popularity, self._catalogue(), lat[rows], lon[rows],
                                             self.geo_bandwidth_km or 1.0, k)
                    raw = np.log1p(self.popularity[index]) - haversine_km(
                        lat[rows, None], lon[rows, None], self.lat[index], self.lon[index]) / (
                        self.geo_bandwidth_km or 1.0)
                else:
                    index = popularity_topk(self.popularity, len(rows), k)
                    raw = np.log1p(self.popularity[index]).astype(np.float64)
                width = index.shape[1]
                items[rows, :width] = self.poi_ids[index]
                weights = np.exp(raw - raw.max(axis=1, keepdims=True))
                scores[rows, :width] = weights / weights.sum(axis=1, keepdims=True)
                sources[rows] = source
        self.sources = sources
        return items, scores

    def _catalogue(self) -> PoiCatalog:
        return PoiCatalog(self.poi_ids, self.lat, self.lon, pa.table({"poi_id": self.poi_ids}))


__all__ = ["GeoGRRetriever", "save_serving_files"]
