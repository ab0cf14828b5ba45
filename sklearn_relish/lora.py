"""LoRA adapters on a private copy of the backbone, trained with the head.

The paper's second training regime (``RelishRegressor(backbone_tuning="lora")``):
low-rank adapters (Hu et al., 2021) in the backbone's linear layers, through
``peft``, trained end to end with the RELISH head by the same skorch loop,
loss, optimiser and schedule as the frozen regime. The backbone's own weights
never train.

How it fits the frozen design:

- **The shared backbone is never modified.** :func:`adapt` wraps a deep copy
  of the process-wide model (:func:`~sklearn_relish.backbone.load_backbone`)
  with ``peft``; each fit has its own copy and adapters, so clones, grid
  search candidates and threads never see each other's adapters.
- **What is cached.** Fitting first reads the *frozen* token states of every
  row through the usual cache (:mod:`sklearn_relish.cache`), as the frozen
  regime does: they give the standardisation statistics of the head (the
  adapters start as the identity, ``B = 0``, so these are the states the head
  sees at its first step), the token counts, and the truncation warnings.
  Training itself runs the adapted backbone on token ids at every step and
  caches nothing: its states change with every step. After ``fit`` the
  adapters are merged into the weights of one more copy of the backbone
  (``merge_and_unload``), which ``predict`` runs: no adapter arithmetic at
  inference, the same cost as the frozen backbone. Its states are kept in the
  process's memory cache under a fingerprint of the base backbone *and* the
  adapter weights (:attr:`LoraAdapters.fingerprint`), so they never mix with
  frozen states or with another fit's, and never on disk: no other fit could
  read them back.
- **Batches.** Every padded token costs a forward and a backward pass
  through the whole backbone, so training batches group rows of similar
  length (:class:`~sklearn_relish.training.LengthGroupedBatchSampler`, as
  ``transformers``' ``group_by_length``); the frozen regime's head, which
  is cheap, keeps random batches.
- **What is stored.** The fitted state holds the adapter weights (a few
  hundred thousand numbers on SmolLM2) and the head, never a backbone:
  pickles and :meth:`~sklearn_relish.RelishRegressor.save` carry
  :class:`LoraAdapters`, which rebuilds the merged copy from the shared
  backbone on first use after loading (a deep copy and a merge: about a
  second on SmolLM2-135M).
- **Memory.** A fit holds the shared backbone and its own copy with the
  adapters and the activations of a backward pass; a fitted regressor holds
  the merged copy, as large as the backbone, until it is garbage collected.
- **Randomness.** The adapters' ``A`` matrices are drawn (as ``peft`` and
  ``nn.Linear`` draw them: Kaiming uniform, ``B`` zero) from the fit's own
  generator after the head, and LoRA dropout draws its masks from a
  generator seeded from it: torch's global generator is neither read nor
  changed, as in the frozen regime.
- **The ridge anchor** reads the frozen backbone's pooled states; in this
  regime the states the head reads are the adapted ones, so the estimator
  asks for ``anchor=None`` (the head alone, as in the paper) rather than
  blend two models of different states. ``shrinkage`` still applies.

``peft`` is an optional dependency: ``pip install "sklearn-relish[lora]"``.

Examples
--------
>>> from sklearn_relish import RelishRegressor
>>> reg = RelishRegressor(backbone_tuning="lora", anchor=None, lora_rank=8)
>>> reg.fit(texts, y)  # doctest: +SKIP
>>> reg.n_trainable_params_ - reg.lora_adapters_.n_params  # the head  # doctest: +SKIP
2517505
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import threading
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .anchor import pooled_features
from .backbone import _FLOAT16_MAX, STORAGE_DTYPE
from .head import RelishHead, _dropout
from .inputs import shorten_fields
from .layers import needs_hidden_states, select_hidden
from .training import LengthGroupedBatchSampler, RelishNet, TokenStateDataset

__all__ = ["AdaptedModule", "AdaptedRelish", "LoraAdapters", "LoraNet", "LoraSettings",
           "LoraTraining", "TokenIdDataset", "adapt", "import_peft", "init_adapters",
           "lora_net", "merge", "pad_ids", "warm_start_changes"]

INSTALL_HINT = ('backbone_tuning="lora" needs the peft package: '
                'pip install "sklearn-relish[lora]" (or pip install peft).')
_ADAPTER = "default"


def import_peft():
    """``peft``, or an ImportError that says how to install it."""
    try:
        import peft
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return peft


@dataclass(frozen=True)
class LoraSettings:
    """The adapters' shape: what ``peft.LoraConfig`` is given.

    Parameters
    ----------
    rank : int
        ``r``, the rank of each adapter ``B A``.
    alpha : float
        ``lora_alpha``: the adapters' output is scaled by ``alpha / rank``.
    dropout : float
        Dropout on each adapted layer's input, in the adapter branch only.
    target_modules : tuple of str, str or None
        Names (or name suffixes) of the layers to adapt, ``"all-linear"``,
        or None for ``peft``'s default for the architecture (the query and
        value projections for Llama-type models, as in the LoRA paper).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple | str | None = None

    @classmethod
    def of(cls, estimator):
        """The settings a :class:`~sklearn_relish.RelishRegressor`'s
        parameters give."""
        targets = estimator.lora_target_modules
        if targets is not None and not isinstance(targets, str):
            targets = tuple(targets)
        return cls(rank=int(estimator.lora_rank), alpha=float(estimator.lora_alpha),
                   dropout=float(estimator.lora_dropout), target_modules=targets)

    def to_dict(self):
        out = asdict(self)
        if isinstance(self.target_modules, tuple):
            out["target_modules"] = list(self.target_modules)
        return out

    @classmethod
    def from_dict(cls, values):
        values = dict(values)
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)

    def peft_config(self, **extra):
        peft = import_peft()
        targets = self.target_modules
        return peft.LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
            target_modules=list(targets) if isinstance(targets, tuple) else targets,
            **extra)


# -- the adapted copy -----------------------------------------------------------


def _adaptable_names(model):
    """Names of the layers LoRA can adapt (linear-like), without the
    block numbers: what ``target_modules`` may name."""
    from transformers.pytorch_utils import Conv1D

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def adapt(model, settings, **config):
    """A deep copy of ``model`` with LoRA adapters, ``model`` untouched.

    The adapters are created empty (on the meta device: nothing is drawn
    from any random generator); :func:`init_adapters` or
    ``peft.set_peft_model_state_dict`` gives them values.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face model (the shared backbone's, or any other).
    settings : LoraSettings
    **config
        More ``peft.LoraConfig`` arguments (``task_type``,
        ``modules_to_save``).

    Returns
    -------
    peft.PeftModel

    Raises
    ------
    ValueError
        When ``peft`` cannot adapt this model with these settings (no layer
        matches ``target_modules``, a matching layer is not linear-like, or
        the architecture has no default and none was given); the message
        lists the layers that can be named.
    """
    peft = import_peft()
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    candidates = _adaptable_names(model)
    if settings.target_modules is None and model_type not in DEFAULTS:
        raise ValueError(
            f"peft has no default LoRA target modules for this backbone "
            f"(model type {model_type!r}); name them with lora_target_modules, "
            f"for example {candidates[:4]} or 'all-linear'. Its linear layers "
            f"are: {candidates}.")
    peft_config = settings.peft_config(**config)
    copied = copy.deepcopy(model)
    try:
        with warnings.catch_warnings():
            # peft reads an attribute that transformers deprecates: not the
            # user's to act on.
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated",
                                    FutureWarning)
            adapted = peft.get_peft_model(copied, peft_config, low_cpu_mem_usage=True)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(
            f"peft cannot adapt this backbone (model type {model_type!r}) with "
            f"lora_target_modules={settings.target_modules!r}: {exc} LoRA adapts "
            f"linear layers; this backbone's are: {candidates}.") from exc
    if not any(p.requires_grad for p in adapted.parameters()):
        raise ValueError(f"lora_target_modules={settings.target_modules!r} adapts no "
                         f"layer of this backbone; its linear layers are: {candidates}.")
    return adapted


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules()
            if isinstance(module, LoraLayer) and _ADAPTER in module.lora_A]


class GeneratorDropout(nn.Module):
    """Dropout whose masks come from ``generator`` (torch's global one when
    None); stands in for ``peft``'s ``nn.Dropout`` in the adapters."""

    def __init__(self, p):
        super().__init__()
        self.p = float(p)
        self.generator = None

    def forward(self, x):
        return _dropout(x, self.p, self.training, self.generator)

    def extra_repr(self):
        return f"p={self.p}"


def init_adapters(model, generator=None):
    """Give the empty adapters of :func:`adapt` their initial values.

    ``A`` from ``nn.Linear``'s initialisation (Kaiming uniform) drawn from
    ``generator``, ``B`` zero, in the model's module order: the adapted
    model starts as the base model. LoRA dropout becomes a
    :class:`GeneratorDropout`.

    Returns
    -------
    list of GeneratorDropout
        The dropout modules, whose ``generator`` the caller sets.
    """
    dropouts = []
    with torch.no_grad():
        for layer in _lora_layers(model):
            device = layer.get_base_layer().weight.device
            a, b = layer.lora_A[_ADAPTER], layer.lora_B[_ADAPTER]
            # Drawn on the CPU, where the generator is, then moved.
            for linear in (a, b):
                linear.to_empty(device="cpu")
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5), generator=generator)
            nn.init.zeros_(b.weight)
            for linear in (a, b):
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)
                linear.to(device)
            p = layer.lora_dropout[_ADAPTER].p if hasattr(layer.lora_dropout[_ADAPTER], "p") else 0
            dropout = GeneratorDropout(p)
            layer.lora_dropout[_ADAPTER] = dropout
            dropouts.append(dropout)
    return dropouts


def adapter_state(model):
    """The adapter weights of a ``peft`` model, copied to the CPU."""
    from peft import get_peft_model_state_dict

    return {name: tensor.detach().to("cpu", copy=True).contiguous()
            for name, tensor in get_peft_model_state_dict(model).items()}


def load_adapter_state(model, tensors):
    """Load :func:`adapter_state`'s weights into the adapters of
    :func:`adapt` (empty or not)."""
    from peft import set_peft_model_state_dict

    device = next(p for p in model.parameters() if not p.is_meta).device
    tensors = {k: v.to(device) for k, v in tensors.items()}
    meta = any(p.is_meta for p in model.parameters())
    result = set_peft_model_state_dict(model, tensors, low_cpu_mem_usage=meta)
    if result.unexpected_keys:
        raise ValueError(f"These adapter weights do not fit this backbone: unexpected "
                         f"{result.unexpected_keys[:5]}.")


# -- training data: token ids ---------------------------------------------------


class TokenIdDataset(Dataset):
    """Token ids of each row (and targets): the training data of the LoRA
    regime, where the states change at every step.

    Parameters
    ----------
    ids : list of list of int
    y, sample_weight : as in :class:`~sklearn_relish.training.TokenStateDataset`
    """

    def __init__(self, ids, y=None, sample_weight=None):
        self.ids = [torch.as_tensor(row, dtype=torch.long) for row in ids]
        self.lengths = [len(row) for row in self.ids]
        # Targets as the frozen regime's dataset holds them (the weight as
        # a last column, for WeightedHuberLoss).
        self.y = TokenStateDataset(self.ids, y, sample_weight).y

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        target = self.y[index] if self.y is not None else torch.zeros(1)
        return self.ids[index], target


def pad_ids(batch, pad_id):
    """Right-pad one batch of token ids, as the backbone's extraction does
    (positions stay 0..n-1); return skorch's ``(X, y)``, ``X`` a dict of
    ``input_ids`` and ``attention_mask``."""
    ids, targets = zip(*batch)
    lengths = torch.tensor([len(row) for row in ids])
    input_ids = torch.full((len(ids), int(lengths.max())), pad_id, dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
    mask = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
    return {"input_ids": input_ids, "attention_mask": mask}, torch.stack(targets)


# -- the trained module -----------------------------------------------------------


def as_stored(hidden, mask):
    """``hidden`` rounded as the token-state cache stores it (float16, or
    bfloat16 for a row beyond float16's range), with the gradient of the
    identity: training sees exactly what prediction, which reads stored
    states, will see."""
    with torch.no_grad():
        row_max = hidden.abs().masked_fill(~mask.unsqueeze(-1), 0).amax(dim=(1, 2))
        wide = (row_max > _FLOAT16_MAX)[:, None, None]
        stored = torch.where(wide, hidden.to(torch.bfloat16).to(hidden.dtype),
                             hidden.to(STORAGE_DTYPE).to(hidden.dtype))
    return hidden + (stored - hidden).detach()


class AdaptedModule(nn.Module):
    """A ``peft`` model and what is trained on it.

    Only the trainable parameters are in ``state_dict`` (skorch's early
    stopping copies it at each improvement: the frozen weights, which never
    change, would be copied for nothing), and ``train()`` leaves the
    backbone in evaluation mode, its own dropout off as when the states are
    extracted, except the adapters' dropout.
    """

    def __init__(self, adapted, dropouts):
        super().__init__()
        self.adapted = adapted
        self._dropouts = dropouts

    def train(self, mode=True):
        super().train(mode)
        self.adapted.eval()
        for dropout in self._dropouts:
            dropout.train(mode)
        return self

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        full = super().state_dict(prefix=prefix, keep_vars=keep_vars)
        keep = {prefix + name for name, p in self.named_parameters() if p.requires_grad}
        state = OrderedDict((k, v) for k, v in full.items() if k in keep)
        if destination is not None:
            destination.update(state)
            return destination
        return state

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if strict and result.unexpected_keys:
            raise RuntimeError(f"Unexpected keys {result.unexpected_keys[:5]}.")
        return result

    def _set_dropout_generator(self, generator):
        for dropout in self._dropouts:
            dropout.generator = generator

    def seed_dropouts(self, adapted, generator):
        """Give LoRA dropout a generator of its own, seeded from ``generator``
        and on the device the adapters run on (the backbone's)."""
        if generator is not None and any(d.p > 0 for d in self._dropouts):
            seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator))
            device = next(adapted.parameters()).device
            self._set_dropout_generator(torch.Generator(device=device).manual_seed(seed))


class AdaptedRelish(AdaptedModule):
    """The adapted backbone, the selected layers' token states, the RELISH head.

    ``forward(input_ids, attention_mask)`` runs the ``peft`` model, takes the
    hidden states of ``layer_indices`` combined by ``layer_mix`` as
    :class:`~sklearn_relish.backbone.Backbone` reads them
    (:func:`~sklearn_relish.layers.select_hidden`), rounds them as the cache
    stores states (:func:`as_stored`) and applies ``head``.
    """

    def __init__(self, adapted, head, layer_indices, n_layers, layer_mix="mean",
                 dropouts=()):
        super().__init__(adapted, list(dropouts))
        self.head = head
        self.layer_indices = tuple(layer_indices)
        self.n_layers = n_layers
        self.layer_mix = layer_mix

    @classmethod
    def build(cls, *, adapted, layer_indices, n_layers, layer_mix="mean", generator=None,
              **head_kwargs):
        """The module a :class:`LoraNet` trains: a fresh head drawn from
        ``generator`` as the frozen regime draws it, then the adapters from
        the same generator."""
        head = RelishHead(**head_kwargs, generator=generator)
        dropouts = init_adapters(adapted, generator)
        module = cls(adapted, head, layer_indices, n_layers, layer_mix, dropouts)
        module.seed_dropouts(adapted, generator)
        return module

    @property
    def generator(self):
        return self.head.generator

    @generator.setter
    def generator(self, value):
        # RelishNet seeds the head's dropout here; None forgets it and the
        # adapters' dropout generator alike once training is done.
        self.head.generator = value
        if value is None:
            self._set_dropout_generator(None)

    def forward(self, input_ids, attention_mask):
        output = self.adapted(
            input_ids=input_ids, attention_mask=attention_mask.long(),
            output_hidden_states=needs_hidden_states(self.layer_indices, self.n_layers))
        hidden = select_hidden(output, self.layer_indices, self.n_layers, self.layer_mix)
        return self.head(as_stored(hidden, attention_mask), attention_mask)


class LoraNet(RelishNet):
    """:class:`~sklearn_relish.training.RelishNet` for a module with frozen
    parts: the optimiser gets only the parameters that require gradients
    (the adapters and the head), so AdamW keeps no state and applies no
    weight decay for the frozen weights."""

    def get_all_learnable_params(self):
        for name, param in super().get_all_learnable_params():
            if param.requires_grad:
                yield name, param

    def get_iterator(self, dataset, training=False):
        # Training batches group rows of similar length
        # (LengthGroupedBatchSampler): every padded token costs a pass
        # through the whole backbone, forward and backward. Other iterators
        # keep the rows' order, which predictions are returned in.
        lengths = getattr(dataset, "lengths", None)
        if not training or lengths is None:
            return super().get_iterator(dataset, training)
        kwargs = self.get_params_for("iterator_train")
        if not kwargs.pop("shuffle", False):
            return super().get_iterator(dataset, training)
        batch_size = kwargs.pop("batch_size", self.batch_size)
        if batch_size == -1:
            batch_size = len(dataset)
        generator = self.generator_ if self.generator_ is not None else torch.default_generator
        sampler = LengthGroupedBatchSampler(lengths, batch_size, generator)
        return self.iterator_train(dataset, batch_sampler=sampler, generator=generator, **kwargs)


def lora_net(net, module, train_split):
    """A :class:`LoraNet` with every training setting of ``net`` (a head
    net built by :func:`sklearn_relish.fitting.head_net`: loss, optimiser, schedule,
    clipping, early stopping, batch size, epochs), training ``module``
    (called with ``generator=``) on token-id batches."""
    params = net.get_params(deep=False)
    params = {k: v for k, v in params.items()
              if not k.startswith("callbacks__")}
    params.update(module=module, train_split=train_split,
                  callbacks=copy.deepcopy(net.callbacks))
    return LoraNet(**params)


# -- the fitted adapters ---------------------------------------------------------


class LoraAdapters:
    """Fitted LoRA adapters: the settings, the weights, and (built on first
    use, never pickled) the backbone with them merged.

    Parameters
    ----------
    settings : LoraSettings
    tensors : dict of str to Tensor
        ``peft``'s adapter state dict, on the CPU.
    base_fingerprint : str
        Fingerprint of the frozen backbone the adapters were trained on.

    Attributes
    ----------
    fingerprint : str
        Hash of the base fingerprint, the settings and every adapter weight:
        the cache key of the adapted states, and the regressor's
        ``backbone_fingerprint_``.
    n_params : int
        Number of adapter weights.
    """

    def __init__(self, settings, tensors, base_fingerprint):
        self.settings = settings
        self.tensors = dict(tensors)
        self.base_fingerprint = base_fingerprint
        digest = hashlib.sha256()
        digest.update(json.dumps([base_fingerprint, settings.to_dict()],
                                 sort_keys=True).encode())
        for name in sorted(self.tensors):
            tensor = self.tensors[name]
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.float().numpy().tobytes())
        self.fingerprint = digest.hexdigest()
        self.n_params = int(sum(t.numel() for t in self.tensors.values()))
        self._merged = None
        self._lock = threading.Lock()

    def __repr__(self):
        return (f"LoraAdapters(rank={self.settings.rank}, alpha={self.settings.alpha}, "
                f"n_params={self.n_params})")

    def __getstate__(self):
        # The merged backbone is derived and as large as the backbone: it
        # is never stored; the first prediction after loading rebuilds it.
        state = self.__dict__.copy()
        state["_merged"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def describe(self):
        """What ``save`` writes to JSON (the tensors go to safetensors)."""
        return {"settings": self.settings.to_dict(), "base_fingerprint": self.base_fingerprint,
                "fingerprint": self.fingerprint, "n_params": self.n_params}

    @classmethod
    def from_saved(cls, described, tensors):
        adapters = cls(LoraSettings.from_dict(described["settings"]), tensors,
                       described["base_fingerprint"])
        if adapters.fingerprint != described["fingerprint"]:
            raise ValueError("The saved adapter weights do not match the fingerprint "
                             "recorded beside them: the file was changed or damaged.")
        return adapters

    def backbone(self, base, merged=None):
        """``base`` (a :class:`~sklearn_relish.backbone.Backbone`) with the
        adapters merged into a copy of its weights.

        Returns a shallow copy of ``base`` (same tokenizer, layer and
        settings) whose ``model`` is the merged copy and whose
        ``fingerprint`` is :attr:`fingerprint`; built once per base backbone
        and kept (not pickled). ``merged``, a model the caller already
        merged (``fit`` does), is used instead of building one.
        """
        with self._lock:
            if self._merged is None or self._merged[0] is not base:
                if merged is None:
                    merged = self._merge(base.model)
                view = copy.copy(base)
                view.model = merged
                view.fingerprint = self.fingerprint
                view.n_texts_encoded = 0
                self._merged = (base, view)
            return self._merged[1]

    def _merge(self, model):
        adapted = adapt(model, self.settings)
        load_adapter_state(adapted, self.tensors)
        return merge(adapted)


def merge(adapted):
    """The base model of a trained ``peft`` model with its adapters merged
    into the weights: a plain model, frozen, in evaluation mode."""
    merged = adapted.merge_and_unload()
    return merged.eval().requires_grad_(False)


def warm_start_changes(estimator):
    """What ``warm_start`` cannot continue from: a change of regime, or of
    the adapters' shape, since the fit."""
    fitted = getattr(estimator, "lora_adapters_", None)
    lora = estimator.backbone_tuning == "lora"
    if lora != (fitted is not None):
        return ["backbone_tuning"]
    if lora and fitted.settings != LoraSettings.of(estimator):
        return ["the LoRA settings (lora_rank, lora_alpha, lora_dropout or "
                "lora_target_modules)"]
    return []


# -- one fit ----------------------------------------------------------------------


class LoraTraining:
    """The LoRA regime's part of one :meth:`RelishRegressor.fit
    <sklearn_relish.RelishRegressor.fit>`.

    Built at the start of ``fit``: checks the parameters and that ``peft``
    is importable, before any backbone pass. :meth:`fit` then stands in for
    training the head on cached states: the rows' token ids through the
    adapted copy, the head and the adapters trained together.

    Attributes
    ----------
    adapters : LoraAdapters
        After :meth:`fit`.
    """

    def __init__(self, estimator):
        import_peft()
        from .fitting import anchor_mode

        if anchor_mode(estimator) is not None:
            raise ValueError(
                f"anchor={estimator.anchor!r} combines the head with a ridge on the "
                "frozen backbone's pooled states, but with backbone_tuning='lora' the "
                "head reads the adapted backbone's states. Set anchor='auto' or None (the "
                "head alone, as in the paper; shrinkage still applies).")
        self.estimator = estimator
        self.settings = LoraSettings.of(estimator)
        self.adapters = None
        self._ids = self._view = None

    def token_ids(self, backbone, prompts, source):
        """The rows' token ids, from the prompts the frozen pass encoded
        (over-long text fields shortened the same way)."""
        estimator = self.estimator
        if estimator.truncation:
            fields, template, columns = source
            prompts, _ = shorten_fields(prompts, fields, template, backbone.tokenizer,
                                        backbone.config.max_length, column_names=columns)
        return backbone.tokenize(prompts, truncation=estimator.truncation)[0]

    def fit(self, net, backbone, prompts, source, target, train, valid, previous=None):
        """Train adapters and head; leave the head in ``net``.

        Parameters
        ----------
        net : RelishNet
            The estimator's head net (with its ``generator_``); its settings
            train the adapted module, and it receives the trained head
            (``net.module_``), the history and whether training was
            interrupted, as if it had been trained itself.
        backbone : Backbone
            The shared frozen backbone (copied, never modified).
        prompts, source
            The rendered prompts and ``(fields, template, columns)``.
        target : ndarray of shape (n_samples, n_outputs)
            What the head learns (standardised).
        train, valid : (rows, sample_weight)
            Row numbers and their weights (None: unweighted).
        previous : RelishNet or None
            The fitted head net to continue from (``warm_start``).

        Returns
        -------
        TokenStateDataset or None
            The held-out rows' states from the trained, merged backbone,
            with their targets and weights (for ``shrinkage``); None
            without held-out rows.
        """
        from skorch.helper import predefined_split

        ids = self.token_ids(backbone, prompts, source)
        (train_rows, train_weight), (valid_rows, valid_weight) = train, valid

        def dataset(rows, weight):
            return TokenIdDataset([ids[i] for i in rows], target[rows], weight)

        train_split = None
        if len(valid_rows):
            train_split = predefined_split(dataset(valid_rows, valid_weight))
        adapted = adapt(backbone.model, self.settings)
        module = functools.partial(AdaptedRelish.build, adapted=adapted,
                                   layer_indices=backbone.layer_indices,
                                   n_layers=backbone.n_layers,
                                   layer_mix=backbone.layer_mix)
        trainer = lora_net(net, module, train_split)
        collate = functools.partial(pad_ids, pad_id=backbone.pad_id)
        trainer.set_params(iterator_train__collate_fn=collate,
                           iterator_valid__collate_fn=collate)
        trainer.generator_ = net.generator_
        train_dataset = dataset(train_rows, train_weight)
        try:
            if previous is None:
                trainer.fit(train_dataset, y=None)
            else:
                trainer.initialize()
                trainer.module_.head.load_state_dict(previous.module_.state_dict())
                trainer.module_.head.reset_anchor()
                load_adapter_state(adapted, self.estimator.lora_adapters_.tensors)
                trainer.partial_fit(train_dataset, y=None)
        finally:
            trainer.forget_generator()

        head = trainer.module_.head
        net.initialize()
        net.module_.load_state_dict(head.state_dict())
        net.history_ = trainer.history_
        net.interrupted_ = trainer.interrupted_
        if trainer.interrupted_:
            return None
        tensors = adapter_state(adapted)
        del trainer, module
        self.adapters = LoraAdapters(self.settings, tensors, backbone.fingerprint)
        view = self.adapters.backbone(backbone, merged=merge(adapted))
        self._ids, self._view = ids, view
        if not len(valid_rows):
            return None
        states = [None] * len(valid_rows)
        for index, tensor in view.iter_states([ids[i] for i in valid_rows],
                                              batch_size=self.estimator.encode_batch_size):
            states[index] = tensor
        return TokenStateDataset(states, target[valid_rows], valid_weight)

    def pooled_features(self):
        """Pooled states (mean over tokens and last token, as
        :func:`~sklearn_relish.anchor.pooled_features`) of every row, from
        the trained backbone with its adapters merged: the features that
        :meth:`~sklearn_relish.RelishRegressor.pooled_states` gives after
        the fit, for a model fitted on the training rows beside the head
        that must read at ``fit`` what it will read at ``predict`` (the
        frozen states the fit began with are not those). One forward pass
        over the rows, on demand, after :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples, 2 * d_model), float64
        """
        rows = [None] * len(self._ids)
        for index, tensor in self._view.iter_states(
                self._ids, batch_size=self.estimator.encode_batch_size):
            rows[index] = pooled_features([tensor])[0]
        return np.stack(rows)
