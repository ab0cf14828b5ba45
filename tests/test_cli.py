"""The command line: ``python -m sklearn_relish fit/predict`` on the tiny backbone."""

import csv

import numpy as np
import pytest

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish.__main__ import main

FAST = ["--param", "max_epochs=1", "--param", "latent_dim=16", "--param", "n_heads=2",
        "--param", "random_state=0"]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    texts, y = sentiment_task(30, seed=2)
    path = tmp_path_factory.mktemp("cli") / "train.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["title", "body", "score", "other"])
        for i, (text, value) in enumerate(zip(texts, y)):
            writer.writerow([f"item {i}", text, value, -value])
    return path, y


def _fit_and_predict(model_dir, path, tmp_path, *columns):
    """``fit`` with the given --text/--target arguments, then ``predict``
    with no column named; the written CSV's header and values."""
    model = tmp_path / "model"
    main(["fit", str(path), *columns, "--backbone", model_dir, "--out", str(model), *FAST])
    out = tmp_path / "pred.csv"
    main(["predict", str(model), str(path), "--out", str(out)])      # the README's example
    return model, *_read(out)


def _read(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], np.array(rows[1:], dtype=float)


def test_fit_then_predict_without_naming_the_columns_again(tiny_model_dir, table, tmp_path):
    path, y = table
    model, header, pred = _fit_and_predict(tiny_model_dir, path, tmp_path, "--text", "title",
                                           "--text", "body", "--target", "score")
    assert header == ["prediction"] and pred.shape == (30, 1)
    loaded = RelishRegressor.load(model)
    X = np.array([[f"item {i}", t] for i, t in enumerate(sentiment_task(30, seed=2)[0])],
                 dtype=object)
    np.testing.assert_allclose(pred[:, 0], loaded.predict(X), rtol=1e-5, atol=1e-5)


def test_several_targets_are_all_written(tiny_model_dir, table, tmp_path):
    path, _ = table
    _, header, pred = _fit_and_predict(tiny_model_dir, path, tmp_path, "--text", "body",
                                       "--target", "score", "--target", "other")
    assert header == ["predicted_score", "predicted_other"] and pred.shape == (30, 2)


def test_backbone_given_twice(tiny_model_dir, table, tmp_path):
    path, _ = table
    with pytest.raises(SystemExit, match="backbone is given twice"):
        main(["fit", str(path), "--text", "body", "--target", "score", "--backbone",
              tiny_model_dir, "--param", f"backbone={tiny_model_dir}", "--out",
              str(tmp_path / "m")])
    # Through --param alone it is fine.
    main(["fit", str(path), "--text", "body", "--target", "score", "--param",
          f"backbone={tiny_model_dir}", "--out", str(tmp_path / "m"), *FAST])
    assert RelishRegressor.load(tmp_path / "m").backbone == tiny_model_dir


def test_unknown_parameter(tiny_model_dir, table, tmp_path):
    path, _ = table
    with pytest.raises(SystemExit, match="--param.*no_such_thing"):
        main(["fit", str(path), "--text", "body", "--target", "score", "--backbone",
              tiny_model_dir, "--param", "no_such_thing=3", "--out", str(tmp_path / "m")])


def test_predict_with_a_model_that_records_no_columns(tiny_model_dir, table, tmp_path):
    path, y = table
    texts = sentiment_task(30, seed=2)[0]
    model = RelishRegressor(backbone=tiny_model_dir, max_epochs=1, latent_dim=16, n_heads=2,
                            random_state=0).fit(texts, y).save(tmp_path / "plain")
    with pytest.raises(SystemExit, match="give them with --text"):
        main(["predict", str(model), str(path)])
    out = tmp_path / "pred.csv"
    main(["predict", str(model), str(path), "--text", "body", "--out", str(out)])
    assert _read(out)[1].shape == (30, 1)


def test_predict_writes_every_target_of_a_model_fitted_in_python(tiny_model_dir, table,
                                                                 tmp_path):
    """``predict --text`` on a two-target model saved from Python writes both
    columns (it wrote only the first)."""
    path, y = table
    texts = sentiment_task(30, seed=2)[0]
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=1, latent_dim=16, n_heads=2,
                          random_state=0).fit(texts, np.column_stack([y, -y]))
    model = reg.save(tmp_path / "two")
    out = tmp_path / "pred.csv"
    main(["predict", str(model), str(path), "--text", "body", "--out", str(out)])
    header, pred = _read(out)
    assert header == ["prediction_0", "prediction_1"] and pred.shape == (30, 2)
    np.testing.assert_allclose(pred, reg.predict(texts), rtol=1e-5, atol=1e-5)
