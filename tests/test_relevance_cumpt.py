"""CumPT tiering and the single-pass scorer (relevance.md §3.4)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from rankstack.errors import ConfigError  # noqa: E402
from rankstack.metrics import macro_f1  # noqa: E402
from rankstack.relevance.bench import bench_run  # noqa: E402
from rankstack.relevance.cumpt import (  # noqa: E402
    BETA_GRID,
    RelevanceItem,
    RelevanceScorer,
    argmax_tiers,
    cumpt_tiers,
    expected_tier,
    page_tiers,
    tier_report,
    tune_beta,
)
from rankstack.relevance.data import load_rule_table, load_split  # noqa: E402
from rankstack.relevance.format import label_token_ids  # noqa: E402
from rankstack.relevance.sft import CHECKPOINT_META, ModelConfig, build_model  # noqa: E402
from rankstack.relevance.tokenizer import train_tokenizer, training_corpus  # noqa: E402
from rankstack.train.checkpoint import save_json  # noqa: E402


def test_cumpt_on_hand_made_distributions() -> None:
    probs = np.array([
        [0.1, 0.2, 0.3, 0.4],   # upper tails 1.0, 0.9, 0.7, 0.4
        [0.0, 0.0, 0.5, 0.5],   # tail from 4 reaches exactly 0.5
        [0.7, 0.1, 0.1, 0.1],
        [0.25, 0.25, 0.25, 0.25],
    ])
    np.testing.assert_array_equal(cumpt_tiers(probs, 0.5), [3, 4, 1, 3])
    np.testing.assert_array_equal(cumpt_tiers(probs, 0.3), [4, 4, 2, 3])  # 0.1 + 0.1 + 0.1 reaches 0.3
    np.testing.assert_array_equal(cumpt_tiers(probs, 0.8), [2, 3, 1, 1])
    np.testing.assert_array_equal(cumpt_tiers(probs, 1.0), [1, 3, 1, 1])
    np.testing.assert_array_equal(argmax_tiers(probs), [4, 3, 1, 1])
    np.testing.assert_allclose(expected_tier(probs), [3.0, 3.5, 1.6, 2.5])
    assert page_tiers([4, 3, 2, 1]).tolist() == ["Good", "Good", "Mid", "Bad"]


def test_beta_one_half_is_the_ordinal_median_and_larger_beta_is_more_conservative() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=2000)
    # The median tier: the smallest k whose lower cumulative Σ_{j ≤ k} p_j exceeds 1/2.
    median = np.argmax(np.cumsum(probs, axis=1) > 0.5, axis=1) + 1
    np.testing.assert_array_equal(cumpt_tiers(probs, 0.5), median)
    previous = cumpt_tiers(probs, BETA_GRID[0])
    for beta in BETA_GRID[1:]:
        current = cumpt_tiers(probs, beta)
        assert (current <= previous).all()
        previous = current
    with pytest.raises(ValueError, match="beta"):
        cumpt_tiers(probs, 0.0)


def test_tune_beta_finds_the_beta_that_labelled_the_dev_set() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.full(4, 0.7), size=3000)
    labels = cumpt_tiers(probs, 0.66)
    beta, scores = tune_beta(probs, labels)
    assert set(scores) == set(BETA_GRID)
    assert abs(beta - 0.66) < 0.011 and scores[beta] == pytest.approx(1.0)
    assert scores[0.5] < 0.95 and scores[0.8] < 0.95
    assert macro_f1(labels, cumpt_tiers(probs, beta), [1, 2, 3, 4]) == pytest.approx(1.0)


def test_tier_report_counts_unparseable_as_wrong() -> None:
    report = tier_report([4, 3, 2, 1], [4, 3, 2, 0])
    assert report["accuracy"] == 0.75 and report["f1_1"] == 0.0 and report["f1_4"] == 1.0
    assert report["macro_f1"] == pytest.approx(0.75)
    assert report["page_macro_f1"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)


def test_batched_scorer_equals_one_prompt_at_a_time() -> None:
    texts = [f"Query: item {i} is {'very ' * i}good\nAnswer: 1 2 3 4" for i in range(8)]
    tokenizer = train_tokenizer(texts * 4, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                    intermediate_size=64), tokenizer).eval()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                             add_generation_prompt=True) for t in texts]
    label_ids = label_token_ids(tokenizer)
    one_by_one = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1, label_ids]
        one_by_one.append(torch.softmax(logits, -1).numpy())
    batched = RelevanceScorer(model, tokenizer, batch_size=3).score_prompts(prompts)
    np.testing.assert_allclose(batched, np.stack(one_by_one), atol=1e-5)
    np.testing.assert_allclose(batched.sum(axis=1), 1.0, atol=1e-9)
    lengths = {len(tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 3  # the batches really were padded


def random_run(world, out, variant: str = "label_first"):
    """A relevance run folder holding a tiny random Llama (as `rankstack train relevance` writes one)."""
    records = load_split(world, "valid", 48)
    tokenizer = train_tokenizer(training_corpus(records, load_rule_table(world)), vocab_size=400, min_frequency=2)
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                                    intermediate_size=64), tokenizer)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    save_json({"stage": "sft", "variant": variant, "rule_text": False, "dataset": str(world),
               "label_token_ids": label_token_ids(tokenizer)}, out / "model" / CHECKPOINT_META)
    return out


def test_serving_api_loads_a_run_scores_pairs_and_keeps_its_calibrated_beta(tiny_world_dir, tmp_path) -> None:
    world = tiny_world_dir / "relevance"
    records = load_split(world, "valid", 48)
    rule_table = load_rule_table(world)
    run = random_run(world, tmp_path / "run")

    scorer = RelevanceScorer.from_run(run, batch_size=5)
    assert scorer.beta == 0.5 and scorer.rule_table == rule_table
    items = [RelevanceItem(r.item_id, r.item_title, r.item_category, r.item_brand, r.item_price_level, r.attrs)
             for r in records]
    scores = scorer.score([r.query for r in records], items, [r.rules for r in records])
    # the same prompts as the records' own: serving reads the pair exactly as training wrote it
    np.testing.assert_allclose(scores.probs, scorer.score_records(records), atol=1e-9)
    np.testing.assert_array_equal(scores.tiers, cumpt_tiers(scores.probs, 0.5))
    assert scores.page_tiers.tolist() == page_tiers(scores.tiers).tolist()
    beta = scorer.calibrate(records)
    assert beta in BETA_GRID
    scorer.save_calibration()
    assert RelevanceScorer.from_run(run / "model").beta == beta
    assert isinstance(scorer.explain(records[0].query, items[0], max_new_tokens=4), str)
    with pytest.raises(ValueError, match="one query"):
        scorer.score(["q"], items[:2])


def test_scorer_serves_in_bf16_when_asked_and_in_fp32_on_a_cpu_by_default(tiny_world_dir, tmp_path) -> None:
    world = tiny_world_dir / "relevance"
    run = random_run(world, tmp_path / "run")
    records = load_split(world, "valid", 12)
    full = RelevanceScorer.from_run(run)  # "auto" on a CPU: fp32
    half = RelevanceScorer.from_run(run, dtype="bf16")
    assert next(full.model.parameters()).dtype == torch.float32
    assert next(half.model.parameters()).dtype == torch.bfloat16
    probs = half.score_records(records)
    assert probs.dtype == np.float64 and np.allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs, full.score_records(records), atol=0.03)  # bf16's 8-bit mantissa
    with pytest.raises(ConfigError, match="dtype"):
        RelevanceScorer.from_run(run, dtype="fp16")
    assert bench_run(run, max_examples=4, max_new_tokens=4, dtype="bf16")["dtype"] == "bfloat16"


def test_bench_scores_a_think_first_run_by_its_decode_only(tiny_world_dir, tmp_path) -> None:
    world = tiny_world_dir / "relevance"
    think = random_run(world, tmp_path / "think", "think_first")
    with pytest.raises(ConfigError, match="think-first"):
        RelevanceScorer.from_run(think)
    scorer = RelevanceScorer.from_run(think, generate_only=True)
    with pytest.raises(ConfigError, match="no single-pass distribution"):
        scorer.score_prompts(scorer.prompts(load_split(world, "valid", 2)))
    report = bench_run(think, max_examples=6, max_new_tokens=8, decode=False)
    assert report["cumpt"] is None and report["argmax"] is None and "speedup" not in report
    assert report["decode"]["format_failure_rate"] == 1.0  # 8 random tokens never reach `Label:`
    label_first = bench_run(random_run(world, tmp_path / "label"), max_examples=6, max_new_tokens=8)
    assert 0.0 <= label_first["cumpt"]["macro_f1"] <= 1.0 and label_first["speedup"] > 0
