"""The compared methods, all on one frozen backbone and the same splits.

Families (see ``shared/RELISH.md``):

- ``relish``, ``relish_tuned``: :class:`sklearn_relish.RelishRegressor`, with
  its defaults, or tuned by ``GridSearchCV`` over ``n_iterations`` x
  ``latent_dim`` on the training split only.
- Predictive heads on one pooled vector of the same token states:
  ``ridge_mean`` (masked mean over tokens), ``ridge_last`` (last token; for
  an encoder such as MiniLM that is ``[SEP]``), both StandardScaler +
  RidgeCV; ``mlp_mean`` (StandardScaler + MLPRegressor with early stopping,
  targets standardised).
- ``tfidf_ridge`` (TF-IDF + RidgeCV on the raw texts, no backbone) and
  ``finetuned_minilm`` (a small encoder fine-tuned end to end, see
  :mod:`benchmarks.finetune`): what a user would pick instead of a frozen
  LLM.
- LoRA (the paper's second regime; opt-in, ``--methods``): ``relish_lora``
  (:class:`sklearn_relish.RelishRegressor` with ``backbone_tuning="lora"``,
  ``anchor=None``) and ``lora_linear`` (the same adapters and training
  loop under the sequence-classification head, one linear output on the
  last token, see :mod:`benchmarks.lora_linear`): the backbone is adapted,
  not frozen, so they read no cached states at training time.
- Prompted LM (decoder backbones only, see :mod:`benchmarks.prompted`):
  ``zeroshot`` and ``fewshot`` decode the answer greedily;
  ``rail_zeroshot`` and ``rail_fewshot`` (RAIL-style) return the expected
  answer under the model's distribution over the integers of the task's
  range.

The pooled heads and RELISH read token states through ``sklearn_relish``'s
cache with the same backbone configuration and ``cache_dir``, so the backbone
runs once per distinct prompt across methods, seeds and reruns.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from sklearn.compose import TransformedTargetRegressor
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_relish import RelishRegressor
from sklearn_relish.backbone import BackboneConfig, load_backbone
from sklearn_relish.bundled import resolve_backbone
from sklearn_relish.cache import DiskCache, cached_states
from sklearn_relish.inputs import render_prompts, shorten_fields, validate_texts

from .cli import backbone_slug, resolve_backbone_name
from .prompted import N_SHOTS, PromptedLM, prompted_method, prompted_pass

__all__ = ["METHODS", "Method", "Context", "backbone_slug", "resolve_backbone_name"]

RIDGE_ALPHAS = np.logspace(-2, 6, 17)
GRID = {"n_iterations": [1, 2, 3], "latent_dim": [128, 256]}
#: In :attr:`Method.reads_layers`: the layer choice of ``RelishRegressor()``.
DEFAULT_LAYER = "default"


# -- shared state ------------------------------------------------------------


class Context:
    """What the methods share within one run: backbone, cache, features.

    Parameters
    ----------
    backbone : str
        Name or path given to ``RelishRegressor(backbone=...)``.
    cache_dir : str
        The on-disk token-state cache, shared with RELISH.
    max_length : int
        Token limit of the prompts for every state-based method.
    quick : bool
        Quick mode (smaller CV for the tuned RELISH).
    gen_test : int or None
        Score the prompted methods on the first ``gen_test`` test rows only.
    layer : int
        Hidden layer the state-based methods read (``RelishRegressor(layer=...)``).
    """

    def __init__(self, backbone, cache_dir, max_length=512, quick=False,
                 gen_test=None, verbose=0, layer=-1):
        self.backbone = backbone
        self.layer = int(layer)
        self.cache_dir = os.fspath(cache_dir)
        self.max_length = int(max_length)
        self.quick = quick
        self.gen_test = gen_test
        self.verbose = verbose
        self._features = {}
        self._passes = {}
        self._lm = None
        self.is_decoder = _is_decoder(backbone)

    # token states through the package's cache
    def backbone_config(self):
        # Identical to RelishRegressor(backbone=..., max_length=...)'s, so the
        # process-wide backbone, its fingerprint and the cache keys are shared.
        return BackboneConfig(name_or_path=os.fspath(self.backbone), layer=self.layer,
                              max_length=self.max_length)

    def load_backbone(self):
        return load_backbone(self.backbone_config(), verbose=self.verbose)

    def states(self, prompts):
        config = self.backbone_config()
        backbone = self.load_backbone()
        disk = DiskCache(self.cache_dir, backbone.fingerprint,
                         {"backbone": config.name_or_path, "layer": config.layer,
                          "max_length": config.max_length,
                          "dtype": str(backbone.dtype)})
        disk.check_writable()
        return cached_states(backbone, prompts, disk=disk, batch_size=32,
                             progress=bool(self.verbose))

    def prompts(self, task, X):
        """The prompts RelishRegressor encodes for ``X``: over-long ones with
        their text fields cut, so every method reads the same states."""
        fields = validate_texts(X)[0]
        prompts = render_prompts(fields, task.template)
        return shorten_fields(prompts, fields, task.template,
                              self.load_backbone().tokenizer, self.max_length)[0]

    def encode_task(self, task, layers=(-1,)):
        """Put every prompt of the task in the cache for each layer choice
        the methods read (``layers``: values of ``RelishRegressor(layer=...)``,
        :data:`DEFAULT_LAYER` for the default regressor's), with one backbone
        pass per text that some choice lacks; time what was new.

        Each choice must be cached here, before the fits: a choice left out
        would be encoded inside the first fit that reads it, and that fit's
        time would hold the backbone's pass.
        """
        layers = list(dict.fromkeys(RelishRegressor().layer if v == DEFAULT_LAYER else v
                                    for v in layers))
        prompts = self.prompts(task, task.X_train) + self.prompts(task, task.X_test)
        start = time.perf_counter()
        n_encoded = _relish(self, task, 0).cache_states(
            np.concatenate([task.X_train, task.X_test]), layers=layers)
        seconds = time.perf_counter() - start
        n_truncated = self.load_backbone().tokenize(list(dict.fromkeys(prompts)))[1]
        return {"seconds": seconds, "n_encoded": n_encoded, "layers": layers,
                "n_prompts": len(prompts), "n_truncated": n_truncated}

    def features(self, task, split):
        """Mean-pooled and last-token vectors (float32) of one split."""
        key = (task.name, split)
        if key not in self._features:
            X = task.X_train if split == "train" else task.X_test
            states, _ = self.states(self.prompts(task, X))
            self._features[key] = {
                "mean": np.stack([s.float().mean(0).numpy() for s in states]),
                "last": np.stack([s[-1].float().numpy() for s in states]),
            }
        return self._features[key]

    # prompted LM
    def lm(self):
        if self._lm is None:
            self._lm = PromptedLM(self.backbone)
        return self._lm

    def prompted_pass(self, task, shots, seed):
        """Decode and read answer distributions once per (task, shots, seed)."""
        key = (task.name, shots, seed)
        if key not in self._passes:
            self._passes[key] = prompted_pass(self, task, shots, seed)
        return self._passes[key]


def _is_decoder(backbone):
    from transformers import AutoConfig

    source = resolve_backbone(backbone)[0]
    config = AutoConfig.from_pretrained(source)
    if getattr(config, "is_encoder_decoder", False):
        return False
    architectures = getattr(config, "architectures", None) or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


# -- methods -----------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One compared method.

    ``seeded`` methods run once per seed; the others once (deterministic, or
    not trained at all). ``generative`` methods need a decoder backbone.
    """

    name: str
    family: str
    description: str
    run: object
    seeded: bool = True
    generative: bool = False
    #: Costly per seed: quick mode runs it on the first seed only.
    expensive: bool = False
    #: If set, quick mode runs it on these tasks only.
    quick_tasks: tuple = None
    #: The layer choices whose token states it reads from the cache (values
    #: of ``RelishRegressor(layer=...)``; :data:`DEFAULT_LAYER`: the default
    #: regressor's). The run caches them all before the fits, in one backbone
    #: pass per text, so no fit's time holds the backbone.
    reads_layers: tuple = (-1,)
    #: Runs only when named in ``--methods`` (hours of CPU on a full task).
    opt_in: bool = False

    @property
    def uses_states(self):
        """Whether it reads cached token states (so the task is encoded first)."""
        return bool(self.reads_layers)


def _relish(ctx, task, seed, **params):
    return RelishRegressor(backbone=ctx.backbone, prompt_template=task.template,
                           max_length=ctx.max_length, cache_dir=ctx.cache_dir,
                           random_state=seed, **params)


def _timed_fit_predict(model, X_train, y_train, X_test):
    start = time.perf_counter()
    model.fit(X_train, y_train)
    fit_time = time.perf_counter() - start
    start = time.perf_counter()
    y_pred = model.predict(X_test)
    return model, np.asarray(y_pred, dtype=np.float64), fit_time, time.perf_counter() - start


def run_relish(ctx, task, seed, **params):
    model, y_pred, fit_time, predict_time = _timed_fit_predict(
        _relish(ctx, task, seed, **params), task.X_train, task.y_train, task.X_test)
    return dict(y_pred=y_pred, fit_time=fit_time, predict_time=predict_time,
                n_params=int(model.n_trainable_params_),
                extra={"n_epochs": model.n_iter_,
                       "final_train_loss": round(model.loss_curve_[-1], 5),
                       "shrinkage": [round(float(v), 4) for v in model.shrinkage_],
                       "anchor_alpha": (None if model.anchor_alpha_ is None else
                                        [float(v) for v in model.anchor_alpha_])})


def run_relish_tuned(ctx, task, seed):
    n_folds = 3 if ctx.quick else 5
    search = GridSearchCV(_relish(ctx, task, seed), GRID,
                          cv=KFold(n_folds, shuffle=True, random_state=seed),
                          scoring="r2", refit=True, n_jobs=None)
    search, y_pred, fit_time, predict_time = _timed_fit_predict(
        search, task.X_train, task.y_train, task.X_test)
    return dict(y_pred=y_pred, fit_time=fit_time, predict_time=predict_time,
                n_params=int(search.best_estimator_.n_trainable_params_),
                extra={"best_params": search.best_params_, "cv_folds": n_folds,
                       "best_cv_r2": round(float(search.best_score_), 4)})


def _pooled(kind, make):
    def run(ctx, task, seed):
        X_train = ctx.features(task, "train")[kind]
        X_test = ctx.features(task, "test")[kind]
        model, y_pred, fit_time, predict_time = _timed_fit_predict(
            make(seed), X_train, task.y_train, X_test)
        return dict(y_pred=y_pred, fit_time=fit_time, predict_time=predict_time,
                    n_params=_linear_params(model), extra=_pooled_extra(model))
    return run


def _ridge(seed):
    return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))


def _mlp(seed):
    mlp = MLPRegressor(hidden_layer_sizes=(256,), early_stopping=True,
                       max_iter=500, random_state=seed)
    return TransformedTargetRegressor(make_pipeline(StandardScaler(), mlp),
                                      transformer=StandardScaler())


def _linear_params(model):
    if isinstance(model, TransformedTargetRegressor):
        mlp = model.regressor_[-1]
        return int(sum(w.size for w in mlp.coefs_) + sum(b.size for b in mlp.intercepts_))
    ridge = model[-1]
    return int(ridge.coef_.size + 1)


def _pooled_extra(model):
    if isinstance(model, TransformedTargetRegressor):
        return {"n_iter": int(model.regressor_[-1].n_iter_)}
    return {"alpha": float(model[-1].alpha_)}


def layer_pooled(ctx, task):
    """Every layer's pooled states (mean and last token) of both splits, float64,
    from one backbone pass per text and kept beside the token-state cache
    (the store of ``benchmarks/studies/layers.py``, which shares them)."""
    from pathlib import Path

    from .studies.layers import pooled

    store = Path(ctx.cache_dir) / "layer-pooled" / backbone_slug(ctx.backbone)
    sizes = f"{len(task.y_train)}-{len(task.y_test)}"
    train = pooled(ctx, task, task.X_train, store, f"{task.name}-train-{sizes}")[0]
    test = pooled(ctx, task, task.X_test, store, f"{task.name}-test-{sizes}")[0]
    return train.astype(np.float64), test.astype(np.float64)


def _both_poolings(x):
    """``(n, 2, d)`` mean and last-token vectors side by side, as the anchor reads them."""
    return np.hstack([x[:, 0], x[:, 1]])


def default_layers_ridge(reg, X_train, y_train, X_test):
    """The default's own anchor ridge (mean, last token or both, chosen by
    leave-one-out) on ``reg``'s pooled states of ``X_train``: ``(fit,
    test predictions, seconds to fit, training features' width)``."""
    from sklearn_relish.anchor import fit_anchor

    train = reg.pooled_states(X_train, pooling="mean+last")
    test = reg.pooled_states(X_test, pooling="mean+last")
    start = time.perf_counter()
    fit = fit_anchor(train, y_train)
    return fit, fit.predict(test).ravel(), time.perf_counter() - start, train.shape[1]


def run_ridge_layers(ctx, task, seed):
    """The ridge a user gets from the layers the default head reads: the
    default's own anchor ridge on the default regressor's pooled states,
    fitted on every training row."""
    from sklearn_relish.layers import resolve_layers

    reg = _relish(ctx, task, seed)
    fit, y_pred, fit_time, width = default_layers_ridge(reg, task.X_train, task.y_train,
                                                        task.X_test)
    d_model = width // 2
    n_layers = ctx.load_backbone().n_layers
    return dict(y_pred=y_pred, fit_time=fit_time, predict_time=0.0,
                n_params=int(d_model * len(fit.pooling[0].split("+")) + 1),
                extra={"layers": list(resolve_layers(reg.layer, n_layers)),
                       "pooling": fit.pooling[0], "alpha": float(fit.alpha[0])})


def run_ridge_best_layer(ctx, task, seed):
    """The best single layer and pooling a user could pick from the training
    rows alone: a ridge per layer (every hidden state but the embeddings) and
    pooling, the lowest leave-one-out error chosen; the test rows are not
    looked at."""
    from sklearn_relish.anchor import fit_ridge_loo

    train, test = layer_pooled(ctx, task)
    start = time.perf_counter()
    best = None
    for layer in range(1, train.shape[1]):
        for p, pooling in enumerate(("mean", "last")):
            fit = fit_ridge_loo(train[:, layer, p], task.y_train)
            if best is None or fit.loo_mse[0] < best[0].loo_mse[0]:
                best = (fit, layer, p, pooling)
    fit, layer, p, pooling = best
    fit_time = time.perf_counter() - start
    y_pred = fit.predict(test[:, layer, p]).ravel()
    return dict(y_pred=y_pred, fit_time=fit_time, predict_time=0.0,
                n_params=int(train.shape[-1] + 1),
                extra={"layer": layer, "pooling": pooling, "alpha": float(fit.alpha[0])})


def run_tfidf_ridge(ctx, task, seed):
    """TF-IDF of word 1-2-grams + RidgeCV on the raw texts: the first thing a
    scikit-learn user tries. A pair gets one vectoriser per text field, side
    by side (a ``ColumnTransformer``), so each field keeps its own words."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer

    X_train, X_test = task.X_train, task.X_test
    if X_train.ndim == 1:
        X_train, X_test = X_train[:, None], X_test[:, None]
    vectorisers = ColumnTransformer(
        [(f"tfidf{j}", TfidfVectorizer(ngram_range=(1, 2)), j)
         for j in range(X_train.shape[1])])
    model = make_pipeline(vectorisers, RidgeCV(alphas=RIDGE_ALPHAS))
    model, y_pred, fit_time, predict_time = _timed_fit_predict(
        model, X_train, task.y_train, X_test)
    ridge = model[-1]
    return dict(y_pred=y_pred, fit_time=fit_time, predict_time=predict_time,
                n_params=int(ridge.coef_.size + 1),
                extra={"alpha": float(ridge.alpha_), "n_features": int(ridge.coef_.size)})


def _n_backbone_params(ctx):
    """Weights of the frozen backbone, against which the paper states the
    trainable share."""
    return int(sum(p.numel() for p in ctx.load_backbone().model.parameters()))


def run_relish_lora(ctx, task, seed):
    """RELISH on a LoRA-adapted backbone: adapters and head trained
    together (the ridge anchor reads frozen states, so it is off)."""
    model, y_pred, fit_time, predict_time = _timed_fit_predict(
        _relish(ctx, task, seed, backbone_tuning="lora", anchor=None),
        task.X_train, task.y_train, task.X_test)
    adapters = model.lora_adapters_
    return dict(y_pred=y_pred, fit_time=fit_time, predict_time=predict_time,
                n_params=int(model.n_trainable_params_),
                extra={"n_epochs": model.n_iter_,
                       "final_train_loss": round(model.loss_curve_[-1], 5),
                       "shrinkage": [round(float(v), 4) for v in model.shrinkage_],
                       "n_adapter_params": adapters.n_params,
                       "n_backbone_params": _n_backbone_params(ctx),
                       "lora": adapters.settings.to_dict()})


def run_lora_linear(ctx, task, seed):
    """LoRA on the same backbone with a one-output linear head on the last
    token (``AutoModelForSequenceClassification``), the same prompts,
    adapters and training loop as ``relish_lora``."""
    from .lora_linear import LoraLinearRegressor

    model = LoraLinearRegressor(ctx.backbone, max_length=ctx.max_length, random_state=seed)
    model, y_pred, fit_time, predict_time = _timed_fit_predict(
        model, ctx.prompts(task, task.X_train), task.y_train, ctx.prompts(task, task.X_test))
    return dict(y_pred=y_pred, fit_time=fit_time, predict_time=predict_time,
                n_params=int(model.n_trainable_params_),
                extra={"n_epochs": model.n_iter_, "n_backbone_params": _n_backbone_params(ctx),
                       "lora": model.settings.to_dict()})


def run_finetuned_minilm(ctx, task, seed):
    """all-MiniLM-L6-v2 fine-tuned end to end (cross-encoder for pairs);
    the same model whatever the run's backbone (see benchmarks/finetune.py)."""
    from .finetune import FinetunedEncoder

    model, y_pred, fit_time, predict_time = _timed_fit_predict(
        FinetunedEncoder(random_state=seed), task.X_train, task.y_train, task.X_test)
    return dict(y_pred=y_pred, fit_time=fit_time, predict_time=predict_time,
                n_params=int(model.n_trainable_params_),
                extra={"epochs": model.epochs, "lr": model.lr})


METHODS = {m.name: m for m in [
    Method("relish", "RELISH", "RelishRegressor defaults (latent 256, L=3, 10 epochs)",
           run_relish, reads_layers=(DEFAULT_LAYER,)),
    Method("relish_last", "RELISH",
           "RelishRegressor(layer=-1, cv=None): the head on the last layer with a 10 % "
           "hold-out, the default until layer='all' and cv='auto'",
           lambda ctx, task, seed: run_relish(ctx, task, seed, layer=-1, cv=None),
           opt_in=True),
    Method("relish_tuned", "RELISH",
           "GridSearchCV n_iterations {1,2,3} x latent_dim {128,256} (R2, K-fold on train)",
           run_relish_tuned, expensive=True, quick_tasks=("stsb", "vader-tweets"),
           reads_layers=(DEFAULT_LAYER,)),
    Method("ridge_mean", "predictive head", "mean-pooled states, StandardScaler + RidgeCV",
           _pooled("mean", _ridge), seeded=False),
    Method("ridge_last", "predictive head", "last-token state, StandardScaler + RidgeCV",
           _pooled("last", _ridge), seeded=False),
    Method("ridge_layers", "predictive head",
           "the default regressor's pooled states (the mean of its layers; mean, last "
           "token or both by LOO), ridge with LOO penalty: the default's own anchor",
           run_ridge_layers, seeded=False, reads_layers=(DEFAULT_LAYER,)),
    Method("ridge_best_layer", "predictive head",
           "one layer and pooling chosen by the ridges' LOO error on the training rows, "
           "ridge with LOO penalty",
           run_ridge_best_layer, seeded=False, reads_layers=()),
    Method("tfidf_ridge", "text features",
           "TF-IDF word 1-2-grams (one vectoriser per text field) + RidgeCV, no backbone",
           run_tfidf_ridge, seeded=False, reads_layers=()),
    Method("finetuned_minilm", "fine-tuned encoder",
           "all-MiniLM-L6-v2 + one-output head, every weight trained (3 epochs, lr 2e-5; "
           "cross-encoder for pairs), no frozen backbone",
           run_finetuned_minilm, expensive=True, reads_layers=()),
    Method("relish_lora", "RELISH (LoRA)",
           "RelishRegressor(backbone_tuning='lora', anchor=None): LoRA rank 8 on the "
           "default targets + the RELISH head, trained together",
           run_relish_lora, expensive=True, opt_in=True, reads_layers=()),
    Method("lora_linear", "predictive head (LoRA)",
           "the same LoRA adapters + a one-output linear head on the last token "
           "(AutoModelForSequenceClassification), the same training loop",
           run_lora_linear, expensive=True, reads_layers=(), opt_in=True),
    Method("mlp_mean", "predictive head",
           "mean-pooled states, StandardScaler + MLPRegressor(256, early_stopping)",
           _pooled("mean", _mlp)),
    Method("zeroshot", "decoding", "zero-shot greedy decoding, first number parsed",
           prompted_method(0, "decode"), seeded=False, generative=True, reads_layers=()),
    Method("fewshot", "decoding",
           f"{N_SHOTS}-shot greedy decoding (examples drawn per seed)",
           prompted_method(N_SHOTS, "decode"), generative=True, expensive=True, reads_layers=()),
    Method("rail_zeroshot", "RAIL", "expected answer under the zero-shot next-token distribution",
           prompted_method(0, "rail"), seeded=False, generative=True, reads_layers=()),
    Method("rail_fewshot", "RAIL", f"expected answer under the {N_SHOTS}-shot next-token distribution",
           prompted_method(N_SHOTS, "rail"), generative=True, expensive=True, reads_layers=()),
]}
