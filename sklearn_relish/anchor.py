"""The ridge anchor: a closed-form ridge on pooled token states.

The RELISH head wins by a wide margin where the states carry a strong signal,
but on a weak target ten epochs of a 2.5M-parameter head overfit, and a ridge
on the mean-pooled states (the first thing a data scientist tries) is better.
So by default the head's prediction is pooled with a ridge's,
``(1 - b) * ridge + b * head``, ``b`` fitted on held-out rows
(:func:`stack_weights`, ``RelishRegressor(anchor="stack")``); or the head
learns the ridge's *residual*, the way a boosting stage corrects the stage
before it (``anchor="ridge"``).

This module holds that ridge. It reads, per row, the mean of the token states
and the last token's state (the two pooled vectors of the benchmarks' ridge
baselines), standardises each feature, and chooses the penalty per target by
exact leave-one-out error over a grid, in closed form, as scikit-learn's
``RidgeCV`` does. It also returns the leave-one-out predictions of the
training rows: with ``anchor="ridge"`` the head is trained on the residuals of
those, so it learns
what the ridge misses on *unseen* rows rather than the smaller, overfitted
residuals of the ridge's own training rows (cross-fitting, as in stacking).

Plain numpy and torch, no scikit-learn estimator: the fitted map is folded
into two buffers of :class:`~sklearn_relish.head.RelishHead`, so it travels
with the head's ``state_dict`` (pickle, ``save``/``load``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .streaming import RowBlocks, StreamedStates, pooled_rows, take

__all__ = ["ALPHAS", "GATE_FOLDS", "POOLINGS", "RidgeFit", "crossfit_gain", "fit_anchor",
           "fit_ridge_loo", "fit_shrinkage", "linear_predict", "pooled_features", "pool_states", "stack_weights"]

#: Penalties searched (on standardised features), as the benchmarks' RidgeCV.
ALPHAS = np.logspace(-2, 6, 17)


def pool_states(states, mask):
    """Mean over the real tokens and the last real token, side by side.

    Parameters
    ----------
    states : Tensor of shape (batch, tokens, d_model)
    mask : bool Tensor of shape (batch, tokens), True on real tokens
        Real tokens come first in each row (the head's padding is on the
        right).

    Returns
    -------
    Tensor of shape (batch, 2 * d_model), float64
        In double precision: the anchor's coefficients undo a
        standardisation, so float32 rounding of the sums would be magnified.

    >>> states = torch.tensor([[[1.0], [3.0], [0.0]], [[2.0], [0.0], [0.0]]])
    >>> mask = torch.tensor([[True, True, False], [True, False, False]])
    >>> pool_states(states, mask).tolist()
    [[2.0, 3.0], [2.0, 2.0]]
    """
    mask = mask.to(states.dtype).unsqueeze(-1)
    lengths = mask.sum(1, dtype=torch.float64).clamp_min(1.0)
    mean = (states * mask).sum(1, dtype=torch.float64) / lengths
    last_index = (lengths.squeeze(-1).long() - 1).clamp_min(0)
    last = states[torch.arange(states.shape[0], device=states.device), last_index]
    return torch.cat([mean, last.double()], dim=-1)


def pooled_features(states):
    """:func:`pool_states` of ragged token states, as a float64 array.

    >>> pooled_features([torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0]])]).tolist()
    [[2.0, 3.0], [2.0, 2.0]]

    Streamed states (:class:`~sklearn_relish.streaming.StreamedStates`)
    give the same numbers as :class:`~sklearn_relish.streaming.RowBlocks`,
    kept in a temporary file beside their cache.
    """
    if isinstance(states, StreamedStates):
        return pooled_rows(states, _pooled_row, states.disk.directory)
    return torch.stack([_pooled_row(s) for s in states]).numpy()


def _pooled_row(states):
    """One row's mean and last token's state, side by side, in float64."""
    return torch.cat([states.double().mean(0), states[-1].double()])


@dataclass
class RidgeFit:
    """A ridge fitted by :func:`fit_ridge_loo`, on unstandardised features.

    ``predict(X) = X @ coef.T + intercept``.

    Attributes
    ----------
    coef : ndarray of shape (n_outputs, n_features)
    intercept : ndarray of shape (n_outputs,)
    alpha : ndarray of shape (n_outputs,)
        The penalty chosen per target (on standardised features).
    loo_predictions : ndarray of shape (n_samples, n_outputs)
        Each training row's prediction by the ridge fitted without it.
    loo_mse : ndarray of shape (n_outputs,)
        Mean squared leave-one-out error at the chosen penalty.
    pooling : list of str or None
        Per target, which pooled vectors the ridge reads (:func:`fit_anchor`).
    """

    coef: np.ndarray
    intercept: np.ndarray
    alpha: np.ndarray
    loo_predictions: np.ndarray
    loo_mse: np.ndarray = None
    pooling: list = None

    def predict(self, X):
        return linear_predict(X, self.coef, self.intercept)


def _blocks(X):
    """``(start, rows)`` blocks of a matrix: an array is one block (so
    in-memory fits compute exactly what they always did), a
    :class:`~sklearn_relish.streaming.RowBlocks` its blocks."""
    if isinstance(X, RowBlocks):
        yield from X.blocks()
    else:
        yield 0, X


def linear_predict(X, coef, intercept):
    """``X @ coef.T + intercept``, block by block for
    :class:`~sklearn_relish.streaming.RowBlocks`."""
    if not isinstance(X, RowBlocks):
        return np.asarray(X, dtype=np.float64) @ coef.T + intercept
    out = np.empty((len(X), coef.shape[0]))
    for start, block in X.blocks():
        out[start:start + len(block)] = block @ coef.T + intercept
    return out


def fit_ridge_loo(X, Y, alphas=ALPHAS, sample_weight=None):
    """Ridge on standardised ``X`` with the penalty chosen per target by
    exact leave-one-out error.

    The intercept is not penalised. For ridge regression with an intercept
    the hat matrix is ``1/n + Xc (Xc'Xc + alpha I)^-1 Xc'`` (``Xc`` the
    centred features), so every leave-one-out residual is the training
    residual divided by ``1 - H_ii``: one eigendecomposition of the smaller
    Gram matrix serves every penalty. Features are standardised with the
    training rows' statistics, as ``StandardScaler`` + ``RidgeCV`` would.

    With ``sample_weight``, every sum is weighted (means, standardisation,
    squared errors): the rows are scaled by the square roots of their
    weights, whose hat matrix gives the weighted leave-one-out residuals in
    the same closed form. A row of weight 0 has no influence on the fit;
    its "leave-one-out" prediction is the fit's prediction.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    Y : array-like of shape (n_samples,) or (n_samples, n_outputs)
    alphas : sequence of float
    sample_weight : array-like of shape (n_samples,), optional
        Non-negative; None gives every row the same weight.

    Returns
    -------
    RidgeFit
        With fewer than two rows (of positive weight), the training mean
        (``alpha`` infinite).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(50, 3))
    >>> fit = fit_ridge_loo(X, X @ [1.0, 2.0, 0.0] + 5.0)
    >>> fit.coef.round(2), fit.intercept.round(2)
    (array([[1., 2., 0.]]), array([5.]))
    """
    if not isinstance(X, RowBlocks):
        X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    Y = Y.reshape(len(Y), -1)
    if sample_weight is not None:
        weight = np.asarray(sample_weight, dtype=np.float64)
        positive = weight > 0
        if not positive.all():
            fit = fit_ridge_loo(take(X, np.flatnonzero(positive)), Y[positive], alphas,
                                weight[positive])
            loo = fit.predict(X)
            loo[positive] = fit.loo_predictions
            fit.loo_predictions = loo
            return fit
        if np.all(weight == weight[0]):
            sample_weight = None
    n, p = X.shape
    if n < 2:
        # Nothing to leave out: the mean, which a single row cannot beat.
        mean = Y.mean(axis=0)
        return RidgeFit(coef=np.zeros((Y.shape[1], p)), intercept=mean,
                        alpha=np.full(Y.shape[1], np.inf),
                        loo_predictions=np.repeat(mean[None], n, axis=0),
                        loo_mse=np.full(Y.shape[1], np.inf))
    if n <= p:
        # The n x n Gram matrix: at most p x p numbers, so the rows fit in
        # memory whatever holds them.
        X = np.asarray(X, dtype=np.float64)
    if sample_weight is None:
        weight = np.full(n, 1.0 / n)
        root = np.ones((n, 1))
    else:
        weight = weight / weight.sum()
        root = np.sqrt(weight * n)[:, None]   # rows scaled by sqrt(w), mean w = 1
    # Statistics in passes over blocks of rows (one block for an array).
    x_mean = sum(weight[a:a + len(b)] @ b for a, b in _blocks(X))
    x_scale = np.sqrt(sum(weight[a:a + len(b)] @ (b - x_mean) ** 2 for a, b in _blocks(X)))
    x_scale[x_scale < 1e-12] = 1.0

    def standardised(start, block):
        return (block - x_mean) / x_scale * root[start:start + len(block)]

    y_mean = weight @ Y
    Yc = (Y - y_mean) * root
    alphas = np.asarray(alphas, dtype=np.float64)

    if n > p:
        # Xs'Xs = V diag(lam) V'; with A = Xs V, H_c = A diag(1/(lam+a)) A'.
        gram, XtY = np.zeros((p, p)), np.zeros((p, Y.shape[1]))
        for start, block in _blocks(X):
            Xs = standardised(start, block)
            gram += Xs.T @ Xs
            XtY += Xs.T @ Yc[start:start + len(block)]
            del block, Xs                     # before the next block is read
        lam, V = np.linalg.eigh(gram)
        lam = np.clip(lam, 0.0, None)
        AtY = V.T @ XtY  # (p, k)

        def hat_parts():
            for start, block in _blocks(X):
                A = standardised(start, block) @ V
                yield start, A, A * A
        dual = None
    else:
        # Xs Xs' = U diag(lam) U'; H_c = U diag(lam/(lam+a)) U'.
        Xs = standardised(0, X)
        lam, U = np.linalg.eigh(Xs @ Xs.T)
        lam = np.clip(lam, 0.0, None)
        UtY = U.T @ Yc
        dual = Xs

        def hat_parts():
            yield 0, U, U * U

    # Every penalty's leave-one-out residuals, in one more pass; the best
    # penalty per target is known once every row is in.
    loo = np.empty((len(alphas), n, Y.shape[1]))
    err = np.zeros((len(alphas), Y.shape[1]))
    for start, A, A2 in hat_parts():
        rows = slice(start, start + len(A))
        for a, alpha in enumerate(alphas):
            if dual is None:
                shrink = 1.0 / (lam + alpha)
                fitted = A @ (shrink[:, None] * AtY)
            else:
                shrink = lam / (lam + alpha)
                fitted = A @ (shrink[:, None] * UtY)
            hat = A2 @ shrink + weight[rows]      # + the intercept's leverage, w_i / sum(w)
            residual = (Yc[rows] - fitted) / np.clip(1.0 - hat, 1e-12, None)[:, None]
            err[a] += (residual ** 2).sum(axis=0)  # weighted: the rows carry sqrt(w)
            loo[a, rows] = Y[rows] - residual / root[rows]
        del A, A2                                 # before the next block is read
    err /= n
    best = np.argmin(err, axis=0)                   # the first of equal errors, as before
    best_alpha = alphas[best]
    best_err = err[best, np.arange(Y.shape[1])]
    best_loo = loo[best, :, np.arange(Y.shape[1])].T

    coef = np.empty((Y.shape[1], p))
    for j, alpha in enumerate(best_alpha):
        if dual is None:
            coef_s = V @ (AtY[:, j] / (lam + alpha))
        else:
            coef_s = dual.T @ (U @ (UtY[:, j] / (lam + alpha)))   # Xs carries sqrt(w)
        coef[j] = coef_s / x_scale
    intercept = y_mean - coef @ x_mean
    return RidgeFit(coef=coef, intercept=intercept, alpha=best_alpha,
                    loo_predictions=best_loo, loo_mse=best_err)


def _unit_mean_weights(sample_weight, n):
    """Row weights scaled to a mean of 1 (all ones when None)."""
    if sample_weight is None:
        return np.ones(n)
    weight = np.asarray(sample_weight, dtype=np.float64).reshape(n)
    return weight / max(weight.mean(), 1e-300)


#: The pooled vectors an anchor may read, as column ranges of
#: :func:`pooled_features` in units of d_model.
POOLINGS = {"mean": (0, 1), "last": (1, 2), "mean+last": (0, 2)}


def fit_anchor(features, Y, alphas=ALPHAS, sample_weight=None, layers=None):
    """The ridge anchor: per target, the ridge on the mean-pooled state, the
    last token's state or both, chosen by leave-one-out error.

    The mean carries more of some targets, the last token (which has read
    the whole prompt in a decoder) more of others, and neither is known in
    advance. Leave-one-out error, exact and free for a ridge, chooses, as it
    chooses the penalty: the better of the two single poolings, and both
    side by side only when that lowers the error by more than one standard
    error of the difference (the one-standard-error rule for nested models:
    twice the features, twice the room to fit the noise of the choice).

    With states of several layers side by side (a learned layer mix), the
    same leave-one-out error also chooses which states are pooled: each
    layer's, or their mean (what ``layer_mix="mean"`` would read).

    Parameters
    ----------
    features : ndarray of shape (n_samples, 2 * width)
        :func:`pooled_features` (``width`` = ``n_layers * d_model``).
    Y : array-like of shape (n_samples,) or (n_samples, n_outputs)
    alphas : sequence of float
    sample_weight : array-like of shape (n_samples,), optional
        Weighs the ridges' sums and the errors that choose among them.
    layers : sequence of int, optional
        The hidden-state indices of the layers side by side in the states
        (their names in ``pooling``); None: one layer.

    Returns
    -------
    RidgeFit
        Its ``coef`` spans all ``2 * width`` columns (zero on those a
        target's ridge does not read); ``pooling`` names the choice
        (``"mean"``, ``"last"`` or ``"mean+last"``, followed by
        ``" of layer k"`` or ``" of the layers' mean"`` for several layers).
    """
    if not isinstance(features, RowBlocks):
        features = np.asarray(features, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64).reshape(len(features), -1)
    n_layers = 1 if layers is None else len(layers)
    width = features.shape[1] // 2
    d_model = width // n_layers
    # The states a ridge may read: each layer's, and for several their mean
    # (each a map from the pooled features, and back for the coefficients).
    views = {"": list(range(n_layers))} if n_layers == 1 else {
        " of the layers' mean": list(range(n_layers)),
        **{f" of layer {index}": [j] for j, index in enumerate(layers)}}

    def view_of(rows, blocks, pooling):
        parts = []
        for part in _POOLING_PARTS[pooling]:
            offset = part * width
            parts.append(sum(rows[:, offset + j * d_model:offset + (j + 1) * d_model]
                             for j in blocks) / len(blocks))
        return np.hstack(parts)

    def view_features(blocks, pooling):
        if isinstance(features, RowBlocks):
            return features.columns(lambda rows: view_of(rows, blocks, pooling),
                                    len(_POOLING_PARTS[pooling]) * d_model)
        return view_of(features, blocks, pooling)

    def view_coef(blocks, pooling, coef):
        full = np.zeros(2 * width)
        for k, part in enumerate(_POOLING_PARTS[pooling]):
            offset = part * width
            for j in blocks:
                full[offset + j * d_model:offset + (j + 1) * d_model] = (
                    coef[k * d_model:(k + 1) * d_model] / len(blocks))
        return full

    singles = {(view, pooling): fit_ridge_loo(view_features(blocks, pooling), Y, alphas,
                                              sample_weight)
               for view, blocks in views.items() for pooling in ("mean", "last")}
    weight = _unit_mean_weights(sample_weight, len(Y))
    n_outputs = Y.shape[1]
    coef = np.zeros((n_outputs, features.shape[1]))
    intercept, alpha, mse = np.zeros(n_outputs), np.zeros(n_outputs), np.zeros(n_outputs)
    loo = np.zeros_like(Y)
    pooling = []
    both_fits = {}
    for j in range(n_outputs):
        view, name = min(singles, key=lambda k: singles[k].loo_mse[j])
        fit = singles[view, name]
        if len(Y) > 2:
            if view not in both_fits:
                both_fits[view] = fit_ridge_loo(view_features(views[view], "mean+last"), Y,
                                                alphas, sample_weight)
            single = (Y[:, j] - fit.loo_predictions[:, j]) ** 2
            both = (Y[:, j] - both_fits[view].loo_predictions[:, j]) ** 2
            gain = (single - both) * weight
            if gain.mean() > gain.std(ddof=1) / np.sqrt(len(gain)):
                name, fit = "mean+last", both_fits[view]
        coef[j] = view_coef(views[view], name, fit.coef[j])
        intercept[j], alpha[j], mse[j] = fit.intercept[j], fit.alpha[j], fit.loo_mse[j]
        loo[:, j] = fit.loo_predictions[:, j]
        pooling.append(name + view)
    return RidgeFit(coef=coef, intercept=intercept, alpha=alpha, loo_predictions=loo,
                    loo_mse=mse, pooling=pooling)


#: Which halves of :func:`pooled_features` (0 the means, 1 the last tokens)
#: each pooling reads.
_POOLING_PARTS = {"mean": (0,), "last": (1,), "mean+last": (0, 1)}


def fit_shrinkage(head, residual, sample_weight=None):
    """The factor in [0, 1] on the head's output, fitted per target on
    held-out rows: least squares, shrunk by its own uncertainty.

    The least-squares factor ``s = <h, r> / <h, h>`` is an estimate from a
    few hundred rows, and the same rows chose the stopping epoch, so a head
    whose correction only looks useful there would keep part of it. The
    factor is therefore multiplied by ``max(0, 1 - se^2 / s^2)`` (``se`` its
    standard error): the positive-part James-Stein rule, which keeps a
    clearly useful correction (``s`` many standard errors from 0) almost
    whole and drops one that the held-out rows cannot tell from zero. A
    factor above 1 (an under-confident head) is cut to 1. With
    ``sample_weight``, the sums are weighted (weights scaled to mean 1).

    >>> h = np.array([[1.0], [-1.0], [2.0], [0.5]])
    >>> fit_shrinkage(h, 0.5 * h), fit_shrinkage(h, -h), fit_shrinkage(h, 3 * h)
    (array([0.5]), array([0.]), array([1.]))
    >>> fit_shrinkage(h, 0.5 * h + [[0.3], [-0.2], [0.1], [0.4]]).round(3)
    array([0.63])
    """
    head = np.asarray(head, dtype=np.float64)
    residual = np.asarray(residual, dtype=np.float64)
    n = len(head)
    weight = _unit_mean_weights(sample_weight, n)[:, None]
    denominator = (weight * head * head).sum(axis=0)
    safe = np.where(denominator > 0, denominator, 1.0)
    factor = np.where(denominator > 0, (weight * head * residual).sum(axis=0) / safe, 0.0)
    noise = (weight * (residual - factor * head) ** 2).sum(axis=0) / max(n - 1, 1)
    variance = noise / safe
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = np.where(factor != 0, 1.0 - variance / (factor * factor), 0.0)
    return np.clip(factor * np.clip(keep, 0.0, 1.0), 0.0, 1.0)


#: Folds of the held-out rows over which :func:`stack_weights` measures the
#: head's gain out of fold.
GATE_FOLDS = 5


def crossfit_gain(departure, error, sample_weight=None, n_folds=GATE_FOLDS):
    """Per-row gain in squared error of the factor ``b`` on ``departure``,
    each row's ``b`` fitted (:func:`fit_shrinkage`) without its fold.

    The gain of a ``b`` fitted on the same rows is optimistic: ``b`` is
    chosen to make it large, so a head with nothing to add still shows a
    positive gain about as often as not. Fitted on the other folds, ``b``
    meets each row as it meets a new one. Row ``i`` is in fold
    ``i % n_folds`` (the held-out rows are already in a random order, or a
    length order of random rows).

    Parameters
    ----------
    departure, error : ndarray of shape (n_samples, n_outputs)
        ``h - g`` and ``y - g``: the head's departure from the anchor and
        the anchor's error.
    sample_weight : ndarray of shape (n_samples,), optional
    n_folds : int

    Returns
    -------
    ndarray of shape (n_samples, n_outputs)
        ``error**2 - (error - b_(-i) * departure)**2``, unweighted.

    >>> d = np.array([[1.0], [-1.0], [2.0], [0.5], [1.5], [-2.0]])
    >>> crossfit_gain(d, 0.5 * d, n_folds=3).round(3).ravel().tolist()
    [0.25, 0.25, 1.0, 0.062, 0.562, 1.0]
    """
    n = len(error)
    n_folds = max(2, min(int(n_folds), n))
    folds = np.arange(n) % n_folds
    weight = _unit_mean_weights(sample_weight, n)
    gain = np.empty_like(error)
    for k in range(n_folds):
        out = folds == k
        b = fit_shrinkage(departure[~out], error[~out], weight[~out])
        gain[out] = error[out] ** 2 - (error[out] - b * departure[out]) ** 2
    return gain


def stack_weights(anchor, head, target, sample_weight=None):
    """Weights ``(1 - b, b)`` of the anchor's and the head's predictions on
    held-out rows, per target: a convex combination (stacking).

    ``b`` is :func:`fit_shrinkage` of the head's departure from the anchor,
    ``h - g``, against the anchor's error, ``y - g``: least squares in
    [0, 1], shrunk by its own standard error. The head then enters only
    when it lowers the held-out squared error by more than one standard
    error of that gain (the one-standard-error rule for nested models, as
    :func:`fit_anchor` uses for its pooling: ``b = 0`` is the ridge, the
    simpler model). The gain is measured out of fold
    (:func:`crossfit_gain`): on rows that the ``b`` applied to them was not
    fitted on, so that the fit of ``b`` cannot pass its own test. A head the
    held-out rows cannot tell from the ridge gets ``b = 0``, and the
    prediction is the ridge itself, not a rescaled one (the ridge's scale
    is already set by its leave-one-out fit on every training row).

    Returns
    -------
    anchor_weight, head_weight : ndarray of shape (n_outputs,)

    >>> g = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    >>> h = np.array([[2.0], [1.0], [4.0], [3.0], [6.0], [5.0]])
    >>> [w.round(3) for w in stack_weights(g, h, 0.7 * g + 0.3 * h)]
    [array([0.7]), array([0.3])]
    """
    anchor, head, target = (np.asarray(v, dtype=np.float64).reshape(len(v), -1)
                            for v in (anchor, head, target))
    departure, error = head - anchor, target - anchor
    b = fit_shrinkage(departure, error, sample_weight)
    n = len(target)
    if n > 2:
        weight = _unit_mean_weights(sample_weight, n)[:, None]
        gain = weight * crossfit_gain(departure, error, sample_weight)
        standard_error = gain.std(axis=0, ddof=1) / np.sqrt(n)
        b = np.where(gain.mean(axis=0) > standard_error, b, 0.0)
    return 1.0 - b, b
