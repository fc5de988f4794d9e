"""How close can observable features get to the world's Bayes AUC? (world.md §4 calibration check)

Three figures on a world's ranking test split, beside the Bayes click AUC of the true probabilities:
- *no intent*: the true logit without the real-time intent term (what a model blind to the session gets at best);
- *intent posterior*: the true logit with the intent term replaced by its mean given what the real-time sequence
  shows (is the candidate's category the newest event's; how often it occurs among the events), i.e. every other
  term known exactly and the intent read from the sequence;
- *GBDT*: a hand-featured gradient-boosted tree model (scikit-learn) on observable columns only (crosses, item
  fields, context, and counts of the candidate's category in the sequences): a strong non-neural reference.

    python benchmarks/world_ceiling.py --world runs/bench/world-small
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from rankstack.data.dataset import Dataset
from rankstack.metrics import auc
from rankstack.ranking.evaluate import mechanism_report

NUMERIC = ["distance_km", "user_cat_ctr", "user_cat_visits", "user_poi_visits", "user_brand_visits",
           "user_price_gap", "days_since_cat", "rating", "review_count", "session_events"]
CATEGORICAL = ["hour", "weather", "income_band", "loyalty_band", "category_l2", "category_l1", "brand",
               "price_level", "position", "open_hour", "close_hour", "indoor", "scene", "query_category_l2"]


def sequence_counts(items: np.ndarray, sequences: list, newest: int | None = None) -> np.ndarray:
    return np.array([list(seq if newest is None else seq[-newest:]).count(item) for item, seq in zip(items, sequences)],
                    dtype=np.float64)


def newest_is(items: np.ndarray, sequences: list) -> np.ndarray:
    return np.array([len(seq) > 0 and seq[-1] == item for item, seq in zip(items, sequences)], dtype=np.float64)


def features(split_path: Path) -> tuple[np.ndarray, np.ndarray]:
    frame = pq.read_table(split_path).to_pandas()
    cat2, cat1 = frame["category_l2"].to_numpy(), frame["category_l1"].to_numpy()
    rt2, rt1 = list(frame["realtime_category_l2"]), list(frame["realtime_category_l1"])
    columns = [frame[c].to_numpy(np.float64) for c in NUMERIC + CATEGORICAL]
    columns += [newest_is(cat2, rt2), sequence_counts(cat2, rt2), sequence_counts(cat2, rt2, newest=3),
                newest_is(cat1, rt1), sequence_counts(cat1, rt1),
                sequence_counts(cat2, list(frame["longterm_category_l2"]))]
    return np.stack(columns, axis=1), frame["click"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="the JSON to write (default benchmarks/results/world_ceiling_<world folder>.json)")
    args = parser.parse_args()
    from sklearn.ensemble import HistGradientBoostingClassifier

    ranking = Path(args.world) / "ranking"
    truth = pq.read_table(ranking / "truth" / "test.parquet").to_pandas()
    terms = truth[[c for c in truth.columns if c.startswith("logit_")]].sum(axis=1).to_numpy()
    intent = truth["logit_realtime_intent"].to_numpy()
    x_test, y_test = features(ranking / "test.parquet")
    shown = x_test[:, len(NUMERIC) + len(CATEGORICAL)] * 4 + np.minimum(x_test[:, len(NUMERIC) + len(CATEGORICAL) + 1], 3)
    posterior = np.zeros_like(intent)
    for key in np.unique(shown):
        posterior[shown == key] = intent[shown == key].mean()

    start = time.perf_counter()
    x_train, y_train = features(ranking / "train.parquet")
    categorical = np.zeros(x_train.shape[1], dtype=bool)
    categorical[len(NUMERIC):len(NUMERIC) + len(CATEGORICAL)] = True
    model = HistGradientBoostingClassifier(max_iter=600, learning_rate=0.05, max_leaf_nodes=63,
                                           categorical_features=categorical, early_stopping=True,
                                           validation_fraction=0.1, random_state=args.seed).fit(x_train, y_train)
    gbdt = model.predict_proba(x_test)[:, 1]
    result = {
        "command": " ".join(["python", *sys.argv]),
        "world": str(args.world), "test_rows": int(len(y_test)), "train_rows": int(len(y_train)),
        "bayes_click_auc": auc(y_test, terms),
        "no_intent_click_auc": auc(y_test, terms - intent),
        "intent_posterior_click_auc": auc(y_test, terms - intent + posterior),
        "gbdt_click_auc": auc(y_test, gbdt),
        "gbdt_iterations": int(model.n_iter_), "gbdt_fit_s": time.perf_counter() - start,
        # which planted mechanisms the GBDT's scores follow (benchmarks/ranking_mechanisms.py does the same for
        # trained ranking models): the reference for what observable columns allow
        "gbdt_mechanisms": mechanism_report(Dataset.open(ranking), "test", y_test, gbdt),
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"world_ceiling_{Path(args.world).name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
