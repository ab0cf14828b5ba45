"""Metrics of one prediction, and their mean and spread over seeds.

NRMSE is RMSE divided by the population standard deviation of ``y_test``
(``np.std``, ddof=0): 1.0 is what predicting the test mean would score, and
lower is better. Pearson and Spearman come from ``scipy.stats``; they are
undefined (reported as None) when a prediction is constant.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["METRICS", "score", "aggregate"]

#: Metric name -> True when higher is better.
METRICS = {"pearson": True, "spearman": True, "nrmse": False, "mae": False}


def _finite(value):
    value = float(value)
    return value if math.isfinite(value) else None


def score(y_true, y_pred):
    """Pearson, Spearman, NRMSE and MAE of one prediction.

    >>> s = score([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    >>> round(s["pearson"], 3), round(s["mae"], 3)
    (0.982, 0.333)
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    err = y_pred - y_true
    rmse = float(np.sqrt(np.mean(err ** 2)))
    constant = np.ptp(y_pred) == 0 or np.ptp(y_true) == 0
    return {
        "pearson": None if constant else _finite(stats.pearsonr(y_true, y_pred)[0]),
        "spearman": None if constant else _finite(stats.spearmanr(y_true, y_pred)[0]),
        "nrmse": _finite(rmse / np.std(y_true)),
        "mae": _finite(np.mean(np.abs(err))),
    }


def aggregate(values):
    """Mean and sample std (ddof=1; 0 for a single run) of the non-None values.

    >>> mean, std = aggregate([0.5, 0.7, None])
    >>> round(mean, 3), round(std, 4)
    (0.6, 0.1414)
    """
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return mean, std
