"""Calibrated uncertainty: predict(return_std=True) and predict_interval."""


import numpy as np
import pytest
from scipy.stats import spearmanr

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish.uncertainty import conformal_quantile

# The default cross-fits 600 rows over five folds: every training row
# calibrates, out of fold, so that the coverage on 400 test rows is near
# nominal within a few points.
FAST = dict(latent_dim=32, n_heads=4, batch_size=16, max_epochs=5, lr=3e-3, random_state=0)
N_TRAIN = 600


def _noisy_task(n=1000, seed=1):
    """The sentiment task with known, input-dependent noise: texts with
    "plot" get a noise std of 1.5, the others 0.2."""
    X, y = sentiment_task(n, seed=seed)
    noisy = np.array(["plot" in t.split() for t in X])
    rng = np.random.default_rng(seed)
    return X, y + rng.normal(size=n) * np.where(noisy, 1.5, 0.2), noisy


@pytest.fixture(scope="module")
def task():
    return _noisy_task()


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, task):
    X, y, _ = task
    return RelishRegressor(backbone=tiny_model_dir, **FAST).fit(X[:N_TRAIN], y[:N_TRAIN])


def _covered(y, bounds):
    return np.mean((y >= bounds[:, 0]) & (y <= bounds[:, 1]))


def test_shapes_and_the_mean_is_predict(fitted, task):
    X, _, _ = task
    test = X[N_TRAIN:N_TRAIN + 7]
    mean, std = fitted.predict(test, return_std=True)
    assert mean.shape == std.shape == (7,)
    np.testing.assert_array_equal(mean, fitted.predict(test))
    assert (std > 0).all()
    assert fitted.predict_interval(test).shape == (7, 2)
    assert fitted.predict_interval(test, alpha=[0.2, 0.1, 0.05]).shape == (7, 2, 3)
    assert fitted.n_folds_ == 5 and fitted.calibration_.n_rows == N_TRAIN


def test_intervals_are_centred_and_widen_with_the_level(fitted, task):
    X, _, _ = task
    test = X[N_TRAIN:N_TRAIN + 50]
    mean = fitted.predict(test)
    bounds = fitted.predict_interval(test, alpha=[0.5, 0.2, 0.1, 0.05])
    np.testing.assert_allclose(bounds.mean(axis=1), mean[:, None] * np.ones(4), atol=1e-9)
    width = bounds[:, 1] - bounds[:, 0]
    assert (width > 0).all()
    assert (np.diff(width, axis=1) >= 0).all()
    assert (np.diff(width.mean(axis=0)) > 0).all()
    # A scalar alpha gives the same bounds as in the sequence.
    np.testing.assert_allclose(fitted.predict_interval(test, alpha=0.1), bounds[:, :, 2])


def test_coverage_near_nominal_on_a_task_with_known_noise(fitted, task):
    X, y, noisy = task
    test, y_test = X[N_TRAIN:], y[N_TRAIN:]
    for alpha in (0.2, 0.1, 0.05):
        covered = _covered(y_test, fitted.predict_interval(test, alpha=alpha))
        assert abs(covered - (1 - alpha)) < 0.06, (alpha, covered)
    mean, std = fitted.predict(test, return_std=True)
    error = np.abs(y_test - mean)
    # The std is the predicted root-mean-square error ...
    assert 0.8 < np.sqrt(np.mean((error / std) ** 2)) < 1.25
    # ... and it knows which inputs are noisy.
    assert spearmanr(std, error)[0] > 0.3
    assert std[noisy[N_TRAIN:]].mean() > 2 * std[~noisy[N_TRAIN:]].mean()


def test_repeatable_with_random_state(tiny_model_dir, task, fitted):
    X, y, _ = task
    test = X[N_TRAIN:N_TRAIN + 20]
    again = RelishRegressor(backbone=tiny_model_dir, **FAST).fit(X[:N_TRAIN], y[:N_TRAIN])
    np.testing.assert_array_equal(again.predict(test, return_std=True)[1],
                                  fitted.predict(test, return_std=True)[1])
    np.testing.assert_array_equal(again.predict_interval(test), fitted.predict_interval(test))
    other = RelishRegressor(backbone=tiny_model_dir, **{**FAST, "random_state": 1}).fit(
        X[:N_TRAIN], y[:N_TRAIN])
    assert not np.array_equal(other.calibration_.scores, fitted.calibration_.scores)


def test_multi_output_is_calibrated_per_target(tiny_model_dir, task):
    X, y, _ = task
    rng = np.random.default_rng(5)
    # The second target: the first one scaled by 10, with more noise.
    Y = np.column_stack([y, 10 * y + rng.normal(size=len(y)) * 5])
    reg = RelishRegressor(backbone=tiny_model_dir, **FAST).fit(X[:N_TRAIN], Y[:N_TRAIN])
    test = X[N_TRAIN:]
    mean, std = reg.predict(test, return_std=True)
    assert mean.shape == std.shape == (len(test), 2)
    bounds = reg.predict_interval(test, alpha=0.1)
    assert bounds.shape == (len(test), 2, 2)
    assert reg.predict_interval(test[:3], alpha=[0.2, 0.1]).shape == (3, 2, 2, 2)
    width = (bounds[:, 1] - bounds[:, 0]).mean(axis=0)
    assert width[1] > 5 * width[0]
    for j in range(2):
        assert abs(_covered(Y[N_TRAIN:, j], bounds[:, :, j]) - 0.9) < 0.06


def test_without_held_out_rows_return_std_names_the_fix(tiny_model_dir, task):
    X, y, _ = task
    reg = RelishRegressor(backbone=tiny_model_dir, **{**FAST, "max_epochs": 1},
                          early_stopping=False, cv=None).fit(X[:60], y[:60])
    assert reg.calibration_ is None
    with pytest.raises(ValueError, match="held out no rows.*early_stopping=True"):
        reg.predict(X[:2], return_std=True)
    with pytest.raises(ValueError, match="early_stopping=True"):
        reg.predict_interval(X[:2])
    assert reg.predict(X[:2]).shape == (2,)


def test_too_few_calibration_rows_give_infinite_bounds_with_a_warning(tiny_model_dir, task):
    X, y, _ = task
    # ceil(0.1 * 60) = 6 held-out rows: enough for 70%, not for 90%.
    reg = RelishRegressor(backbone=tiny_model_dir, early_stopping=True, cv=None,
                          **{**FAST, "max_epochs": 1, "validation_fraction": 0.1}
                          ).fit(X[:60], y[:60])
    assert reg.calibration_.n_rows == 6
    assert np.isfinite(reg.predict_interval(X[:3], alpha=0.3)).all()
    with pytest.warns(UserWarning, match="too few for alpha"):
        bounds = reg.predict_interval(X[:3], alpha=0.1)
    assert np.isinf(bounds).all()


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, [0.1, 2.0], "0.1", [[0.1]]])
def test_alpha_outside_0_1_is_refused(fitted, alpha):
    with pytest.raises((ValueError, TypeError), match="alpha"):
        fitted.predict_interval(["good"], alpha=alpha)


def test_staged_predict_is_unaffected(fitted, task):
    X, _, _ = task
    *_, last = fitted.staged_predict(X[N_TRAIN:N_TRAIN + 10])
    np.testing.assert_allclose(last, fitted.predict(X[N_TRAIN:N_TRAIN + 10]), atol=1e-5)


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1.0, 20.0)[:, None]          # 19 sorted scores
    # ceil(20 * 0.9) = 18th smallest; ceil(20 * 0.95) = 19th; 0.99: too few.
    assert conformal_quantile(scores, 0.1)[0] == 18.0
    assert conformal_quantile(scores, 0.05)[0] == 19.0
    assert np.isinf(conformal_quantile(scores, 0.01)[0])
