"""``benchmarks.studies.layers`` and ``learning_curve`` on the tiny backbone."""

import json

import numpy as np

from benchmarks.baselines import Context
from benchmarks.studies import layers, learning_curve
from data_utils import benchmark_task
from sklearn_relish import RelishRegressor


def test_pooled_layers_give_the_estimators_mean_mix_exactly(tiny_model_dir, tmp_path,
                                                             empty_memory):
    """The study scores layer choices from every layer's pooled vectors: the
    mean over layers of the pooled states is what a mean-mix regressor
    pools (up to the float16 the cache stores)."""
    task = benchmark_task(60, 20, seed=5)
    ctx = Context(tiny_model_dir, tmp_path, max_length=64)
    pooled, _ = layers.pooled(ctx, task, task.X_train[:8], tmp_path / "store", "t")
    assert pooled.shape == (8, 3, 2, 32)                # 2 layers + embeddings, mean/last
    reg = RelishRegressor(backbone=tiny_model_dir, layer="all", prompt_template=task.template,
                          max_length=64, cache_dir=None)
    for pooling, part in (("mean", 0), ("last", 1)):
        direct = reg.pooled_states(task.X_train[:8], pooling=pooling)
        np.testing.assert_allclose(pooled[:, 1:3, part].mean(axis=1), direct, rtol=2e-3,
                                   atol=2e-3)
    # A second call reads the stored vectors.
    again, seconds = layers.pooled(ctx, task, task.X_train[:8], tmp_path / "store", "t")
    assert seconds == 0.0 and np.allclose(again, pooled, atol=1e-3)


def test_layer_study_scores_every_layer_and_choice(tiny_model_dir, tmp_path, empty_memory):
    task = benchmark_task(120, 40, seed=6)
    ctx = Context(tiny_model_dir, tmp_path, max_length=64)
    result = layers.study_task(ctx, task, None, None, tmp_path / "store")
    assert [len(result["per_layer"][p]) for p in layers.POOLINGS] == [3, 3]
    assert set(result["choices"]) == set(layers.CHOICES)
    assert result["choices"]["all"]["layers"] == [1, 2]
    chosen = result["chosen_on_train"]
    best = min(result["per_layer"][p][k]["loo_mse"] for p in layers.POOLINGS for k in (1, 2))
    assert result["per_layer"][chosen["pooling"]][chosen["layer"]]["loo_mse"] == best
    report = tmp_path / "layers.md"
    layers.write_report({"backbone": "tiny", "command": "x", "tasks": {"toy": result}}, report)
    assert "| middle_half |" in report.read_text()


def test_learning_curve_fits_each_method_and_reports_the_ridge_check(tiny_model_dir, tmp_path,
                                                                     empty_memory,
                                                                     monkeypatch):
    task = benchmark_task(200, 40, seed=7)
    monkeypatch.setattr(learning_curve, "load_task", lambda name, data_dir=None: task)
    monkeypatch.setattr(learning_curve.cli, "resolve_backbone_name", lambda name: tiny_model_dir)
    monkeypatch.setattr(learning_curve, "_relish", lambda ctx, task, seed, **params:
                        RelishRegressor(backbone=tiny_model_dir, prompt_template=task.template,
                                        max_length=64, cache_dir=ctx.cache_dir,
                                        random_state=seed, latent_dim=16, n_heads=2,
                                        max_epochs=2, **params))
    learning_curve.main(["--tasks", "stsb", "--sizes", "100", "--seeds", "0",
                         "--methods", "ridge_mean", "ridge_layers", "relish", "relish_last_cv3",
                         "relish_middle_half", "--cache-dir", str(tmp_path / "cache"),
                         "--out", str(tmp_path)])
    results = json.loads(next(tmp_path.glob("learning-curve-*.json")).read_text())
    entries = results["tasks"]["stsb"]["100"]["0"]
    assert set(entries) == {"ridge_mean", "ridge_layers", "relish", "relish_last_cv3",
                            "relish_middle_half"}
    assert 0 <= entries["relish_last_cv3"]["head_weight"] <= 1
    report = next(tmp_path.glob("learning-curve-*.md")).read_text()
    assert "ridge)" in report and "| 100 (1 seeds) |" in report
    # A second command adds its cells, keeps the first's, and both are named.
    learning_curve.main(["--tasks", "stsb", "--sizes", "100", "50", "--seeds", "0",
                         "--methods", "ridge_mean", "ridge_last",
                         "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path)])
    again = json.loads(next(tmp_path.glob("learning-curve-*.json")).read_text())
    assert again["tasks"]["stsb"]["100"]["0"]["relish"] == entries["relish"]
    assert "ridge_last" in again["tasks"]["stsb"]["100"]["0"]
    assert len(again["commands"]) == 2
    report = next(tmp_path.glob("learning-curve-*.md")).read_text()
    assert all(f"`{c}`" in report for c in again["commands"])
    # Sizes in rows whatever order the runs added them in.
    assert report.index("| 50 (1 seeds) |") < report.index("| 100 (1 seeds) |")


def test_the_tables_layer_ridges_read_the_defaults_layers_and_the_training_rows(
        tiny_model_dir, tmp_path, empty_memory):
    """``ridge_layers`` is the default's anchor ridge on its layers (the mean
    of every layer here); ``ridge_best_layer`` picks its layer by the
    training rows' leave-one-out error alone: shuffling the test targets
    changes neither choice nor prediction."""
    from benchmarks.baselines import METHODS
    from sklearn_relish.anchor import fit_anchor

    task = benchmark_task(120, 40, seed=6)
    ctx = Context(tiny_model_dir, tmp_path, max_length=64)
    layered = METHODS["ridge_layers"].run(ctx, task, 0)
    assert layered["extra"]["layers"] == [1, 2]
    train, test = (layers.pooled(ctx, task, X, tmp_path / "layer-pooled" / "x", name)[0]
                   .astype(np.float64)
                   for X, name in ((task.X_train, "a"), (task.X_test, "b")))
    both = lambda x: np.hstack([x[:, 1:].mean(1)[:, 0], x[:, 1:].mean(1)[:, 1]])  # noqa: E731
    direct = fit_anchor(both(train), task.y_train).predict(both(test)).ravel()
    # The cache stores float16 token states; the pooled store pools in float32.
    np.testing.assert_allclose(layered["y_pred"], direct, rtol=0, atol=0.02 * direct.std())

    best = METHODS["ridge_best_layer"].run(ctx, task, 0)
    study = layers.study_task(ctx, task, None, None, tmp_path / "layer-pooled" / "y")
    assert (best["extra"]["layer"], best["extra"]["pooling"]) == (
        study["chosen_on_train"]["layer"], study["chosen_on_train"]["pooling"])
    task.y_test[:] = task.y_test[::-1].copy()
    again = METHODS["ridge_best_layer"].run(ctx, task, 0)
    np.testing.assert_array_equal(again["y_pred"], best["y_pred"])
