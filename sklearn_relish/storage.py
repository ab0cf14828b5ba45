"""How token states are stored: float16, or int8 with one scale per token.

The cache keeps every token's state, so its size grows as tokens x
``d_model``: in float16, 2 bytes per value, 8 KiB per token on a 4096-wide
backbone (100,000 texts of 60 tokens: about 49 GB). ``"int8"`` halves that:
each token's vector is quantised symmetrically to int8 with its own scale
(its largest absolute value / 127), ``d_model + 2`` bytes per token.

A stored entry is one tensor, whatever the storage, so the memory and disk
caches hold it without knowing how it was made:

- ``"float16"``: the states as the backbone hands them over (float16, or
  bfloat16 for a text with a value beyond float16's range);
- ``"int8"``: an int8 tensor of shape ``(tokens, d_model + 2)``: the
  quantised values, then the two bytes of the token's scale in bfloat16.
  bfloat16 has float32's range, so no scale overflows; the values are
  quantised with the already rounded scale, so its rounding adds no error
  (the error of a value is at most half a step, ``scale / 2``).

:func:`unpack` turns an entry back into states the head reads (float16, or
bfloat16 where a value exceeds float16's range). Entries of different
storages never mix: :func:`storage_fingerprint` gives each its own cache
keys and directory.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["STORAGES", "bytes_per_token", "pack", "storage_fingerprint", "unpack"]

#: The storages ``RelishRegressor(state_storage=...)`` accepts.
STORAGES = ("float16", "int8")

_INT8_MAX = 127
_FLOAT16_MAX = 65504.0
_SCALE_DTYPE = torch.bfloat16
_SCALE_BYTES = 2


def _check(storage):
    if storage not in STORAGES:
        raise ValueError(f"storage={storage!r} is not one of {list(STORAGES)}.")


def storage_fingerprint(fingerprint, storage):
    """The cache fingerprint of a backbone's states in ``storage``.

    float16, the first storage, keeps the backbone's own fingerprint, so
    caches written before storages existed stay valid; every other storage
    gets a fingerprint of its own.

    >>> storage_fingerprint("abc", "float16")
    'abc'
    >>> storage_fingerprint("abc", "int8") != "abc"
    True
    """
    _check(storage)
    if storage == "float16":
        return fingerprint
    return hashlib.sha256(f"{fingerprint}\0storage={storage}".encode()).hexdigest()


def bytes_per_token(d_model, storage, groups=1):
    """Payload bytes of one token's state in ``storage`` (headers aside),
    for ``groups`` layers kept side by side (a learned layer mix).

    >>> bytes_per_token(4096, "float16"), bytes_per_token(4096, "int8")
    (8192, 4098)
    >>> bytes_per_token(576, "float16", groups=15), bytes_per_token(576, "int8", groups=15)
    (17280, 8670)
    """
    _check(storage)
    per_layer = 2 * d_model if storage == "float16" else d_model + _SCALE_BYTES
    return groups * per_layer


def pack(states, storage, groups=1):
    """The entry the caches keep for ``states`` of shape (tokens, d_model).

    ``groups``: the states hold that many layers side by side (a learned
    layer mix, :mod:`sklearn_relish.layers`); int8 gives each layer of each
    token its own scale, as layers differ in magnitude, and stores
    ``groups * (d_model + 2)`` bytes per token.

    >>> states = torch.tensor([[127.0, -3.0], [254.0, 2.0], [0.0, 0.0]])
    >>> packed = pack(states, "int8")
    >>> packed.dtype, tuple(packed.shape)
    (torch.int8, (3, 4))
    >>> unpack(packed, "int8").tolist()
    [[127.0, -3.0], [254.0, 2.0], [0.0, 0.0]]
    """
    _check(storage)
    if storage == "float16":
        return states
    n_tokens = states.shape[0]
    values = states.float().reshape(n_tokens * groups, -1)
    absmax = values.abs().amax(dim=1, keepdim=True)
    scale = (absmax / _INT8_MAX).to(_SCALE_DTYPE)
    # An all-zero token: any scale will do, and 1 avoids 0 / 0.
    step = torch.where(scale > 0, scale.float(), torch.ones_like(absmax))
    # With the rounded scale, a value can sit a hair past 127 steps.
    quantised = torch.round(values / step).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return torch.cat([quantised, scale.view(torch.int8)], dim=1).reshape(n_tokens, -1)


def unpack(entry, storage, groups=1):
    """States of shape (tokens, groups * d_model) from an entry made by
    :func:`pack`: float16, or bfloat16 for an entry with a value beyond
    float16's range."""
    _check(storage)
    if storage == "float16":
        return entry
    n_tokens = entry.shape[0]
    entry = entry.reshape(n_tokens * groups, -1)
    quantised = entry[:, :-_SCALE_BYTES]
    scale = entry[:, -_SCALE_BYTES:].contiguous().view(_SCALE_DTYPE).float()
    values = (quantised.float() * scale).reshape(n_tokens, -1)
    wide = values.numel() > 0 and bool(values.abs().max() > _FLOAT16_MAX)
    return values.to(torch.bfloat16 if wide else torch.float16)
