"""``python -m benchmarks.run`` end to end on a tiny causal Llama.

A small real VADER tweets file (rows of the shipped data set) stands in for
the data directory; every method family runs once, then the runner is called
again to show that it resumes from what it saved instead of recomputing.
"""

import json
import shutil

import numpy as np
import pytest

from benchmarks import run as runner
from sklearn_relish.cache import MEMORY_CACHE
from sklearn_relish.datasets import load_vader_tweets
from tiny import build_tiny_llama

METHODS = ["relish", "ridge_mean", "zeroshot", "rail_zeroshot"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    backbone = build_tiny_llama(root / "tiny-llama", causal=True)
    X, y = load_vader_tweets(return_X_y=True)
    lines = [f"{i}\t{score}\t{text}" for i, (score, text) in enumerate(zip(y[:50], X[:50]))]
    folder = root / "data" / "vader-sentiment"
    folder.mkdir(parents=True)
    (folder / "tweets_GroundTruth.txt").write_text("\r\n".join(lines) + "\r\n")
    return root, backbone


def _argv(root, backbone, *extra):
    return ["--backbone", backbone, "--tasks", "vader-tweets", "--seeds", "0",
            "--data-dir", str(root / "data"), "--cache-dir", str(root / "cache"),
            "--out", str(root / "out"), "--threads", "1", *extra]


def test_runner_scores_every_family_writes_the_report_and_resumes(setup, capsys):
    root, backbone = setup
    runner.main(_argv(root, backbone, "--methods", *METHODS))
    out = root / "out"
    path, = out.glob("*.json")
    results = json.loads(path.read_text())

    assert results["meta"]["is_decoder"] is True
    assert results["meta"]["runs"][0]["command"].startswith(
        "python -m benchmarks.run --backbone ")
    task = results["tasks"]["vader-tweets"]
    assert (task["n_train"], task["n_test"]) == (40, 10)
    assert task["encoding"]["n_encoded"] == 50
    assert set(results["entries"]) == {
        "vader-tweets|relish|0", "vader-tweets|ridge_mean|-",
        "vader-tweets|zeroshot|-", "vader-tweets|rail_zeroshot|-"}
    for entry in results["entries"].values():
        assert entry["n_test"] == 10
        assert np.isfinite(entry["nrmse"]) and np.isfinite(entry["mae"])
    assert results["entries"]["vader-tweets|relish|0"]["n_params"] > 0
    assert 0.0 <= results["entries"]["vader-tweets|zeroshot|-"]["extra"][
        "parse_failure_rate"] <= 1.0
    saved = results["predictions"]["vader-tweets"]
    assert len(saved["y_true"]) == len(saved["relish"]) == 10

    report = path.with_suffix(".md").read_text()
    for method in METHODS:
        assert f"| {method} |" in report
    assert {p.name for p in out.glob("*.png")} == {
        path.stem + "-pearson.png", path.stem + "-scatter.png"}

    # A second call finds every entry saved: nothing is fitted or encoded.
    capsys.readouterr()
    runner.main(_argv(root, backbone, "--methods", *METHODS))
    assert "vader-tweets: nothing to do" in capsys.readouterr().out
    again = json.loads(path.read_text())
    assert again["entries"] == results["entries"]
    assert len(again["meta"]["runs"]) == 2

    # After the cache is wiped a rerun encodes again, but the report keeps
    # the first run's encoding on record.
    shutil.rmtree(root / "cache")
    MEMORY_CACHE.clear()
    first = dict(task["encoding"], seconds=1234.5)
    again["tasks"]["vader-tweets"]["encoding"] = first
    path.write_text(json.dumps(again))
    runner.main(_argv(root, backbone, "--methods", "ridge_mean", "--rerun"))
    assert "50 encoded" in capsys.readouterr().out
    final = json.loads(path.read_text())
    assert final["tasks"]["vader-tweets"]["encoding"] == first
    assert final["entries"]["vader-tweets|relish|0"] == results["entries"][
        "vader-tweets|relish|0"]


def test_quick_mode_defaults_to_one_task_of_each_kind():
    assert runner.parse_args([]).tasks == list(runner.TASKS)
    quick = runner.parse_args(["--quick"])
    assert quick.tasks == ["stsb", "mlqe-ro-en", "vader-tweets"]
    assert quick.gen_test == runner.QUICK_GEN_TEST
    assert runner.parse_args(["--quick", "--tasks", "mlqe-si-en"]).tasks == ["mlqe-si-en"]


def test_tuned_note_names_the_choice_and_its_cv_score():
    # A negative cross-validated R² tells the reader that no setting in the
    # grid beat predicting the mean; the report must show it.
    from benchmarks.run import _notes

    row = {"extras": [{"best_params": {"latent_dim": 256, "n_iterations": 1},
                       "best_cv_r2": -0.1345}]}
    assert _notes("relish_tuned", row) == "best d=256,L=1, CV R² -0.13"
    row["extras"][0].pop("best_cv_r2")
    assert _notes("relish_tuned", row) == "best d=256,L=1"


def test_parameter_count_shows_the_range_when_seeds_chose_different_heads():
    # The tuned RELISH can choose L = 1 on one seed and L = 3 on another; the
    # report must not print the first seed's count as if it held for all.
    from benchmarks.run import _params, summarise

    def entry(seed, n_params):
        return {"task": "t", "method": "relish_tuned", "seed": seed,
                "n_test": 10, "n_params": n_params, "fit_time": 1.0,
                "predict_time": 0.1, "pearson": 0.5, "spearman": 0.5,
                "nrmse": 0.9, "mae": 0.4}

    results = {"entries": {f"t|relish_tuned|{s}": entry(s, n)
                           for s, n in enumerate([937_985, 272_385, 937_985])}}
    row = summarise(results)[("t", "relish_tuned")]
    assert _params(row["n_params"]) == "272,385–937,985"
    results["entries"] = {"t|relish_tuned|0": entry(0, 937_985)}
    assert _params(summarise(results)[("t", "relish_tuned")]["n_params"]) == "937,985"


def test_train_size_subsamples_training_rows_only_into_its_own_file(setup):
    # The LoRA methods' CPU measurement trains on a subset: the same rows for
    # every method, the whole test split, results apart from the full table.
    root, backbone = setup
    argv = _argv(root, backbone, "--methods", "ridge_mean", "--train-size", "25")
    argv[argv.index("--out") + 1] = str(root / "subset")
    runner.main(argv)
    path, = (root / "subset").glob("*.json")
    assert path.name.endswith("-train25.json")
    results = json.loads(path.read_text())
    task = results["tasks"]["vader-tweets"]
    assert (task["n_train"], task["n_test"]) == (25, 10)
    assert task["train_subsample"] == "25 of 40 train rows (seed 0)"
    assert "training subsample of 25 rows" in path.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        runner.parse_args(["--quick", "--train-size", "25"])


def test_merge_folds_parallel_runs_into_one_table_and_refuses_other_settings(setup, capsys):
    # Two processes, each with its own --out, then one --merge: the table
    # holds both runs' entries and commands, and nothing is refitted.
    root, backbone = setup
    shutil.rmtree(root / "cache", ignore_errors=True)
    MEMORY_CACHE.clear()
    parts = []
    for method in ("ridge_mean", "ridge_last"):
        argv = _argv(root, backbone, "--methods", method)
        argv[argv.index("--out") + 1] = str(root / f"part-{method}")
        runner.main(argv)
        parts.append(next((root / f"part-{method}").glob("*.json")))
    merged = root / "merged"
    capsys.readouterr()
    argv = _argv(root, backbone, "--merge", *map(str, parts))
    argv[argv.index("--out") + 1] = str(merged)
    runner.main(argv)
    assert "pearson=" not in capsys.readouterr().out
    path, = merged.glob("*.json")
    assert path.name == parts[0].name
    results = json.loads(path.read_text())
    first, second = (json.loads(p.read_text()) for p in parts)
    assert results["entries"] == {**first["entries"], **second["entries"]}
    assert set(results["entries"]) == {"vader-tweets|ridge_mean|-", "vader-tweets|ridge_last|-"}
    assert [r["command"] for r in results["meta"]["runs"]] == [
        first["meta"]["runs"][0]["command"], second["meta"]["runs"][0]["command"]]
    # The first part encoded, the second read the cache: the first stays on record.
    assert second["tasks"]["vader-tweets"]["encoding"]["n_encoded"] == 0
    assert results["tasks"]["vader-tweets"]["encoding"] == first["tasks"]["vader-tweets"]["encoding"]
    assert results["tasks"]["vader-tweets"]["encoding"]["n_encoded"] == 50
    report = path.with_suffix(".md").read_text()
    assert "| ridge_mean |" in report and "| ridge_last |" in report

    # Merging the same file again adds no run twice.
    runner.main(argv)
    assert len(json.loads(path.read_text())["meta"]["runs"]) == 2

    # A table of other settings is refused by name, and the target is untouched.
    other = json.loads(parts[0].read_text())
    other["meta"]["train_size"] = 25
    bad = root / "bad.json"
    bad.write_text(json.dumps(other))
    before = path.read_text()
    argv = _argv(root, backbone, "--merge", str(bad))
    argv[argv.index("--out") + 1] = str(merged)
    with pytest.raises(SystemExit, match="train_size is 25"):
        runner.main(argv)
    assert path.read_text() == before
    with pytest.raises(SystemExit):
        runner.parse_args(["--merge", "a.json", "--report-only"])


def test_the_run_encodes_every_layer_choice_once_before_the_timed_fits(setup, tmp_path,
                                                                        monkeypatch):
    """The default reads other layers than the last-layer ridges: both are
    cached in one backbone pass per text before the fits, so no fit or
    prediction runs the backbone (its time would hold the encoding)."""
    from benchmarks.baselines import Context

    root, backbone = setup
    MEMORY_CACHE.clear()
    texts_run, after_encoding, hooks = [], [], []
    encode_task = Context.encode_task

    def counted_encode(ctx, task, layers=(-1,)):
        # Count the texts of every forward pass of the (shared) model from here on.
        hooks.append(ctx.load_backbone().model.register_forward_hook(
            lambda module, args, kwargs, output: texts_run.append(len(kwargs["input_ids"])),
            with_kwargs=True))
        result = encode_task(ctx, task, layers)
        after_encoding.append(sum(texts_run))
        return result

    monkeypatch.setattr(Context, "encode_task", counted_encode)
    argv = ["--backbone", backbone, "--tasks", "vader-tweets", "--seeds", "0",
            "--data-dir", str(root / "data"), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out"), "--threads", "1",
            "--methods", "relish", "ridge_mean", "ridge_layers"]
    try:
        runner.main(argv)
    finally:
        for hook in hooks:
            hook.remove()
    results = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    encoding = results["tasks"]["vader-tweets"]["encoding"]
    # 50 prompts, each run once for both the default's layers and the last one.
    assert encoding["n_encoded"] == 50 and after_encoding == [50]
    assert encoding["layers"] == ["all", -1]
    assert sum(texts_run) == 50, "a fit or a prediction ran the backbone"
    assert {"vader-tweets|relish|0", "vader-tweets|ridge_mean|-",
            "vader-tweets|ridge_layers|-"} <= set(results["entries"])
