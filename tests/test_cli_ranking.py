"""The command line end to end on a small hand-built dataset: train, evaluate, inspect, and clear errors."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml

from rankstack.cli import main
from tests._datasets import write_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("cli") / "toy", rows=4000)


def _config(tmp_path, data, model=None, **trainer):
    config = {
        "data": str(data),
        "model": model or {"name": "dlrm", "args": {"top_mlp": [64, 32], "tower": [16]}},
        "batch_size": 128,
        "trainer": {"epochs": 3, "eval_every_steps": 20, "checkpoint_every_steps": 20, "progress_bar": False,
                    "lr_dense": 3e-3, "lr_embedding": 3e-2, "seed": 1, **trainer},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_then_eval_writes_the_run_folder_and_learns(tmp_path, toy, capsys):
    run = tmp_path / "run"
    assert main(["train", "ranking", "--config", str(_config(tmp_path, toy)), "--out", str(run)]) == 0
    for name in ("config.yaml", "train_log.csv", "metrics.json", "results.json", "checkpoint.pt"):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir()), "TensorBoard events are written"
    results = json.loads((run / "results.json").read_text())
    # The toy click depends on whether the candidate's category is in the real-time sequence; a model that
    # learned nothing sits at 0.5.
    assert results["test"]["click_auc"] > 0.6
    # The item-popularity baseline is reported beside the model; on this data items carry no click signal.
    assert results["test"]["click_auc"] > results["test"]["popularity"]["click_auc"] + 0.05
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--json"]) == 0
    printed = capsys.readouterr().out
    assert f"{results['test']['click_auc']:.4f}" in printed


def test_a_hemix_run_logs_its_attention_diagnostics_at_every_evaluation(tmp_path, toy, capsys):
    model = {"name": "hemix", "args": {"dim": 16, "n_layers": 1, "rank": 4, "tower": [16]}}
    run = tmp_path / "run"
    assert main(["train", "ranking", "--config", str(_config(tmp_path, toy, model, epochs=1)), "--out", str(run)]) == 0
    with open(run / "train_log.csv", newline="") as f:
        evals = [row for row in csv.DictReader(f) if row["eval_click_auc"]]
    assert evals and all(row["eval_diag_padding_mass"] == "0.0" for row in evals)
    entropy = [float(row["eval_diag_realtime_branch_dynamic_entropy"]) for row in evals]
    assert all(0 < h < math.log(6) + 1e-6 for h in entropy)  # at most log of the stream's 6 events
    assert {"eval_diag_layer0_mix_ratio", "eval_diag_layer0_ffn_ratio"} <= set(evals[0])
    diagnostics = json.loads((run / "results.json").read_text())["diagnostics"]
    assert diagnostics["padding_mass"] == 0.0 and diagnostics["layer0_ffn_ratio"] > 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run)]) == 0  # `rankstack eval` prints them under the metrics
    printed = capsys.readouterr().out
    assert "diagnostics on the split's first batch" in printed and "realtime_branch_slot3_entropy" in printed


def test_overrides_and_unknown_keys(tmp_path, toy, capsys):
    config = _config(tmp_path, toy)
    code = main(["train", "ranking", "--config", str(config), "--out", str(tmp_path / "r"),
                 "--set", "trainer.learning_rate=0.1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown key `trainer.learning_rate`" in err and "Traceback" not in err
    code = main(["train", "ranking", "--config", str(config), "--set", "model.args.top_mlp=big"])
    assert code == 2
    assert "key `model.args.top_mlp` must be list[int]" in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_inspect_prints_schema_rows_vocab_and_sequence_lengths(toy, capsys):
    assert main(["data", "inspect", str(toy), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == {"train": 4000, "valid": 1000, "test": 1000}
    columns = {c["name"]: c for c in summary["columns"]}
    assert columns["realtime_poi_id"]["vocab"] == columns["poi_id"]["vocab"]
    assert columns["hour"]["level"] == "request" and columns["poi_id"]["level"] == "candidate"
    stats = summary["sequence_lengths_train"]["realtime_poi_id"]
    assert stats["max"] == 6 and 0 < stats["truncated"] < 1 and 0 < stats["empty"] < 1


def test_data_formats_lists_every_converter_and_one_formats_options(capsys):
    from rankstack.data.converters import CONVERTERS

    assert main(["data", "formats"]) == 0
    listing = capsys.readouterr().out
    assert all(f"{name} " in listing for name in CONVERTERS)
    assert main(["data", "formats", "checkins"]) == 0
    options = capsys.readouterr().out
    assert "time_format (str): strptime format" in options and "task (str; default next_poi; one of next_poi, ctr)" in options
    assert main(["data", "formats", "nope"]) == 2
    assert "unknown format `nope`; known formats: ali-ccp" in capsys.readouterr().err


def test_output_piped_into_a_closed_reader_exits_quietly():
    import subprocess
    import sys

    # as `rankstack data formats | head -0`: the reader is gone before the command writes anything
    command = [sys.executable, "-c", "import sys; from rankstack.cli import main; sys.exit(main(['data', 'formats']))"]
    writer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writer.stdout.close()
    assert writer.wait(timeout=60) == 0
    assert writer.stderr.read() == b""
