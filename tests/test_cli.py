"""The command line: ``python -m sklearn_relish fit/predict`` on the tiny backbone."""

import csv

import numpy as np
import pytest

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish.__main__ import main

FAST = ["--param", "max_epochs=1", "--param", "latent_dim=16", "--param", "n_heads=2",
        "--param", "random_state=0", "--param", "cv=none"]


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
    """The prediction columns' header and values (the key columns dropped)."""
    raw = open(path, newline="").read()
    assert "\r" not in raw                     # plain line ends
    rows = list(csv.reader(raw.splitlines()))
    n = sum(name.startswith(("prediction", "predicted_")) for name in rows[0])
    return rows[0][-n:], np.array([row[-n:] for row in rows[1:]], dtype=float)


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


def test_predictions_come_with_the_inputs_or_an_id(tiny_model_dir, table, tmp_path):
    path, _ = table
    model, _, _ = _fit_and_predict(tiny_model_dir, path, tmp_path, "--text", "body",
                                   "--target", "score")
    texts = sentiment_task(30, seed=2)[0]
    out = tmp_path / "with-inputs.csv"
    main(["predict", str(model), str(path), "--out", str(out)])
    rows = list(csv.reader(open(out, newline="")))
    assert rows[0] == ["body", "prediction"] and [r[0] for r in rows[1:]] == texts
    main(["predict", str(model), str(path), "--id", "title", "--out", str(out)])
    rows = list(csv.reader(open(out, newline="")))
    assert rows[0] == ["title", "prediction"] and rows[1][0] == "item 0"


@pytest.mark.parametrize("command, message", [
    (["predict", "{model}", "{missing}"], "no such file"),
    (["predict", "{missing}", "{data}"], "does not exist"),
    (["predict", "{model}", "{data}", "--id", "nope"], "no column 'nope'"),
])
def test_cli_errors_are_one_line_not_tracebacks(tiny_model_dir, table, tmp_path, command,
                                                message):
    path, _ = table
    model, _, _ = _fit_and_predict(tiny_model_dir, path, tmp_path, "--text", "body",
                                   "--target", "score")
    values = {"model": model, "data": path, "missing": tmp_path / "missing.csv"}
    with pytest.raises(SystemExit, match=message):
        main([part.format(**values) for part in command])


def test_help_is_plain_text_and_documents_every_demo_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and "demo" in top and "about 10 minutes" in top
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    import re

    blocks = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    helps = {block.split()[0].rstrip(","): block for block in blocks if block.strip()}
    for option in ("--n-train", "--n-test", "--max-epochs", "--cv", "--seed", "--cache-dir"):
        words = helps[option].split()
        assert len(words) > 4, (option, helps[option])   # option, metavar, then prose


def test_cache_dir_help_names_where_the_cache_is(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("RELISH_STATES_DIR", str(tmp_path / "moved"))
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "moved" in capsys.readouterr().out.replace("\n", "")


def test_the_demo_says_what_was_fitted_in_plain_words(tiny_model_dir):
    from sklearn_relish.__main__ import describe_fit

    X, y = sentiment_task(300, seed=4)
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=3, latent_dim=16, n_heads=2,
                          random_state=0, cache_dir=None, cv=None).fit(X, y)
    text = describe_fit(reg, len(X))
    b = reg.shrinkage_[0]
    assert f"{b:.2f} x head + {1 - b:.2f} x ridge" in text
    assert "trained on 270 rows" in text and "other 30, held out" in text
    # The default at 300 rows cross-fits over five folds.
    crossfit = RelishRegressor(backbone=tiny_model_dir, max_epochs=2, latent_dim=16, n_heads=2,
                               random_state=0, cache_dir=None).fit(X, y)
    text = describe_fit(crossfit, len(X))
    assert "out-of-fold predictions of all 300 rows (5-fold cross-fitting)" in text
