"""Every kind of fitted regressor survives pickle, joblib and save/load.

One round trip per (kind of model, format): the same predictions, intervals,
parameters and fitted attributes afterwards, and the files ``save`` writes.
"""

import pickle

import joblib
import numpy as np
import pandas as pd
import pytest

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor

# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, latent_dim=16, n_heads=2, batch_size=16, random_state=0, max_epochs=3,
            cache_dir=None)
X, Y = sentiment_task(260, seed=41)
TABLE = pd.DataFrame({"review": X, "price": np.linspace(1, 50, len(X)),
                      "note": [None if i % 7 == 0 else "ok" for i in range(len(X))]})

KINDS = {
    # name: (parameters, X, y)
    "default": (dict(), X, Y),
    "paper-head": (dict(layer=-1, anchor=None, early_stopping=False, shrinkage=None,
                        cv=None), X, Y),
    "multi-output": (dict(), X, np.column_stack([Y, -2 * Y])),
    "table": (dict(prompt_template="{review} at {price:.0f} ({note})", missing="unknown"),
              TABLE, Y),
    "learned-layers": (dict(layer="all", layer_mix="learned"), X, Y),
    "cross-fitted": (dict(cv=3), X, Y),
    "int8-states": (dict(state_storage="int8"), X, Y),
    "lora": (dict(backbone_tuning="lora", max_epochs=1), X[:60], Y[:60]),
}
FILES = {"lora": ["adapters.safetensors", "config.json", "head.safetensors"]}


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    out = {}
    for name, (params, X_fit, y_fit) in KINDS.items():
        out[name] = RelishRegressor(backbone=tiny_model_dir, **{**FAST, **params}).fit(
            X_fit, y_fit)
    return out


def _round_trip(model, kind, how, tmp_path):
    if how == "pickle":
        return pickle.loads(pickle.dumps(model))
    if how == "joblib":
        joblib.dump(model, tmp_path / "model.joblib")
        return joblib.load(tmp_path / "model.joblib")
    path = model.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == FILES.get(
        kind, ["config.json", "head.safetensors"])
    return RelishRegressor.load(path)


@pytest.mark.parametrize("how", ["pickle", "joblib", "save"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_round_trip_keeps_the_model(models, kind, how, tmp_path):
    model = models[kind]
    _, X_fit, _ = KINDS[kind]
    new = X_fit[200:220] if kind != "lora" else X[200:220]
    restored = _round_trip(model, kind, how, tmp_path)
    if kind == "lora":
        assert restored.lora_adapters_._merged is None       # rebuilt on first use
    np.testing.assert_array_equal(restored.predict(new), model.predict(new))
    assert restored.get_params() == model.get_params()
    for name in ("loss_curve_", "n_iter_", "n_outputs_", "n_features_in_", "prompt_template_",
                 "anchor_pooling_", "backbone_fingerprint_", "d_model_"):
        assert getattr(restored, name) == getattr(model, name), name
    for name in ("shrinkage_", "anchor_alpha_", "anchor_scale_"):
        expected = getattr(model, name)
        if expected is None:
            assert getattr(restored, name) is None
        else:
            np.testing.assert_array_equal(getattr(restored, name), expected)
    if model.calibration_ is not None:
        np.testing.assert_allclose(restored.predict_interval(new, alpha=[0.2, 0.05]),
                                   model.predict_interval(new, alpha=[0.2, 0.05]),
                                   rtol=1e-6, atol=1e-6)
    if kind == "table":
        # Only the columns the template reads are needed, in any order.
        np.testing.assert_array_equal(restored.predict(new[["price", "note", "review"]]),
                                      model.predict(new))
