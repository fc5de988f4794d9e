"""Does a retrieval LM copy from its prompt? Test metrics of finished retrieval runs split by whether the next POI
is one the prompt shows (its SID written after `[hist]` or `[user]`), and how much of each list the prompt
supplies. On Foursquare NYC most next check-ins are revisits, and the user's own visit counts are the strongest
baseline; this says whether an LM's shortfall is in the revisits (it does not copy) or in the new places.

Per run (test split, decoded again on the served model and SIDs, as `retrieval_slices.py` does):

    shown         share of requests whose next POI the prompt shows: the Acc@K ceiling of a method that only copies
    acc@k shown   Acc@K over those requests; `acc@k new` over the others
    copy@1/@10    mean share of each list's first 1 / 10 POIs that the prompt shows
    level<l> shown / new   teacher-forced: the share of requests whose next POI's level-l code is the LM's most
                  likely code of that level given the prompt and the true codes before it (levels a, b, c, then
                  the dedup token d), over the requests whose next POI the prompt shows / does not show

Beside the runs, two rows that need no model: `user_history` (the run's tuned decay over the whole history array,
the baseline of `rankstack bench retrieval`) and `user_history_shown` (the same scores, kept only for POIs the
first run's prompt shows, every other POI after them by popularity): what perfect ordering by visit counts of just
the prompt's POIs reaches.

    python benchmarks/retrieval_copy.py --data data/nyc-next-poi --runs runs/bench-nyc-hist20/geogr \
        --out benchmarks/results/retrieval_nyc_copy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from retrieval_slices import ServedRun, run_lists  # this script's folder is on sys.path

from rankstack.retrieval.baselines import history_topk
from rankstack.retrieval.data import load_retrieval_data
from rankstack.retrieval.evaluate import metrics_from_ranks, ranks_in_lists
from rankstack.retrieval.trie import sid_level_offsets

KEYS = ("shown", "acc@1 shown", "acc@10 shown", "acc@1 new", "acc@10 new", "acc@1", "acc@10", "copy@1", "copy@10")


def shown_masks(writer, history: np.ndarray, n_pois: int) -> np.ndarray:
    """[n, n_pois] bool: the POIs each request's prompt writes (history or profile)."""
    mask = np.zeros((len(history), n_pois), dtype=bool)
    for i, row in enumerate(history):
        mask[i, list(writer.shown_pois(row.tolist()))] = True
    return mask


def copy_metrics(lists: np.ndarray, targets: np.ndarray, shown: np.ndarray, width: int = 20) -> dict[str, float]:
    """The module docstring's row for top-`width` POI `lists` [n, W] (-1 = empty slot), `targets` [n] (-1 = a
    target outside the catalogue, never shown) and the `shown` masks [n, n_pois]."""
    n = len(lists)
    ranks = ranks_in_lists(lists, targets)
    rows = np.arange(n)
    in_prompt = (targets >= 0) & shown[rows, np.maximum(targets, 0)]
    listed = shown[rows[:, None], np.maximum(lists, 0)] & (lists >= 0)
    out: dict[str, float] = {"count": float(n), "shown": float(in_prompt.mean())}
    for name, mask in (("shown", in_prompt), ("new", ~in_prompt)):
        part = metrics_from_ranks(ranks[mask], width) if mask.any() else {}
        for k in (1, 10):
            out[f"acc@{k} {name}"] = part.get(f"acc@{k}", float("nan"))
    every = metrics_from_ranks(ranks, width)
    out |= {"acc@1": every["acc@1"], "acc@10": every["acc@10"],
            "copy@1": float(listed[:, 0].mean()), "copy@10": float(listed[:, :10].mean())}
    return out


@torch.no_grad()
def level_hits(model, tokenizer, prompts: list[str], codes: np.ndarray, level_sizes, batch_size: int = 64
               ) -> np.ndarray:
    """[n, levels] bool: whether each level's true code (`codes` [n, levels]) is the LM's argmax over that level's
    SID tokens, given the prompt and the true codes before it (one teacher-forced forward per request)."""
    offsets = sid_level_offsets(tokenizer, level_sizes)
    width = codes.shape[1]
    ids = torch.tensor(np.asarray(offsets)[None, :] + codes)
    hits = []
    for lo in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[lo:lo + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        answer = ids[lo:lo + batch_size]  # left padding: the answer follows every prompt's last token
        input_ids = torch.cat([enc["input_ids"], answer], 1)
        mask = torch.cat([enc["attention_mask"], torch.ones_like(answer)], 1)
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, -width - 1:-1]
        hits.append(torch.stack([logits[:, level, off:off + size].argmax(-1) == answer[:, level] - off
                                 for level, (off, size) in enumerate(zip(offsets, level_sizes))], 1).numpy())
    return np.concatenate(hits) if hits else np.zeros((0, width), dtype=bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the next-POI dataset the runs were trained on")
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="finished retrieval run folders")
    parser.add_argument("--names", nargs="+", help="a row name per run (default: the folder names)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    names = args.names or [run.name for run in args.runs]
    if len(names) != len(args.runs):
        sys.exit(f"--names gives {len(names)} names for {len(args.runs)} runs; give one per run.")
    torch.set_num_threads(1)
    data = load_retrieval_data(args.data)
    test, n_pois = data.splits["test"], len(data.catalogue)
    rows: dict[str, dict[str, float]] = {}
    first_shown = None
    for name, run in zip(names, args.runs):
        start = time.perf_counter()
        served = ServedRun.load(run, data)
        sids, writer = served.sids, served.writer
        lists = run_lists(run, data, served=served)
        shown = shown_masks(writer, test.history[:len(lists)], n_pois)
        first_shown = shown if first_shown is None else first_shown
        if len(shown) != len(first_shown):
            sys.exit(f"{run} evaluated {len(lists)} test requests and an earlier run {len(first_shown)}; compare "
                     "runs evaluated on the same requests (lm.decode.max_eval_samples).")
        targets = test.target[:len(lists)]
        rows[name] = copy_metrics(lists, targets, shown)
        known = np.flatnonzero(targets >= 0)
        prompts = writer.prompts(test)
        hits = level_hits(served.model, served.tokenizer, [prompts[i] for i in known], sids.codes[targets[known]],
                          sids.level_sizes)
        in_prompt = shown[known, targets[known]]
        for level in range(hits.shape[1]):
            for part, mask in (("shown", in_prompt), ("new", ~in_prompt)):
                rows[name][f"level{level} {part}"] = float(hits[mask, level].mean()) if mask.any() else float("nan")
        print(f"{name}: decoded {len(lists)} requests in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    n = len(first_shown)
    decay = json.loads((args.runs[0] / "eval" / "metrics.json").read_text())["user_history"]["decay"]
    popularity = data.train_checkins.popularity(n_pois)
    history = test.history[:n]
    rows["user_history"] = copy_metrics(history_topk(history, popularity, 20, decay), test.target[:n], first_shown)
    kept = np.where((history >= 0) & first_shown[np.arange(n)[:, None], np.maximum(history, 0)], history, -1)
    rows["user_history_shown"] = copy_metrics(history_topk(kept, popularity, 20, decay), test.target[:n], first_shown)
    print(f"{'row':28s}" + "".join(f"{k:>14s}" for k in KEYS))
    for name, row in rows.items():
        print(f"{name:28s}" + "".join(f"{row[k]:14.4f}" for k in KEYS))
    for name in names:
        print(f"{name}, teacher-forced level accuracy: " + ", ".join(
            f"{k} {v:.4f}" for k, v in rows[name].items() if k.startswith("level")))
    if args.out:
        args.out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "data": args.data,
                                        "runs": [str(r) for r in args.runs], "user_history_decay": decay,
                                        "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
