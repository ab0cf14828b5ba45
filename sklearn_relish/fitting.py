"""Fit's stages, as functions: what ``RelishRegressor.fit`` runs, in order.

``fit`` validates its inputs and gets the token states (``inputs``,
``backbone``, ``cache``), then calls these stages:

1. :func:`scale_target`: standardise the targets (weighted when rows are);
2. :func:`n_folds` and :func:`n_validation_rows`: cross-fit the head over
   folds (``cv``) or hold one share of the rows out (``early_stopping``);
3. :func:`fit_holdout` or :func:`fit_crossfit`: the ridge anchor
   (:mod:`sklearn_relish.anchor`), the head's training (:func:`head_net`,
   :mod:`sklearn_relish.training`; LoRA through :mod:`sklearn_relish.lora`),
   the head's weight against the anchor (``stack_weights``), the
   calibration (:mod:`sklearn_relish.uncertainty`), and the final anchor
   folded into the head's buffers (:func:`fold_anchor`).

Each returns a :class:`FittedHead`, which ``fit`` copies into the
estimator's public ``*_`` attributes all at once (an error or interrupt in
a stage leaves the previous fit intact). The stages read the estimator's
settings from ``settings``: any object with ``RelishRegressor``'s
parameters as attributes (the estimator itself, or one rebuilt by
:mod:`sklearn_relish.persistence`); they never read or write its fitted
state.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from .anchor import ALPHAS, fit_anchor, fit_shrinkage, pooled_features, stack_weights
from .head import token_state_statistics
from .streaming import take
from .training import TokenStateDataset, build_net, head_outputs, length_order
from .uncertainty import fit_calibration

__all__ = ["FittedHead", "anchor_mode", "fit_crossfit", "fit_holdout", "fit_seed",
           "fold_anchor", "head_net", "holdout_rows", "holdout_split", "n_folds", "n_validation_rows",
           "scale_target"]

#: ``early_stopping="auto"`` holds rows out when at least this many would be
#: held out: fewer make the stopping epoch and the shrinkage noise.
AUTO_MIN_VALIDATION_ROWS = 20
#: ``cv="auto"`` cross-fits over this many folds while a
#: ``validation_fraction`` hold-out would have fewer rows than
#: :data:`AUTO_CV_MAX_HOLDOUT`.
AUTO_CV_FOLDS = 5
AUTO_CV_MAX_HOLDOUT = 200


def clone_callback(callback):
    """A fresh copy of a skorch callback (or ``(name, callback)`` pair), so
    that fits never share one callback's state."""
    return copy.deepcopy(callback)


def anchor_mode(settings):
    """``anchor`` with ``"auto"`` resolved for the training regime:
    ``"stack"`` on the frozen backbone, None with LoRA."""
    if settings.anchor == "auto":
        return "stack" if settings.backbone_tuning == "frozen" else None
    return settings.anchor


def scale_target(y2d, weight=None):
    """The targets standardised per column (weighted by ``weight``):
    ``(target, mean, scale)``; a constant column keeps scale 1."""
    if weight is None:
        mean = y2d.mean(axis=0)
        scale = y2d.std(axis=0)
    else:
        mean = np.average(y2d, axis=0, weights=weight)
        scale = np.sqrt(np.average((y2d - mean) ** 2, axis=0, weights=weight))
    scale[scale == 0] = 1.0
    return (y2d - mean) / scale, mean, scale


def n_validation_rows(settings, n_samples):
    """Rows held out for early stopping and the head's weight (0: none)."""
    n_valid = int(np.ceil(settings.validation_fraction * n_samples))
    if settings.early_stopping == "auto":
        return n_valid if (n_valid >= AUTO_MIN_VALIDATION_ROWS
                           and n_samples - n_valid >= 1) else 0
    if not settings.early_stopping:
        return 0
    if n_samples - n_valid < 1 or n_valid < 1:
        raise ValueError(
            f"early_stopping holds out validation_fraction="
            f"{settings.validation_fraction} of {n_samples} rows, which "
            "leaves no row to train or validate on. Use more rows or "
            "early_stopping=False.")
    return n_valid


def n_folds(settings, n_samples, lora=None, previous=None):
    """Folds to cross-fit the head over, or None for one hold-out.

    ``cv="auto"`` cross-fits over :data:`AUTO_CV_FOLDS` folds while a
    hold-out would have fewer than :data:`AUTO_CV_MAX_HOLDOUT` rows, and
    never for a LoRA fit (``lora``) or a warm-start continuation
    (``previous``), which train one head.
    """
    if settings.cv != "auto":
        return settings.cv
    if (lora is not None or previous is not None
            or np.ceil(settings.validation_fraction * n_samples) >= AUTO_CV_MAX_HOLDOUT
            or n_samples < 2 * AUTO_CV_FOLDS):
        return None
    return AUTO_CV_FOLDS


def fit_seed(random_state):
    """The one integer seed a fit draws from ``random_state``: its split,
    folds, initialisation, shuffling and dropout all derive from it."""
    from sklearn.utils import check_random_state

    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def holdout_split(n_samples, n_valid, seed):
    """``(valid_rows, train_rows)`` of the hold-out ``fit`` draws: ``n_valid``
    rows by ``seed`` (the seed of :func:`fit_seed`), the others sorted."""
    split = np.random.default_rng(seed).permutation(n_samples)
    return split[:n_valid], np.sort(split[n_valid:])


def holdout_rows(states, n_valid, seed):
    """:func:`holdout_split` of the rows of ``states``, the held-out rows in
    an order of similar lengths (their batches pad less). No rows are held
    out when ``n_valid`` is 0."""
    if not n_valid:
        return np.arange(0), np.arange(len(states))
    valid_rows, train_rows = holdout_split(len(states), n_valid, seed)
    return valid_rows[length_order(take(states, valid_rows))], train_rows


def head_net(settings, d_model, n_outputs, device, state_statistics=(None, None),
               valid_dataset=None, weighted=False, n_mixed_layers=1):
    """The skorch net for this estimator's head and training settings;
    with ``valid_dataset``, early stopping on it; ``weighted``: the
    datasets carry sample weights; ``n_mixed_layers``: layers side by
    side in the states, for a learned mix."""
    state_mean, state_std = state_statistics
    return build_net(
        dict(d_model=d_model, n_mixed_layers=n_mixed_layers, latent_dim=settings.latent_dim,
             n_iterations=settings.n_iterations, n_heads=settings.n_heads,
             n_latents=settings.n_latents, share_weights=settings.share_weights,
             dropout=settings.dropout, n_outputs=n_outputs,
             state_mean=state_mean, state_std=state_std),
        lr=settings.lr, lr_schedule=settings.lr_schedule, max_grad_norm=settings.max_grad_norm,
        weight_decay=settings.weight_decay,
        batch_size=settings.batch_size, max_epochs=settings.max_epochs,
        huber_delta=settings.huber_delta, valid_dataset=valid_dataset,
        n_iter_no_change=settings.n_iter_no_change, tol=settings.tol,
        device=device, verbose=int(settings.verbose), weighted=weighted,
        user_callbacks=[clone_callback(c) for c in (settings.callbacks or [])],
        optimizer=settings.optimizer, optimizer_kwargs=settings.optimizer_kwargs)



@dataclasses.dataclass
class FittedHead:
    """What the head's training stage hands to ``fit``.

    ``net`` carries the final anchor in its buffers (:func:`fold_anchor`);
    ``judged`` holds the rows the head's weight was fitted on (the hold-out,
    or every row out of fold) with the standardised ``target``, the
    ``anchor``'s and the ``head``'s predictions there (``anchor`` None
    without a stacked anchor); None when no rows were held out.
    """

    net: object
    loss_curve: list
    validation_loss_curve: list
    head_weight: np.ndarray
    anchor_weight: np.ndarray
    calibration: object
    anchor_alpha: np.ndarray = None
    anchor_pooling: list = None
    judged: dict = None


def fold_anchor(net, ridge, head_weight, anchor_weight):
    """Put the final anchor ridge (None: no anchor) and the head's weight in
    the head's buffers; return the anchor's penalty and pooling."""
    if ridge is None:
        net.module_.set_anchor(scale=head_weight)
        return None, None
    net.module_.set_anchor(anchor_weight[:, None] * ridge.coef,
                           anchor_weight * ridge.intercept, head_weight)
    return ridge.alpha, ridge.pooling


def fit_holdout(settings, states, backbone, target, weight, seed, n_valid, lora, previous,
                 prompts, source):
    """Train the head with ``n_valid`` rows held out (early stopping, the
    head's weight and the calibration are fitted on them); the anchor
    is then refitted on every row.

    Parameters
    ----------
    settings : RelishRegressor or an object with its parameters
    states : list of Tensor or StreamedStates
        Each row's token states, ``(tokens, state_width)``: in memory, or
        read from the disk cache when indexed
        (:class:`~sklearn_relish.streaming.StreamedStates`).
    backbone : Backbone
        The backbone that made them (device, width, mixed layers).
    target : ndarray of shape (n_samples, n_outputs)
        Standardised targets (:func:`scale_target`).
    weight : ndarray of shape (n_samples,) or None
        Sample weights of mean 1, or None.
    seed : int
        :func:`fit_seed` of the fit's ``random_state``.
    n_valid : int
        Rows to hold out (:func:`n_validation_rows`); 0: none.
    lora : LoraTraining or None
        Trains adapters with the head (``backbone_tuning="lora"``).
    previous : the fitted net a ``warm_start`` continues, or None
    prompts, source : the prompts and ``(fields, template, columns)``, for LoRA

    Returns
    -------
    FittedHead
    """
    y2d = target
    valid_rows, train_rows = holdout_rows(states, n_valid, seed)
    if weight is not None:
        if not weight[train_rows].any():
            raise ValueError(
                "Every row left for training after the early-stopping hold-out "
                "has sample_weight 0; give more rows a positive weight or set "
                "early_stopping=False.")
        # Mean 1 within each part, so that each loss keeps its scale.
        train_weight = weight[train_rows] / weight[train_rows].mean()
        valid_weight = (weight[valid_rows] / weight[valid_rows].mean()
                        if n_valid and weight[valid_rows].any() else
                        (np.ones(n_valid) if n_valid else None))
    else:
        train_weight = valid_weight = None

    # The anchor's out-of-sample predictions: leave-one-out on the rows
    # it is fitted on, plain predictions on the held-out rows. The head
    # learns what is left.
    offset = np.zeros_like(target)
    features = stacked = None
    # Layers side by side (a learned mix): the anchor chooses among them.
    mixed = backbone.layer_indices if backbone.n_mixed > 1 else None
    if anchor_mode(settings) is not None:
        features = pooled_features(states)
        ridge = fit_anchor(take(features, train_rows), target[train_rows], ALPHAS, train_weight,
                           layers=mixed)
        if anchor_mode(settings) == "ridge" or not n_valid:
            offset[train_rows] = ridge.loo_predictions
            if n_valid:
                offset[valid_rows] = ridge.predict(take(features, valid_rows))
        elif n_valid:
            # "stack": the head learns the target itself; the two are
            # weighed on the held-out rows below.
            stacked = ridge.predict(take(features, valid_rows))
    residual = (target - offset).astype(np.float32)

    if previous is not None:
        statistics = (None, None)   # the previous fit's, loaded below
    elif settings.standardize_states:
        statistics = token_state_statistics(take(states, train_rows),
                                            sample_weight=train_weight)
    else:
        statistics = (None, None)
    valid_dataset = None
    if n_valid:
        valid_dataset = TokenStateDataset(take(states, valid_rows),
                                          residual[valid_rows], valid_weight)
    net = head_net(settings, backbone.d_model, y2d.shape[1], backbone.device,
                          statistics, valid_dataset, weighted=weight is not None,
                          n_mixed_layers=backbone.n_mixed)
    train_dataset = TokenStateDataset(take(states, train_rows),
                                      residual[train_rows], train_weight)
    # This fit's own generator: initialisation, shuffling and dropout
    # draw from it alone, never from torch's global one, so that fits
    # running side by side in threads are each repeatable.
    net.generator_ = torch.Generator().manual_seed(seed)
    try:
        if lora is not None:
            # The adapters change the states at every step: adapters
            # and head train on token ids; the held-out rows' states
            # come back from the trained backbone.
            valid_dataset = lora.fit(net, backbone, prompts, source, residual,
                                     (train_rows, train_weight),
                                     (valid_rows, valid_weight), previous)
        elif previous is None:
            net.fit(train_dataset, y=None)
        else:
            # Continue from the fitted head: its weights and state
            # statistics, without its anchor and output scale (the
            # head trains alone, as in a first fit).
            net.initialize()
            net.module_.load_state_dict(previous.module_.state_dict())
            net.module_.reset_anchor()
            net.partial_fit(train_dataset, y=None)
    finally:
        net.forget_generator()
    if net.interrupted_:
        # skorch swallows KeyboardInterrupt and returns a half-trained
        # net; keep the previous fitted state instead and re-raise.
        raise KeyboardInterrupt

    history = net.history
    loss_curve = [float(v) for v in history[:, "train_loss"]]
    validation = ([float(v) for v in history[:, "valid_loss"]]
                  if n_valid else None)
    net.trim_for_prediction()

    scale = np.ones(y2d.shape[1])
    anchor_weight = np.ones(y2d.shape[1])
    valid_head = head_outputs(net, valid_dataset.states) if n_valid else None
    if stacked is not None and settings.shrinkage == "auto":
        anchor_weight, scale = stack_weights(stacked, valid_head, target[valid_rows],
                                             valid_weight)
    elif stacked is not None:
        scale = np.full(y2d.shape[1], 1.0 if settings.shrinkage is None else float(settings.shrinkage))
        anchor_weight = 1.0 - scale
    elif settings.shrinkage == "auto" and n_valid:
        # The least-squares scale of the head's correction on rows it
        # never saw, kept in [0, 1]: a head that adds nothing there is
        # switched off, an overconfident one is shrunk.
        scale = fit_shrinkage(valid_head, residual[valid_rows], valid_weight)
    elif settings.shrinkage not in ("auto", None):
        scale = np.full(y2d.shape[1], float(settings.shrinkage))
    calibration = None
    if lora is not None and n_valid:
        # The difficulty model must read at fit what predict_interval
        # reads later: the adapted backbone's pooled states, not the
        # frozen ones the fit began with.
        features = lora.pooled_features()
    if n_valid:
        # Before the anchor's refit: ``ridge`` is still the training rows'.
        calibration = fit_calibration(
            pooled_features(states) if features is None else features, target,
            train_rows, valid_rows, valid_head, scale, anchor_weight,
            ridge if anchor_mode(settings) is not None else None, train_weight, valid_weight)
    # Refit on every row; the head corrects it as it corrected the ridge
    # of the training rows.
    final = (fit_anchor(features, target, ALPHAS, weight, layers=mixed)
             if anchor_mode(settings) is not None else None)
    judged = (dict(rows=valid_rows, target=target[valid_rows], anchor=stacked,
                   head=valid_head) if n_valid else None)
    return FittedHead(net, loss_curve, validation, scale, anchor_weight, calibration,
                      *fold_anchor(net, final, scale, anchor_weight), judged=judged)


def fit_crossfit(settings, states, backbone, target, weight, seed, n_folds):
    """Cross-fit the head over ``n_folds`` folds, then train it on every row.

    Each fold's rows are predicted by an anchor and a head fitted on the
    other folds (the head stopping early on the fold when
    ``early_stopping`` allows): every row gets out-of-fold predictions,
    on which the head's weight (the gate) and the calibration are
    fitted, with ``cv`` times the rows a 1/``cv`` hold-out gives them.
    The final head trains on every row for the median of the folds'
    best epochs, under the same learning-rate schedule. The parameters are
    :func:`fit_holdout`'s; ``n_folds`` is :func:`n_folds`'s. Returns a
    :class:`FittedHead`.
    """
    n_samples, n_outputs = target.shape
    if n_samples < 2 * n_folds:
        raise ValueError(f"cv={n_folds} cuts the rows into {n_folds} folds of at least 2 "
                         f"rows, but there are {n_samples}. Use fewer folds or cv=None.")
    mixed = backbone.layer_indices if backbone.n_mixed > 1 else None
    features = pooled_features(states) if anchor_mode(settings) is not None else None
    stop = settings.early_stopping is not False
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_samples)
    seeds = rng.integers(np.iinfo(np.int32).max, size=n_folds + 1)
    anchor_oof = np.zeros_like(target)
    head_oof = np.zeros_like(target)
    best_epochs = []

    def part_weight(rows):
        if weight is None:
            return None
        part = weight[rows]
        return part / part.mean() if part.any() else np.ones(len(rows))

    def train(rows, residual, fold_seed, valid=None, epochs=None):
        statistics = ((None, None) if not settings.standardize_states else
                      token_state_statistics(take(states, rows),
                                             sample_weight=part_weight(rows)))
        valid_dataset = None
        if valid is not None:
            valid_rows, valid_residual = valid
            valid_dataset = TokenStateDataset(take(states, valid_rows),
                                              valid_residual, part_weight(valid_rows))
        net = head_net(settings, backbone.d_model, n_outputs, backbone.device, statistics,
                              valid_dataset, weighted=weight is not None,
                              n_mixed_layers=backbone.n_mixed)
        net.generator_ = torch.Generator().manual_seed(int(fold_seed))
        try:
            net.fit(TokenStateDataset(take(states, rows), residual,
                                      part_weight(rows)), y=None, epochs=epochs)
        finally:
            net.forget_generator()
        if net.interrupted_:
            raise KeyboardInterrupt
        return net

    for k in range(n_folds):
        fold = order[k::n_folds]
        valid_rows = fold[length_order(take(states, fold))]
        train_rows = np.sort(np.setdiff1d(order, fold))
        residual = target.copy()
        if anchor_mode(settings) is not None:
            ridge = fit_anchor(take(features, train_rows), target[train_rows], ALPHAS,
                               part_weight(train_rows), layers=mixed)
            anchor_oof[valid_rows] = ridge.predict(take(features, valid_rows))
            if anchor_mode(settings) == "ridge":
                residual[train_rows] -= ridge.loo_predictions
                residual[valid_rows] -= anchor_oof[valid_rows]
        residual = residual.astype(np.float32)
        net = train(train_rows, residual[train_rows], seeds[k],
                    (valid_rows, residual[valid_rows]) if stop else None)
        head_oof[valid_rows] = head_outputs(net, take(states, valid_rows))
        losses = net.history[:, "valid_loss"] if stop else []
        best_epochs.append(int(np.argmin(losses)) + 1 if stop else settings.max_epochs)

    anchor_weight = np.ones(n_outputs)
    if settings.shrinkage not in ("auto", None):
        scale = np.full(n_outputs, float(settings.shrinkage))
        if anchor_mode(settings) == "stack":
            anchor_weight = 1.0 - scale
    elif settings.shrinkage is None:
        scale = np.ones(n_outputs)
    elif anchor_mode(settings) == "stack":
        anchor_weight, scale = stack_weights(anchor_oof, head_oof, target, weight)
    else:
        # The head's output is a correction of the anchor ("ridge") or
        # a prediction around the mean (no anchor).
        scale = fit_shrinkage(head_oof, target - anchor_oof, weight)

    residual = target.copy()
    ridge = None
    if anchor_mode(settings) is not None:
        ridge = fit_anchor(features, target, ALPHAS, weight, layers=mixed)
        if anchor_mode(settings) == "ridge":
            residual -= ridge.loo_predictions
    epochs = int(np.ceil(np.median(best_epochs)))
    net = train(np.arange(n_samples), residual.astype(np.float32), seeds[-1],
                epochs=epochs)
    loss_curve = [float(v) for v in net.history[:, "train_loss"]]
    net.trim_for_prediction()
    calibration = fit_calibration(
        pooled_features(states) if features is None else features, target,
        np.arange(n_samples), np.arange(n_samples), head_oof, scale, anchor_weight,
        ridge, part_weight(np.arange(n_samples)), part_weight(np.arange(n_samples)),
        valid_anchor=anchor_oof if ridge is not None else None)
    judged = dict(rows=np.arange(n_samples), target=target, head=head_oof,
                  anchor=anchor_oof if anchor_mode(settings) == "stack" else None)
    return FittedHead(net, loss_curve, None, scale, anchor_weight, calibration,
                      *fold_anchor(net, ridge, scale, anchor_weight), judged=judged)
