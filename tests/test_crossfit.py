"""Cross-fitting the head (cv=K): out-of-fold predictions for every row."""

import numpy as np
import pytest

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish import fitting
from sklearn_relish.anchor import stack_weights
from sklearn_relish.training import RelishNet

FAST = dict(latent_dim=32, n_heads=4, batch_size=16, random_state=0, cache_dir=None,
            lr=3e-3, max_epochs=6)


@pytest.fixture(scope="module")
def task():
    """Distinct texts: duplicates share one tensor, which the spy tells rows by."""
    X, y = sentiment_task(200, seed=5)
    _, first = np.unique(X, return_index=True)
    first = np.sort(first)[:150]
    return [X[i] for i in first], y[first]


@pytest.fixture
def spy(monkeypatch):
    """Every head training: the texts it trained on, those it validated on
    and the epochs asked for; and the arrays the gate weighed."""
    fits, gates = [], []
    fit = RelishNet.fit

    def record_fit(self, X, y=None, **params):
        valid = self.train_split.keywords["valid_ds"] if self.train_split else None
        fits.append({"train": [s.data_ptr() for s in X.states],
                     "valid": None if valid is None else [s.data_ptr() for s in valid.states],
                     "epochs": params.get("epochs")})
        result = fit(self, X, y, **params)
        fits[-1]["history"] = list(self.history[:, "train_loss"])
        return result

    def record_gate(anchor, head, target, sample_weight=None):
        gates.append((anchor, head, target))
        return stack_weights(anchor, head, target, sample_weight)

    monkeypatch.setattr(RelishNet, "fit", record_fit)
    monkeypatch.setattr(fitting, "stack_weights", record_gate)
    return fits, gates


def test_each_row_is_predicted_once_by_a_head_that_never_saw_it(tiny_model_dir, task, spy):
    fits, gates = spy
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, cv=3, **FAST).fit(X, y)
    # Three fold heads, then the final head.
    assert len(fits) == 4
    folds, final = fits[:3], fits[3]
    every = set(final["train"])
    assert final["valid"] is None and len(final["train"]) == len(X)
    seen = []
    for fold in folds:
        assert not set(fold["valid"]) & set(fold["train"])          # out of fold
        assert set(fold["valid"]) | set(fold["train"]) == every
        seen += fold["valid"]
    assert sorted(seen) == sorted(final["train"])                  # every row once
    # The gate weighed every row, not a tenth of them.
    (anchor, head, target), = gates
    assert len(anchor) == len(head) == len(target) == len(X)
    # The final head ran the median of the folds' best epochs.
    assert final["epochs"] == reg.n_iter_ == len(final["history"])
    assert 1 <= reg.n_iter_ <= FAST["max_epochs"]


def test_cv_none_holds_out_a_tenth_and_trains_once(tiny_model_dir, task, spy):
    fits, gates = spy
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, early_stopping=True, cv=None, **FAST)
    reg.fit(X, y)
    assert len(fits) == 1 and len(fits[0]["valid"]) == 15
    assert len(gates[0][0]) == 15
    assert reg.n_folds_ is None


def test_the_default_cross_fits_while_a_hold_out_would_be_small(tiny_model_dir, task, spy):
    """cv="auto": five folds while the hold-out would have fewer than 200
    rows (150 rows here: 15), every row weighed by the gate."""
    fits, gates = spy
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, **FAST).fit(X, y)
    assert reg.cv == "auto" and reg.n_folds_ == 5
    assert len(fits) == 6 and [len(f["valid"]) for f in fits[:5]] == [30] * 5
    assert len(gates[0][0]) == len(X)


def test_the_default_holds_out_once_the_hold_out_is_large(tiny_model_dir, spy):
    """At 200 held-out rows (the default fraction from 2,000 rows; here a
    larger fraction of 260) the hold-out has the power: one head fit."""
    fits, gates = spy
    X, y = sentiment_task(260, seed=8)
    reg = RelishRegressor(backbone=tiny_model_dir, validation_fraction=0.77, **FAST).fit(X, y)
    assert reg.n_folds_ is None and len(fits) == 1 and len(fits[0]["valid"]) == 201
    reg.set_params(validation_fraction=0.76)            # 198 rows: cross-fitted again
    fits.clear()
    assert reg.fit(X, y).n_folds_ == 5 and len(fits) == 6


def test_the_default_continues_a_warm_start_with_a_hold_out(tiny_model_dir, task, spy):
    """cv="auto" never cross-fits what it cannot: a warm-start continuation
    trains the fitted head once."""
    fits, _ = spy
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, **FAST).fit(X, y)
    assert reg.n_folds_ == 5
    before = reg.n_iter_
    fits.clear()
    reg.set_params(warm_start=True).fit(X, y)
    assert reg.n_folds_ is None and len(fits) == 0       # partial_fit, not fit
    # 15 rows would be held out: too few, so the continuation trains on
    # every row for max_epochs more epochs.
    assert reg.n_iter_ == before + FAST["max_epochs"]


def test_cross_fitting_is_repeatable_and_calibrated(tiny_model_dir):
    X, y = sentiment_task(260, seed=8)
    make = lambda: RelishRegressor(backbone=tiny_model_dir, cv=4, **FAST)  # noqa: E731
    first, second = make().fit(X[:200], y[:200]), make().fit(X[:200], y[:200])
    np.testing.assert_array_equal(first.predict(X[200:]), second.predict(X[200:]))
    intervals = first.predict_interval(X[200:], alpha=0.2)
    covered = np.mean((intervals[:, 0] <= y[200:]) & (y[200:] <= intervals[:, 1]))
    assert covered >= 0.65
    assert first.calibration_ is not None and first.validation_loss_curve_ is None


@pytest.mark.parametrize("params, message", [
    (dict(cv=3, backbone_tuning="lora", anchor=None), "cannot train LoRA"),
    (dict(cv=40), "at least 2 rows"),
    (dict(cv=1), "cv"),
])
def test_cross_fitting_refuses_what_it_cannot_do(tiny_model_dir, task, params, message):
    X, y = task
    with pytest.raises(ValueError, match=message):
        RelishRegressor(backbone=tiny_model_dir, **{**FAST, **params}).fit(X[:60], y[:60])


def test_cross_fitting_does_not_continue_a_warm_start(tiny_model_dir, task):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, **FAST).fit(X, y)
    reg.set_params(warm_start=True, cv=3)
    with pytest.raises(ValueError, match="continue a fitted head"):
        reg.fit(X, y)


def test_cross_fitted_gate_has_the_power_a_tenth_lacks():
    """The gate's test on every row passes a head with a real, modest gain
    far more often than on a tenth of the rows."""
    rng = np.random.default_rng(0)

    def passes(n):
        anchor = rng.normal(size=(n, 1))
        head = anchor + rng.normal(size=(n, 1))
        target = anchor + 0.25 * (head - anchor) + rng.normal(size=(n, 1))
        return stack_weights(anchor, head, target)[1][0] > 0

    tenth = np.mean([passes(100) for _ in range(200)])
    every = np.mean([passes(1000) for _ in range(200)])
    assert every > 0.95 and tenth < 0.8
