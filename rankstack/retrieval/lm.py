"""GeoGR's language-model stage (geogr.md §4.1-§4.3): SID tokens in a causal LM, the four continued-pre-training
corpora, SFT on context + history -> next SID over TRL's `SFTTrainer`, and batched trie-constrained decoding.

Read top to bottom:

1. **Text.** `PromptWriter` turns a next-POI sample into the SFT prompt and the target into its completion:

       prompt:     [user]<a_5><b_1><c_9><d_0>…[hist]<a_5><b_1><c_9><d_0><a_5><b_3>…[ctx] Sun 20h near <a_…>[next]
       completion: <a_4><b_10><c_0><d_0>            (TRL appends eos; the loss covers the completion only)

   History SIDs are written back to back (no separator: every SID token is one added token, and a space between
   added tokens would cost a byte-level token each). `[user]` (optional, `PromptConfig.profile_pois`) lists the
   user's most visited POIs; `[hist]` the most recent ones, oldest first. `[ctx]` holds what the dataset has:
   weekday and hour, and where the user is (the SID of the nearest POI, or the 1 km cell `area g_x_y` on the city's
   local plane); Amazon data has neither.
2. **CPT corpora** (`cpt_records`, train split only), sampled 1:1:1:1, each as many records as there are POIs:
   T1 trajectories (chunks of a user's chronological train check-ins, with weekday and hour when known),
   T2 `SID = description`, T3 `description = SID`, T4 questions about a SID (category, area, price, the POI
   nearest to it, the POI most often visited right after it in train).
3. **Vocabulary.** `build_lm` trains a byte-level BPE on the corpora with SIDs stripped (the relevance stage's
   `train_tokenizer`) or loads a local pretrained tokenizer, builds the model (a config-built Llama/Qwen2 or a local
   pretrained path, via the relevance stage's `build_model`) and adds the SID tokens with `add_sid_tokens` (each
   level contiguous; embeddings resized with HF's mean resizing).
4. **Training** (`train_causal_lm`): one TRL `SFTTrainer` run, either language modelling over the whole text (CPT:
   a `text` dataset) or completion-only SFT (a prompt/completion dataset).
5. **Decoding** (`generate_candidates`): requests in batches, left-padded, through `decode.trie_beam_search` (KV
   cache, per-level allowed-token mask on tensors), leaves expanded to POIs by `decode.to_candidates`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: every model and tokenizer here is local

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from datasets import Dataset as HFDataset  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from rankstack.errors import ConfigError  # noqa: E402
from rankstack.pretrained import resolve_model_path  # noqa: E402
from rankstack.relevance.sft import ModelConfig, TrainingConfig, build_model, sft_arguments  # noqa: E402
from rankstack.relevance.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402
from rankstack.retrieval.data import NextPoiSamples, RetrievalData, haversine_km  # noqa: E402
from rankstack.retrieval.decode import prompt_positions, to_candidates, trie_beam_search  # noqa: E402
from rankstack.retrieval.semantic_ids import (  # noqa: E402
    SemanticIds,
    assign_sids,
    local_plane_km,
    poi_categories,
)
from rankstack.retrieval.trie import SidTrie, add_sid_tokens, sid_token  # noqa: E402
from rankstack.train.rng import seed_everything  # noqa: E402

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
TEMPLATES = ("trajectory", "sid_to_text", "text_to_sid", "question")
SID_PATTERN = re.compile(r"(?:<[a-j]_\d+>)+")


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class PromptConfig:
    """What the SFT prompt holds (geogr.md §4.3).

    Parameters:
        max_history (`int`, defaults to `50`): the most recent history SIDs written, oldest first.
        context (`bool`, defaults to `True`): write `[ctx]` (weekday, hour, where the user is) when the data has it.
        location (`str`, defaults to `"sid"`): how `[ctx]` says where the user is: `"sid"` writes the SID of the POI
            nearest to the user (`near <a_..>…`), which a small model maps onto the answer's SID space far more
            easily than coordinates; `"cell"` writes the 1 km area cell (`area g_3_-2`); `"both"` writes both.
        cell_km (`float`, defaults to `1.0`): side of the area cells, on the catalogue's local plane.
        profile_pois (`int`, defaults to `0`): write a `[user]` profile of the request's `profile_pois` most visited
            POIs in its whole history array (most visits first; ties: the more recently visited first), as SIDs;
            0 writes none. The paper's prompt holds a user profile (geogr.md §4.3); check-in logs carry no user
            attributes, so where the user goes most is the profile they can give. It lets a small LM copy a
            revisit by position instead of counting SIDs across a long history.
        history_times (`bool`, defaults to `False`): write the hour of each history visit after its SID
            (`<a_5><b_1><c_9>@18h`), where the data keeps event hours (the city's `hist_hour`, the Foursquare
            converters' `history_hour`). geogr.md §4.3 writes each history SID's time (`@Sun 18:02`); the datasets
            keep the hour only.
    """

    max_history: int = 50
    context: bool = True
    location: Literal["sid", "cell", "both"] = "sid"
    cell_km: float = 1.0
    profile_pois: int = 0
    history_times: bool = False

    def __post_init__(self) -> None:
        for key in ("max_history", "profile_pois"):
            if getattr(self, key) < 0:
                raise ValueError(f"lm.prompt.{key} is {getattr(self, key)}; it counts SIDs in the prompt, so set it "
                                 "to 0 (none) or more.")


@dataclass
class CPTConfig:
    """Continued pre-training (geogr.md §4.2).

    Parameters:
        enabled (`bool`, defaults to `True`): run CPT (`False`: the "-CPT" ablation; SFT starts from the base model).
        templates (`tuple[str, ...]`, defaults to all four): which of `trajectory`, `sid_to_text`, `text_to_sid`,
            `question` to write.
        records_per_template (`int` or `None`, defaults to `None`): records of each template per epoch; `None` is
            the number of POIs (1:1:1:1; trajectory chunks are drawn with replacement when there are fewer).
        trajectory_length (`int`, defaults to `32`): check-ins per trajectory record.
        training (`TrainingConfig`): the optimisation, as the relevance stage's (1 epoch, lr 1e-3 by default).
    """

    enabled: bool = True
    templates: tuple[str, ...] = TEMPLATES
    records_per_template: int | None = None
    trajectory_length: int = 32
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(batch_size=32, max_length=512))


@dataclass
class SFTStageConfig:
    """SFT on context + history -> next SID (geogr.md §4.3).

    Parameters:
        max_examples (`int` or `None`, defaults to `None`): use the last N train samples only (None: all).
        training (`TrainingConfig`): the optimisation (3 epochs in the spec; lr 1e-3 for a from-scratch model).
    """

    max_examples: int | None = None
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(num_epochs=3.0, batch_size=32,
                                                                            max_length=512))


@dataclass
class DecodeConfig:
    """Trie-constrained beam search over requests (geogr.md §4.4).

    Parameters:
        num_beams (`int`, defaults to `20`): W offline (the metrics' list width).
        batch_size (`int`, defaults to `64`): requests per forward pass (each holds W beams).
        max_eval_samples (`int` or `None`, defaults to `None`): evaluate the first N valid/test samples only.
        device (`str`, defaults to `"auto"`): `cuda` when available, else `cpu`.
    """

    num_beams: int = 20
    batch_size: int = 64
    max_eval_samples: int | None = None
    device: str = "auto"


@dataclass
class LMConfig:
    """The LM stage: tokenizer, model, prompt, CPT, SFT and decoding.

    Parameters:
        tokenizer_path (`str` or `None`): a local tokenizer folder; None trains a BPE on the CPT corpora (and the
            SFT prompts) with `vocab_size` / `min_frequency`. `model.path` set and this None: the model's own.
        model (`ModelConfig`): a local pretrained causal LM (`path`) or the shape of one built from a config.
    """

    tokenizer_path: str | None = None
    vocab_size: int = 512
    min_frequency: int = 2
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    cpt: CPTConfig = field(default_factory=CPTConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    em: EMConfig = field(default_factory=lambda: EMConfig())
    seed: int = 0


# --------------------------------------------------------------------------------------------------------------
# 1. Text: SIDs, context and POI descriptions


def sid_strings(codes: np.ndarray) -> list[str]:
    """Every POI's SID as text (`<a_3><b_9><c_1><d_0>`), catalogue order."""
    return ["".join(sid_token(level, int(c)) for level, c in enumerate(row)) for row in np.asarray(codes)]


def strip_sids(text: str) -> str:
    return SID_PATTERN.sub(" ", text)


@dataclass
class AreaGrid:
    """1 km (`cell_km`) cells on the local plane around the catalogue's mean coordinates: `g_<ix>_<iy>`."""

    lat0: float
    lon0: float
    cell_km: float

    def cells(self, lat: np.ndarray, lon: np.ndarray) -> list[str]:
        x, y = local_plane_km(np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64), self.lat0,
                              self.lon0)
        ix, iy = np.floor(x / self.cell_km).astype(np.int64), np.floor(y / self.cell_km).astype(np.int64)
        return [f"g_{a}_{b}" for a, b in zip(ix.tolist(), iy.tolist())]


def _when(hour: int | None, weekday: int | None) -> str:
    parts = []
    if weekday is not None:
        parts.append(WEEKDAYS[int(weekday) % 7])
    if hour is not None:
        parts.append(f"{int(hour):02d}h")
    return " ".join(parts)


def most_visited(history: Sequence[int], k: int) -> list[int]:
    """The `k` POIs that occur most often in `history` (oldest first): most visits first, ties broken by the
    more recent last visit."""
    count: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, p in enumerate(history):
        count[p] = count.get(p, 0) + 1
        last[p] = i
    return sorted(count, key=lambda p: (-count[p], -last[p]))[:k]


class PromptWriter:
    """SFT prompts and completions for one tokenizer's SIDs (see the module docstring for the format)."""

    def __init__(self, sids: SemanticIds, grid: AreaGrid | None, config: PromptConfig,
                 poi_lat: np.ndarray | None = None, poi_lon: np.ndarray | None = None) -> None:
        self.sid = sid_strings(sids.codes)
        self.grid = grid
        self.config = config
        self.poi_lat, self.poi_lon = poi_lat, poi_lon

    def where(self, lat: np.ndarray | None, lon: np.ndarray | None) -> list[str | None]:
        """The location words of requests at (`lat`, `lon`) (None entries where unknown)."""
        if lat is None or lon is None or self.grid is None:
            return [None] * (0 if lat is None else len(lat))
        words = [[] for _ in range(len(lat))]
        if self.config.location in ("sid", "both") and self.poi_lat is not None and self.poi_lon is not None:
            for lo in range(0, len(lat), 1024):
                d = haversine_km(np.asarray(lat[lo:lo + 1024])[:, None], np.asarray(lon[lo:lo + 1024])[:, None],
                                 self.poi_lat[None, :], self.poi_lon[None, :])
                for i, p in enumerate(d.argmin(axis=1).tolist()):
                    words[lo + i].append(f"near {self.sid[p]}")
        if self.config.location in ("cell", "both"):
            for w, cell in zip(words, self.grid.cells(lat, lon)):
                w.append(f"area {cell}")
        return [" ".join(w) if w else None for w in words]

    def prompt(self, history: Sequence[int], hour: int | None = None, weekday: int | None = None,
               where: str | None = None, history_hours: Sequence[int] | None = None) -> str:
        """The prompt of one request: `history` are catalogue indices, oldest first (-1 entries are skipped);
        `where` is an entry of `where()`; `history_hours` (aligned with `history`, -1 = unknown) are written with
        `history_times`."""
        kept = [i for i, p in enumerate(history) if p >= 0]
        recent, profile = self._shown(history)
        sids = [self.sid[p] for p in recent]
        if self.config.history_times and history_hours is not None and recent:
            hours = [int(history_hours[i]) for i in kept[-len(recent):]]
            sids = [sid + (f"@{h:02d}h" if h >= 0 else "") for sid, h in zip(sids, hours)]
        ctx = ""
        if self.config.context:
            words = " ".join(w for w in (_when(hour, weekday), where or "") if w)
            ctx = f"[ctx] {words}" if words else ""
        user = "[user]" + "".join(self.sid[p] for p in profile) if self.config.profile_pois else ""
        return user + "[hist]" + "".join(sids) + f"{ctx}[next]"

    def _shown(self, history: Sequence[int]) -> tuple[list[int], list[int]]:
        """Of the POIs `history` visited (-1 entries dropped): the last `max_history`, which the prompt writes after
        `[hist]`, and the `profile_pois` most visited, which it writes after `[user]`."""
        visited = [int(p) for p in history if p >= 0]
        recent = visited[-self.config.max_history:] if self.config.max_history else []
        profile = most_visited(visited, self.config.profile_pois) if self.config.profile_pois else []
        return recent, profile

    def shown_pois(self, history: Sequence[int]) -> set[int]:
        """The POIs whose SIDs a request's prompt writes as history or profile: the ones an LM can copy."""
        recent, profile = self._shown(history)
        return set(recent) | set(profile)

    def prompts(self, samples: NextPoiSamples) -> list[str]:
        """The prompts of every sample of a split."""
        n = len(samples)
        where = self.where(samples.lat, samples.lon) if samples.lat is not None else [None] * n
        hour = samples.hour.tolist() if samples.hour is not None else [None] * n
        weekday = samples.weekday.tolist() if samples.weekday is not None else [None] * n
        hours = samples.history_hour if samples.history_hour is not None else [None] * n
        return [self.prompt(samples.history[i], hour[i], weekday[i], where[i], hours[i]) for i in range(n)]

    def completion(self, poi: int) -> str:
        return self.sid[int(poi)]


def area_grid(data: RetrievalData, config: PromptConfig) -> AreaGrid | None:
    lat, lon = data.catalogue.lat, data.catalogue.lon
    if lat is None or lon is None:
        return None
    return AreaGrid(float(lat.mean()), float(lon.mean()), config.cell_km)


def poi_descriptions(data: RetrievalData, grid: AreaGrid | None) -> list[str]:
    """Short attribute text per POI for T2-T4: category, price, opening hours, district, area cell (whichever the
    catalogue has; id fields for catalogues without names)."""
    cat = data.catalogue
    n = len(cat)
    fields: list[list[str]] = [[] for _ in range(n)]

    def add(values: np.ndarray | list[Any] | None, fmt: Any) -> None:
        if values is None:
            return
        for parts, value in zip(fields, list(values)):
            text = fmt(value)
            if text:
                parts.append(text)

    if cat.column("category_l2") is not None:
        add(cat.column("category_l2"), str)
    else:
        add(cat.column("category_id"), lambda v: f"category c_{v}")
    add(cat.column("brand_id") if cat.column("name") is None else None, lambda v: f"brand b_{v}" if v else "")
    add(cat.column("price_level"), lambda v: f"price {v}/4")
    open_hour, close_hour = cat.column("open_hour"), cat.column("close_hour")
    if open_hour is not None and close_hour is not None:
        add([f"{a:02d}-{b % 24:02d}" for a, b in zip(open_hour.tolist(), close_hour.tolist())], lambda v: f"open {v}")
    add(cat.column("district"), lambda v: str(v))
    if grid is not None:
        add(grid.cells(cat.lat, cat.lon), lambda v: f"area {v}")
    return ["; ".join(parts) if parts else f"item {i}" for i, parts in enumerate(fields)]


def _answers(data: RetrievalData, grid: AreaGrid | None) -> dict[str, list[str]]:
    """Per-POI answers for T4 that do not involve another SID."""
    cat = data.catalogue
    answers: dict[str, list[str]] = {}
    categories = poi_categories(cat)
    if categories is not None:
        answers["category"] = [str(c) for c in categories.tolist()]
    if grid is not None:
        answers["area"] = grid.cells(cat.lat, cat.lon)
    price = cat.column("price_level")
    if price is not None:
        answers["price"] = [f"{p}/4" for p in price.tolist()]
    return answers


def most_frequent_next(data: RetrievalData) -> np.ndarray:
    """For each POI, the POI most often checked into right after it by the same user in train (-1: none)."""
    log = data.train_checkins
    n = len(data.catalogue)
    same_user = log.user[1:] == log.user[:-1]
    src, dst = log.poi[:-1][same_user], log.poi[1:][same_user]
    keep = src != dst
    src, dst = src[keep], dst[keep]
    best = np.full(n, -1, dtype=np.int64)
    if len(src):
        pair, count = np.unique(src * n + dst, return_counts=True)
        order = np.lexsort((-count, pair // n))  # by source, most frequent first
        first = np.ones(len(order), dtype=bool)
        first[1:] = (pair[order] // n)[1:] != (pair[order] // n)[:-1]
        best[pair[order][first] // n] = pair[order][first] % n
    return best


def nearest_poi(data: RetrievalData) -> np.ndarray | None:
    """Each POI's nearest other POI (catalogue index), or None without coordinates."""
    lat, lon = data.catalogue.lat, data.catalogue.lon
    if lat is None or lon is None:
        return None
    out = np.empty(len(lat), dtype=np.int64)
    for lo in range(0, len(lat), 1024):
        d = haversine_km(lat[lo:lo + 1024, None], lon[lo:lo + 1024, None], lat[None, :], lon[None, :])
        d[np.arange(len(d)), np.arange(lo, lo + len(d))] = np.inf
        out[lo:lo + 1024] = d.argmin(axis=1)
    return out


def trajectory_texts(data: RetrievalData, sid: Sequence[str], length: int) -> list[str]:
    """T1: each user's chronological train check-ins as SIDs (with weekday and hour when known), in chunks."""
    log = data.train_checkins
    texts = []
    bounds = np.flatnonzero(np.diff(log.user)) + 1
    for rows in np.split(np.arange(len(log)), bounds):
        for lo in range(0, len(rows), length):
            chunk = rows[lo:lo + length]
            if len(chunk) < 2:
                continue
            steps = []
            for r in chunk:
                when = _when(None if log.hour is None else log.hour[r], None if log.weekday is None else log.weekday[r])
                steps.append(f"{when} {sid[log.poi[r]]}" if when else sid[log.poi[r]])
            texts.append("traj: " + " ; ".join(steps))
    return texts


def cpt_records(data: RetrievalData, sids: SemanticIds, config: CPTConfig, grid: AreaGrid | None,
                seed: int) -> list[dict[str, str]]:
    """The CPT corpus (geogr.md §4.2) as `{"text", "template"}` records, shuffled; train check-ins only."""
    unknown = set(config.templates) - set(TEMPLATES)
    if unknown:
        raise ConfigError(f"unknown CPT templates {sorted(unknown)}; choose from {list(TEMPLATES)}.")
    rng = np.random.default_rng(seed)
    sid = sid_strings(sids.codes)
    n = len(sid)
    count = config.records_per_template or n
    desc = poi_descriptions(data, grid)
    records: list[dict[str, str]] = []

    def draw(m: int) -> np.ndarray:
        return rng.permutation(m)[:count] if m >= count else rng.integers(0, m, count)

    if "trajectory" in config.templates:
        trajectories = trajectory_texts(data, sid, config.trajectory_length)
        if trajectories:
            records += [{"text": trajectories[i], "template": "trajectory"} for i in draw(len(trajectories))]
    if "sid_to_text" in config.templates:
        records += [{"text": f"{sid[p]} = {desc[p]}", "template": "sid_to_text"} for p in draw(n)]
    if "text_to_sid" in config.templates:
        records += [{"text": text_to_sid_prompt(desc[p]) + sid[p], "template": "text_to_sid"} for p in draw(n)]
    if "question" in config.templates:
        questions: list[tuple[str, list[str]]] = [(f"Q: {key} of {{sid}}? A: ", values)
                                                  for key, values in _answers(data, grid).items()]
        near = nearest_poi(data)
        if near is not None:
            questions.append(("Q: nearest to {sid}? A: ", [sid[q] for q in near]))
        after = most_frequent_next(data)
        questions.append(("Q: often visited after {sid}? A: ", [sid[q] if q >= 0 else "none" for q in after]))
        kinds = rng.integers(0, len(questions), count)
        for p, kind in zip(draw(n), kinds):
            template, answers = questions[kind]
            records.append({"text": template.format(sid=sid[p]) + answers[p], "template": "question"})
    order = rng.permutation(len(records))
    return [records[i] for i in order]


def text_to_sid_prompt(description: str) -> str:
    """T3's prompt (also the EM M-step's): the description, then ` = ` before the SID."""
    return f"{description} = "


def sft_examples(writer: PromptWriter, samples: NextPoiSamples, max_examples: int | None = None
                 ) -> list[dict[str, str]]:
    """Prompt/completion pairs of a split's samples whose target is in the catalogue (the last `max_examples`)."""
    prompts = writer.prompts(samples)
    rows = [i for i in range(len(samples)) if samples.target[i] >= 0]
    if max_examples is not None:
        rows = rows[-max_examples:]
    return [{"prompt": prompts[i], "completion": writer.completion(samples.target[i])} for i in rows]


# --------------------------------------------------------------------------------------------------------------
# 2. Tokenizer and model


def build_lm(config: LMConfig, sids: SemanticIds, corpus: Sequence[str]) -> tuple[Any, Any, tuple[int, ...]]:
    """(model, tokenizer, SID level offsets): a local pretrained LM or a config-built one with a BPE trained on
    `corpus` (SIDs stripped), plus the SID tokens (geogr.md §4.1)."""
    if config.model.lora_r > 0:
        raise ConfigError("lm.model.lora_r: retrieval fine-tunes every parameter (the new SID embeddings must train); "
                          "LoRA is built for the relevance stage only. Set lm.model.lora_r: 0.")
    path = config.tokenizer_path or config.model.path
    if path is not None:
        tokenizer = load_tokenizer(resolve_model_path(path))
    else:
        tokenizer = train_tokenizer((strip_sids(t) for t in corpus), config.vocab_size, config.min_frequency)
    seed_everything(config.seed)
    model = build_model(config.model, tokenizer)
    offsets = add_sid_tokens(tokenizer, model, sids.level_sizes, seed=config.seed)
    return model, tokenizer, offsets


def save_lm(model: Any, tokenizer: Any, out: Path) -> None:
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def load_lm(path: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device)
    model.eval()
    return model, load_tokenizer(path)


# --------------------------------------------------------------------------------------------------------------
# 3. Training (CPT and SFT through TRL)


def train_causal_lm(model: Any, tokenizer: Any, records: list[dict[str, str]], training: TrainingConfig,
                    out: Path) -> dict[str, Any]:
    """One TRL `SFTTrainer` run: `text` records train on every token (CPT), `prompt`/`completion` records on the
    completion only (SFT). Returns the loss log; the model is trained in place."""
    if not records:
        raise ConfigError("no training records were built; check the dataset's train split.")
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    columns = ("text",) if "text" in records[0] else ("prompt", "completion")
    dataset = HFDataset.from_list([{c: r[c] for c in columns} for r in records])
    args = sft_arguments(training, out / "trainer", completion_only=columns != ("text",))
    model.train()
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    start = time.perf_counter()
    result = trainer.train()
    model.eval()
    log = [row for row in trainer.state.log_history if "loss" in row]
    return {"records": len(records), "steps": trainer.state.global_step, "train_loss": float(result.training_loss),
            "first_loss": log[0]["loss"] if log else None, "last_loss": log[-1]["loss"] if log else None,
            "wall_time_s": time.perf_counter() - start, "log": trainer.state.log_history}


# --------------------------------------------------------------------------------------------------------------
# 4. Decoding


@dataclass
class Candidates:
    """Decoded top-K per request: POI indices [N, K] (-1 pad), scores exp(Σ log p) [N, K], the raw SID codes
    [N, W, L] of every beam (-1 for empty beams) and timing."""

    items: np.ndarray
    scores: np.ndarray
    codes: np.ndarray
    seconds: float
    batch_seconds: list[float]
    batch_sizes: list[int]


@torch.no_grad()
def generate_candidates(model: Any, tokenizer: Any, prompts: Sequence[str], trie: SidTrie, num_beams: int,
                        batch_size: int = 64, top_k: int | None = None,
                        histories: Sequence[Sequence[int]] | None = None) -> Candidates:
    """Trie-constrained beam search over `prompts` in batches (left padding), expanded to POIs; `histories` (each
    request's earlier POIs, catalogue indices) order the POIs of a shared `set`-mode code by the user's visits."""
    device = next(model.parameters()).device
    trie = trie.to(device)
    k = top_k or num_beams
    items, scores, codes, batch_seconds, sizes = [], [], [], [], []
    start = time.perf_counter()
    for lo in range(0, len(prompts), batch_size):
        batch = list(prompts[lo:lo + batch_size])
        t0 = time.perf_counter()
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = trie_beam_search(model, enc["input_ids"], enc["attention_mask"], trie, num_beams)
        batch_items, batch_scores = to_candidates(out, trie, k,
                                                  None if histories is None else histories[lo:lo + batch_size])
        batch_seconds.append(time.perf_counter() - t0)
        sizes.append(len(batch))
        items.append(batch_items.numpy())
        scores.append(batch_scores.numpy())
        codes.append(out.codes.cpu().numpy())
    width = trie.length
    return Candidates(
        np.concatenate(items) if items else np.zeros((0, k), dtype=np.int64),
        np.concatenate(scores) if scores else np.zeros((0, k), dtype=np.float32),
        np.concatenate(codes) if codes else np.zeros((0, num_beams, width), dtype=np.int64),
        time.perf_counter() - start, batch_seconds, sizes)


def sid_validity(codes: np.ndarray, sids: SemanticIds) -> dict[str, float]:
    """Share of generated (non-empty) beams whose SID is some POI's SID, checked against the SID table itself
    (not the trie that produced them), and how many beams came back empty."""
    flat = codes.reshape(-1, codes.shape[-1])
    generated = flat[(flat >= 0).all(axis=1)]
    valid = {tuple(row) for row in sids.codes.tolist()}
    ok = sum(tuple(row) in valid for row in generated.tolist())
    return {"sid_validity": ok / len(generated) if len(generated) else 1.0, "generated_sids": float(len(generated)),
            "empty_beams": float(len(flat) - len(generated))}


def latency_report(candidates: Candidates) -> dict[str, float]:
    """Decode time per request: total, and p50/p99 over batches of (batch time / requests in the batch)."""
    per_request = np.array(candidates.batch_seconds) / np.maximum(np.array(candidates.batch_sizes), 1)
    return {"decode_seconds": candidates.seconds,
            "ms_per_request": 1e3 * candidates.seconds / max(len(candidates.items), 1),
            "ms_per_request_p50": float(1e3 * np.percentile(per_request, 50)) if len(per_request) else 0.0,
            "ms_per_request_p99": float(1e3 * np.percentile(per_request, 99)) if len(per_request) else 0.0}


# --------------------------------------------------------------------------------------------------------------
# 5. EM-style SID refinement with the LM (geogr.md §3.6)


@dataclass
class EMConfig:
    """The iterative refinement of the SIDs with the LM (geogr.md §3.6).

    Parameters:
        rounds (`int`, defaults to `0`): E/M rounds after the first CPT + SFT (0: no refinement, the "-EM"
            ablation; the spec's default is up to 3).
        capacity (`int`, defaults to `4`): POIs one 3-level code may hold (C); capped at the tokenizer's dedup
            size D so the `<d_…>` vocabulary always suffices (C = 1 when the codes start unique).
        num_beams (`int`, defaults to `20`): candidates per POI from the full code grid.
        stop_changed (`float`, defaults to `0.02`): stop when fewer than this share of POIs change code.
        keep_current (`bool`, defaults to `False`): the POI's current code joins its candidates, scored by the LM
            from the same T3 prompt, so that a POI moves only to a code the LM scores above its own (§3.6's
            "re-assign from the LM's confident predictions"); False takes the beam's top `num_beams` codes alone.
        select (`"best"` or `"last"`, defaults to `"best"`): which SIDs the final CPT + SFT trains on: those whose
            E-step model scored the best valid Acc@5 (§3.6), or the last M step's. The E-step score favours the
            round-0 SIDs, which the SFT model learned for a full run, so `last` is the fair test of refined SIDs.
        training (`TrainingConfig`): the E step's optimisation (one epoch).
    """

    rounds: int = 0
    capacity: int = 4
    num_beams: int = 20
    stop_changed: float = 0.02
    keep_current: bool = False
    select: Literal["best", "last"] = "best"
    max_sft_examples: int | None = None
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(batch_size=32, max_length=512))


def e_step_records(data: RetrievalData, sids: SemanticIds, writer: PromptWriter, grid: AreaGrid | None,
                   max_sft_examples: int | None, seed: int) -> list[dict[str, str]]:
    """T2 + T3 records and the train SFT records under the current SIDs, as full-text records (one epoch)."""
    cpt = cpt_records(data, sids, CPTConfig(templates=("sid_to_text", "text_to_sid")), grid, seed)
    sft = [{"text": e["prompt"] + e["completion"]} for e in sft_examples(writer, data.splits["train"],
                                                                          max_sft_examples)]
    return [{"text": r["text"]} for r in cpt] + sft


def grid_candidates(model: Any, tokenizer: Any, descriptions: Sequence[str], level_sizes: Sequence[int],
                    level_offsets: Sequence[int], num_beams: int, batch_size: int = 64
                    ) -> tuple[np.ndarray, np.ndarray]:
    """M step's proposals: for each POI, the top `num_beams` 3-level codes over the FULL grid from the T3 prompt,
    as codes [N, W, levels] and scores [N, W] (Σ log p)."""
    device = next(model.parameters()).device
    trie = SidTrie.full_grid(level_sizes, level_offsets).to(device)
    codes, scores = [], []
    prompts = [text_to_sid_prompt(d) for d in descriptions]
    with torch.no_grad():
        for lo in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[lo:lo + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            out = trie_beam_search(model, enc["input_ids"], enc["attention_mask"], trie, num_beams)
            codes.append(out.codes.cpu().numpy())
            scores.append(out.scores.cpu().numpy())
    return np.concatenate(codes), np.concatenate(scores)


@torch.no_grad()
def code_scores(model: Any, tokenizer: Any, descriptions: Sequence[str], codes: np.ndarray,
                level_offsets: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """Σ log p of each POI's 3-level code [N, levels] after its T3 prompt, scored as `trie_beam_search` scores a
    beam (log-softmax over the whole vocabulary at each code position): [N]."""
    device = next(model.parameters()).device
    levels = codes.shape[1]
    tokens = torch.as_tensor(codes + np.asarray(level_offsets)[None, :levels], device=device)
    prompts = [text_to_sid_prompt(d) for d in descriptions]
    out = []
    for lo in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[lo:lo + batch_size], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        code = tokens[lo:lo + batch_size]
        ids = torch.cat([enc["input_ids"], code], dim=1)
        mask = torch.cat([enc["attention_mask"], enc["attention_mask"].new_ones(code.shape)], dim=1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=prompt_positions(mask)).logits
        logp = F.log_softmax(logits[:, -levels - 1:-1].float(), dim=-1)
        out.append(logp.gather(2, code[:, :, None]).squeeze(2).sum(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def with_current_codes(candidate_codes: np.ndarray, candidate_scores: np.ndarray, current: np.ndarray,
                       current_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each POI's candidates [N, W+1, levels] and scores [N, W+1] with its current code added (once: a beam
    that already holds it is emptied) and every list re-sorted best first."""
    same = (candidate_codes == current[:, None, :]).all(axis=2)
    codes = np.where(same[:, :, None], -1, candidate_codes)
    scores = np.where(same, -np.inf, candidate_scores)
    codes = np.concatenate([codes, current[:, None, :]], axis=1)
    scores = np.concatenate([scores, current_scores[:, None]], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(codes, order[:, :, None], axis=1), np.take_along_axis(scores, order, axis=1)


def deferred_acceptance(candidate_codes: np.ndarray, candidate_scores: np.ndarray, capacity: int,
                        level_sizes: Sequence[int], embeddings: np.ndarray, centroids: np.ndarray
                        ) -> np.ndarray:
    """Assign each POI a 3-level code [N, levels] (geogr.md §3.6 M step).

    POIs propose their candidates best first, in the order of their best score; a code keeps its `capacity` best
    proposers (by score) and rejects the rest, who propose their next candidate. POIs that exhaust their list take
    the free code (fewer than `capacity` holders) whose residual-k-means reconstruction sum_l C_l[c_l] is nearest
    to their embedding.
    """
    n, width, levels = candidate_codes.shape
    radix = np.cumprod([1, *level_sizes[:0:-1]])[::-1]  # mixed-radix weights, last level fastest
    flat = np.where((candidate_codes >= 0).all(axis=2), (candidate_codes * radix).sum(axis=2), -1)
    holders: dict[int, list[tuple[float, int]]] = {}
    assigned = np.full(n, -1, dtype=np.int64)
    next_choice = np.zeros(n, dtype=np.int64)
    free = [int(p) for p in np.argsort(-candidate_scores[:, 0], kind="stable")[::-1]]  # pop() takes the best
    exhausted = []
    while free:
        p = free.pop()
        while next_choice[p] < width and flat[p, next_choice[p]] < 0:
            next_choice[p] += 1
        if next_choice[p] >= width:
            exhausted.append(p)
            continue
        code, score = int(flat[p, next_choice[p]]), float(candidate_scores[p, next_choice[p]])
        next_choice[p] += 1
        group = holders.setdefault(code, [])
        group.append((score, p))
        assigned[p] = code
        if len(group) > capacity:
            group.sort(key=lambda sp: (-sp[0], sp[1]))
            _, loser = group.pop()
            assigned[loser] = -1
            free.append(loser)
    if exhausted:
        total = int(np.prod(level_sizes))
        grid = np.stack(np.unravel_index(np.arange(total), tuple(level_sizes)), axis=1)
        recon = sum(centroids[level][grid[:, level]] for level in range(levels))
        load = np.zeros(total, dtype=np.int64)
        for code, group in holders.items():
            load[code] = len(group)
        for p in exhausted:
            dist = ((recon - embeddings[p][None, :]) ** 2).sum(axis=1)
            dist[load >= capacity] = np.inf
            code = int(dist.argmin())
            assigned[p] = code
            load[code] += 1
    return np.stack(np.unravel_index(assigned, tuple(level_sizes)), axis=1).astype(np.int64)


def reassigned_sids(sids: SemanticIds, codes: np.ndarray, round_index: int, stats: dict[str, Any],
                    diagnostics: dict[str, Any] | None = None) -> SemanticIds:
    """A copy of `sids` with new 3-level codes, the dedup token re-ranked by popularity inside each code and the
    dedup level kept at its size (so the LM's vocabulary still holds every token). `diagnostics` replaces the
    tokenizer's (computed on the old codes; dropped when not given)."""
    levels = sids.centroids.shape[0]
    full, dedup = assign_sids(codes, sids.popularity, sids.collisions)
    if sids.length > levels and full.shape[1] == levels:  # no collision left: keep the d token (always 0)
        full = np.concatenate([full, np.zeros((len(full), 1), dtype=np.int64)], axis=1)
    if full.shape[1] > sids.length or (dedup or 1) > (sids.level_sizes[levels] if sids.length > levels else 1):
        raise ConfigError("the refined codes need a longer dedup vocabulary than the tokenizer has; lower "
                          "lm.em.capacity.")
    meta = {k: v for k, v in sids.meta.items() if k != "diagnostics"} | {"em_round": round_index, "em": stats}
    if diagnostics is not None:
        meta["diagnostics"] = diagnostics
    return SemanticIds(sids.poi_ids, full, sids.level_sizes, sids.collisions, sids.centroids, sids.embeddings,
                       sids.popularity, meta)
