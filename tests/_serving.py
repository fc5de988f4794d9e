"""A tiny trained HeMix run on the tiny world, exported for serving (shared by the serving tests)."""

from __future__ import annotations

from pathlib import Path

import yaml

from rankstack.ranking.run import load_run_config, train_ranking
from rankstack.serving.artifacts import export_run

TINY_HEMIX = {"embedding_dim": 8, "dim": 16, "n_layers": 1, "rank": 4, "ffn_mult": 2, "tower": [16]}


def write_tiny_run(world_dir: Path, out: Path) -> Path:
    """Train HeMix for a few steps on the tiny world's ranking data and export it; returns the run folder."""
    config_path = out.parent / "hemix_tiny.yaml"
    config_path.write_text(yaml.safe_dump({
        "data": str(world_dir / "ranking"), "model": {"name": "hemix", "args": TINY_HEMIX}, "batch_size": 256,
        "eval_batch_size": 4096, "eval_max_rows": 2000,
        "trainer": {"epochs": 1, "max_steps": 8, "eval_every_steps": 8, "checkpoint_every_steps": 8,
                    "progress_bar": False, "tensorboard": False, "seed": 0}}))
    train_ranking(load_run_config(config_path), out)
    export_run(out)
    return out


def write_tiny_geogr_run(world_dir: Path, out: Path) -> Path:
    """A GeoGR run on the tiny world small enough for the serving tests (~7 s on 2 cores): SIDs without the
    contrastive step, no CPT, 128 SFT examples for one epoch, 16 evaluated requests. It retrieves valid POIs,
    not good ones; the serving tests check the wiring, `tests/test_retrieval_lm.py` the method."""
    from rankstack.retrieval.run import load_run_config as load_retrieval_config
    from rankstack.retrieval.run import train_retrieval

    config = load_retrieval_config(Path(__file__).resolve().parents[1] / "configs/retrieval/city_tiny.yaml",
                                   {"data": str(world_dir / "next_poi"), "lm.decode.max_eval_samples": 16,
                                    "semantic_ids.contrastive.enabled": False, "lm.cpt.enabled": False,
                                    "lm.sft.max_examples": 128, "lm.sft.training.num_epochs": 1.0,
                                    "sasrec.enabled": False, "lm.decode.device": "cpu", "lm.decode.num_beams": 10})
    train_retrieval(config, out)
    return out


def write_tiny_autofas_run(world_dir: Path, out: Path) -> Path:
    """An AutoFAS run on the tiny world for the serving tests (~5 s): a 30-candidate view of 80/20/20 requests, a
    one-epoch teacher, 40 search steps and one retraining epoch under a 3 ms budget. Wiring, not quality."""
    import torch

    from rankstack.config import from_dict
    from rankstack.preranking.run import PrerankRunConfig, train_preranking

    root = Path(__file__).resolve().parents[1]
    config = from_dict(PrerankRunConfig, {
        "world": str(world_dir), "n_cand": 30, "budget_ms": 3.0, "requests": {"train": 80, "valid": 20, "test": 20},
        "teacher_config": str(root / "configs/preranking/teacher_dcnv2.yaml"), "teacher_epochs": 1,
        "autofas": {"n_layers": 2, "widths": [32, 16], "search_steps": 40, "batch_requests": 8},
        "retrain": {"epochs": 1, "batch_requests": 8},
        "latency": {"repeats": 5, "warmup": 2, "table_dir": str(out / "latency")}})
    torch.manual_seed(0)
    train_preranking(config, out, log=lambda *_: None)
    return out
