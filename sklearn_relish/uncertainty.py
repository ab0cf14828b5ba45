"""Calibrated uncertainty: normalised split-conformal intervals and a std.

What ``RelishRegressor.predict(X, return_std=True)`` and
``RelishRegressor.predict_interval`` read. Fitted at the end of ``fit`` from
what the fit already has, so it costs two closed-form ridges and no extra
head training:

- **Calibration rows**: the ~10% of the training rows that ``early_stopping``
  holds out. The head never trained on them, and their prediction here is
  the one made *before* the anchor ridge is refitted on every row (the
  ridge of the other 90%), so their residuals are out of sample for every
  fitted weight. They did choose the stopping epoch and the blend weight
  ``shrinkage_`` (two numbers per target), so they are not entirely fresh;
  the final model also has a ridge refitted on all rows, so it is, if
  anything, a little better than the residuals say (intervals err wide).
- **Difficulty**: a ridge on the pooled states (as the anchor, pooling and
  penalty chosen by exact leave-one-out error) fitted to the absolute
  *leave-one-out* residuals of the anchor ridge on the *other* 90% of the
  rows. It estimates, per input, how far off a prediction from these states
  tends to be, using no calibration row, so the calibration rows stay
  exchangeable with new rows. Where the states say nothing about the error,
  its leave-one-out penalty goes to the top of the grid and it becomes a
  constant: plain split conformal.
- **Normalised conformal** (Papadopoulos et al. 2008; Lei et al. 2018):
  scores ``s_i = |y_i - f(x_i)| / d(x_i)`` on the calibration rows; the
  ``1 - alpha`` interval is ``f(x) ± q * d(x)``, ``q`` the
  ``ceil((n + 1)(1 - alpha))``-th smallest score. With exchangeable rows
  this covers a new row's target with probability at least ``1 - alpha``
  (marginally, over rows; not for every input), whatever the model.
- **std**: ``d(x) * sqrt(mean(s_i^2))``: the predicted root-mean-square
  error at ``x``, scaled so that squared residuals over std² average 1 on
  the calibration rows. For Gaussian errors ``mean ± z * std`` is the
  interval; the intervals themselves use the conformal quantiles of the
  scores, so they keep their coverage when the errors are heavy tailed.

Everything is per target and in standardised target units here; the
estimator maps it back to the target's scale.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from numbers import Real

import numpy as np

from .anchor import ALPHAS, fit_anchor, linear_predict, pooled_features
from .streaming import RowBlocks, take

__all__ = ["Calibration", "fit_calibration", "conformal_quantile", "predict_with_spread",
           "check_alpha"]

#: The difficulty estimate is kept above this share of the mean absolute
#: training residual, so that an input the ridge calls easy cannot get a
#: width near 0 (and one such calibration row cannot blow up every width).
_FLOOR = 0.1


@dataclass
class Calibration:
    """The fitted uncertainty model of a :class:`RelishRegressor`.

    In standardised target units (the estimator's ``(y - mean) / scale``).

    Attributes
    ----------
    difficulty_coef : ndarray of shape (n_outputs, 2 * d_model)
        Ridge on :func:`~sklearn_relish.anchor.pooled_features` predicting the
        absolute error per target.
    difficulty_intercept : ndarray of shape (n_outputs,)
    floor : ndarray of shape (n_outputs,)
        Lower bound of the difficulty.
    scores : ndarray of shape (n_rows, n_outputs)
        Normalised absolute residuals of the calibration rows, each column
        sorted.
    std_factor : ndarray of shape (n_outputs,)
        ``sqrt(mean(scores ** 2))``: difficulty -> std.
    difficulty_pooling : list of str
        Pooled vectors the difficulty ridge reads, per target.
    difficulty_alpha : ndarray of shape (n_outputs,)
        Its penalty (on standardised features); the top of the grid means
        a constant difficulty (plain split conformal).
    """

    difficulty_coef: np.ndarray
    difficulty_intercept: np.ndarray
    floor: np.ndarray
    scores: np.ndarray
    std_factor: np.ndarray
    difficulty_pooling: list
    difficulty_alpha: np.ndarray

    @property
    def n_rows(self):
        """Number of calibration rows."""
        return int(self.scores.shape[0])

    def difficulty(self, features):
        """``d(x)`` per row and target, from pooled features."""
        raw = linear_predict(features, self.difficulty_coef, 0.0)
        return np.maximum(raw + self.difficulty_intercept, self.floor)

    def quantile(self, alpha):
        """Conformal quantile of the scores per target (inf when the
        calibration rows are too few for the level)."""
        return conformal_quantile(self.scores, alpha)

    # persistence: JSON for the small things, tensors for the arrays
    def to_json(self):
        return {"difficulty_pooling": list(self.difficulty_pooling),
                "difficulty_alpha": [float(v) for v in self.difficulty_alpha]}

    def to_arrays(self):
        return {"difficulty_coef": self.difficulty_coef,
                "difficulty_intercept": self.difficulty_intercept,
                "floor": self.floor, "scores": self.scores, "std_factor": self.std_factor}

    @classmethod
    def from_saved(cls, info, arrays):
        return cls(difficulty_pooling=list(info["difficulty_pooling"]),
                   difficulty_alpha=np.asarray(info["difficulty_alpha"], dtype=np.float64),
                   **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})


def conformal_quantile(scores, alpha):
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of each column of
    ``scores`` (sorted), inf when that exceeds ``n``: the split-conformal
    quantile, as MAPIE's ``"higher"`` quantile of level
    ``ceil((n + 1)(1 - alpha)) / n``.

    >>> conformal_quantile(np.arange(1.0, 10.0)[:, None], 0.2)
    array([8.])
    >>> conformal_quantile(np.arange(1.0, 10.0)[:, None], 0.05)
    array([inf])
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
    if k > n:
        return np.full(scores.shape[1], np.inf)
    return scores[max(k, 1) - 1]


def check_alpha(alpha):
    """``alpha`` as a 1-D float array in (0, 1), and whether it was a scalar."""
    scalar = isinstance(alpha, Real) or np.ndim(alpha) == 0
    try:
        values = np.atleast_1d(np.asarray(alpha))
        numeric = values.dtype.kind in "iuf"
        values = values.astype(np.float64)
    except (TypeError, ValueError):
        numeric = False
    if not numeric or values.ndim != 1 or not len(values) or not ((values > 0) & (values < 1)).all():
        raise ValueError(f"alpha={alpha!r} must be a float, or a 1-D sequence of floats, "
                         "strictly between 0 and 1 (the miscoverage: alpha=0.1 gives "
                         "90% intervals).")
    return values, scalar


def fit_calibration(features, target, train_rows, valid_rows, valid_head, head_weight,
                    anchor_weight, anchor=None, train_weight=None, valid_weight=None,
                    alphas=ALPHAS, valid_anchor=None):
    """Fit the difficulty ridge and the conformal scores.

    Parameters
    ----------
    features : ndarray of shape (n_samples, 2 * d_model)
        Pooled features of every training row.
    target : ndarray of shape (n_samples, n_outputs)
        Standardised targets.
    train_rows, valid_rows : ndarray of int
        The rows the head trained on and those held out.
    valid_head : ndarray of shape (n_valid, n_outputs)
        The head's outputs on the held-out rows.
    head_weight, anchor_weight : ndarray of shape (n_outputs,)
        ``shrinkage_`` and the anchor's weight: the held-out rows'
        prediction is ``anchor_weight * anchor(x) + head_weight * head(x)``.
    anchor : RidgeFit or None
        The anchor ridge fitted on ``train_rows`` (None without an anchor;
        a ridge is then fitted here, for the difficulty only).
    train_weight, valid_weight : ndarray or None
        Sample weights of the two parts; a held-out row of weight 0 does
        not calibrate (it has no influence on the fit either). Otherwise
        the scores are unweighted.
    valid_anchor : ndarray of shape (n_valid, n_outputs), optional
        The anchor's predictions of the held-out rows, when they are not
        ``anchor.predict`` of them (cross-fitting: each row predicted by an
        anchor fitted without its fold).

    Returns
    -------
    Calibration
    """
    if not isinstance(features, RowBlocks):
        features = np.asarray(features, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64).reshape(len(features), -1)
    train_x, valid_x = take(features, train_rows), take(features, valid_rows)
    ridge = anchor
    if ridge is None:
        ridge = fit_anchor(train_x, target[train_rows], alphas, train_weight)
    loo_error = np.abs(target[train_rows] - ridge.loo_predictions)
    difficulty = fit_anchor(train_x, loo_error, alphas, train_weight)
    if train_weight is None:
        floor = _FLOOR * loo_error.mean(axis=0)
    else:
        floor = _FLOOR * np.average(loo_error, axis=0, weights=train_weight)
    floor = np.maximum(floor, 1e-12)

    prediction = np.asarray(head_weight) * np.asarray(valid_head, dtype=np.float64)
    if anchor is not None:
        anchored = anchor.predict(valid_x) if valid_anchor is None else valid_anchor
        prediction = prediction + np.asarray(anchor_weight) * anchored
    calibration = Calibration(
        difficulty_coef=difficulty.coef, difficulty_intercept=difficulty.intercept,
        floor=floor, scores=np.zeros((0, target.shape[1])),
        std_factor=np.ones(target.shape[1]), difficulty_pooling=difficulty.pooling,
        difficulty_alpha=difficulty.alpha)
    scores = np.abs(target[valid_rows] - prediction) / calibration.difficulty(valid_x)
    if valid_weight is not None:
        scores = scores[np.asarray(valid_weight) > 0]
    calibration.scores = np.sort(scores, axis=0)
    if len(scores):
        calibration.std_factor = np.sqrt((scores ** 2).mean(axis=0))
    return calibration


def _no_calibration_error(estimator):
    from math import floor

    # "auto" holds rows out once ceil(fraction * n) reaches 20: n > 19 / fraction.
    fraction = estimator.validation_fraction
    n_min = floor(19 / fraction) + 1
    return ValueError(
        f"This {type(estimator).__name__} has no calibration: it held out no rows "
        f"in fit (early_stopping={estimator.early_stopping!r}; 'auto' holds rows out "
        f"only from {n_min} training rows at validation_fraction={fraction}), so it has "
        "no out-of-sample residuals to set uncertainties on. Refit with "
        "early_stopping=True, which holds out validation_fraction of the rows "
        "(at least 19 held-out rows for a 95% interval, 9 for 90%), or with cv='auto' "
        "(the default) or cv=5, which calibrate on every row out of fold.")


def calibration_of(estimator):
    """The estimator's fitted :class:`Calibration`, or a clear error."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator)
    calibration = getattr(estimator, "calibration_", None)
    if calibration is None:
        raise _no_calibration_error(estimator)
    return calibration


def predict_with_spread(estimator, chunks):
    """``(mean, difficulty)`` in standardised units, shape ``(n_samples,
    n_outputs)`` each, in one pass of the head over ``chunks``, the
    ``(rows, token states)`` of the inputs in order (what the estimator's
    ``predict`` reads)."""
    from .training import head_outputs

    calibration = calibration_of(estimator)
    means, spreads = [], []
    for _, states in chunks:
        means.append(head_outputs(estimator.net_, states))
        spreads.append(calibration.difficulty(pooled_features(states)))
    return np.concatenate(means), np.concatenate(spreads), calibration


def predict_std(estimator, chunks, one_d):
    """``(mean, std)`` on the target's scale, shaped like ``predict``
    (``one_d``: the targets were one column, fitted as a 1-D ``y``)."""
    z, spread, calibration = predict_with_spread(estimator, chunks)
    std = spread * calibration.std_factor * estimator.target_scale_
    mean = z * estimator.target_scale_ + estimator.target_mean_
    return (mean.ravel(), std.ravel()) if one_d else (mean, std)


def predict_interval(estimator, chunks, one_d, alpha=0.1):
    """Conformal intervals; see ``RelishRegressor.predict_interval``."""
    alphas, scalar = check_alpha(alpha)
    z, spread, calibration = predict_with_spread(estimator, chunks)
    # (n_levels, n_outputs)
    quantiles = np.stack([calibration.quantile(a) for a in alphas])
    if np.isinf(quantiles).any():
        too_small = sorted({float(a) for a, q in zip(alphas, quantiles) if np.isinf(q).any()})
        warnings.warn(
            f"{calibration.n_rows} calibration rows are too few for alpha={too_small} "
            f"(a level of 1 - alpha needs at least 1/alpha - 1 rows): those intervals "
            "are infinite. Use more training rows or a larger validation_fraction.",
            UserWarning, stacklevel=3)
    mean = z * estimator.target_scale_ + estimator.target_mean_               # (n, k)
    half = spread[:, None, :] * quantiles[None] * estimator.target_scale_  # (n, levels, k)
    bounds = np.stack([mean[:, None, :] - half, mean[:, None, :] + half], axis=1)
    # (n, 2, levels, k) -> (n, 2, k, levels), then drop what the caller did not ask for
    bounds = np.moveaxis(bounds, 2, 3)
    if one_d:
        bounds = bounds[:, :, 0]
    if scalar:
        bounds = bounds[..., 0]
    return bounds
