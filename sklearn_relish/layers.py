"""Which hidden layers the head reads, and how several are combined.

A decoder's last layer is the one most specialised for predicting the next
token; intermediate layers often carry more of a text's meaning (Skean et
al., ICML 2025). ``RelishRegressor(layer=...)`` therefore takes

- an index into the model's hidden states (0 the embeddings, 1 the first
  layer, -1 the last), as before;
- a list of indices;
- a name from the authors' released code, resolved against the backbone's
  depth ``n`` (the number of transformer layers; index 0, the embeddings,
  is never named): ``"first"`` = 1, ``"quarter"`` = round(n/4),
  ``"middle"`` = round(n/2), ``"three_quarter"`` = round(3n/4),
  ``"penultimate"`` = n - 1, ``"last"`` = n, ``"last4"`` = n-3 ... n,
  ``"all"`` = 1 ... n; and one of this package's, ``"middle_half"`` =
  round(n/4) ... round(3n/4), the middle half of the depth.

Several layers are combined (``layer_mix``) either by a plain **mean** of
their token states, computed in float32 by the backbone before the states
are stored, so that the cache and the head see one ``(tokens, d_model)``
tensor per text, as for one layer; or by a **learned** softmax mix inside
the head (an ELMo-style scalar mix without a global scale, its logits
initialised to zero so that it starts as the mean), for which the backbone
hands over every selected layer side by side, ``(tokens, n_selected *
d_model)``, and the cache stores them all.

Rounding is Python's (half to even), as in the authors' code.
"""

from __future__ import annotations

from numbers import Integral

import torch

__all__ = ["LAYER_MIXES", "LAYER_NAMES", "mix_width", "resolve_layers", "select_hidden"]

#: How several layers are combined: ``layer_mix``'s values.
LAYER_MIXES = ("mean", "learned")


def _fraction(f):
    return lambda n: (max(1, min(n, round(f * n))),)


#: Layer names and the hidden-state indices they stand for, for a backbone
#: of ``n`` transformer layers.
LAYER_NAMES = {
    "first": lambda n: (1,),
    "quarter": _fraction(0.25),
    "middle": _fraction(0.5),
    "three_quarter": _fraction(0.75),
    "penultimate": lambda n: (max(1, n - 1),),
    "last": lambda n: (n,),
    "last4": lambda n: tuple(range(max(1, n - 3), n + 1)),
    "middle_half": lambda n: tuple(range(_fraction(0.25)(n)[0], _fraction(0.75)(n)[0] + 1)),
    "all": lambda n: tuple(range(1, n + 1)),
}


def check_layer(layer):
    """Raise a ``ValueError`` naming the fix when ``layer`` is not an index,
    a non-empty list of distinct indices or a name; return it as an int, a
    tuple of ints or a name.

    >>> check_layer([3, -1])
    (3, -1)
    >>> check_layer("middel")
    Traceback (most recent call last):
    ...
    ValueError: layer='middel' is not a layer name: use one of ['all', 'first', 'last', 'last4', 'middle', 'middle_half', 'penultimate', 'quarter', 'three_quarter'] (did you mean 'middle'?), an index such as -1, or a list of indices.
    """
    if isinstance(layer, str):
        if layer in LAYER_NAMES:
            return layer
        import difflib

        close = difflib.get_close_matches(layer, LAYER_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"layer={layer!r} is not a layer name: use one of "
                         f"{sorted(LAYER_NAMES)}{hint}, an index such as -1, or a list "
                         "of indices.")
    if isinstance(layer, Integral) and not isinstance(layer, bool):
        return int(layer)
    if isinstance(layer, (list, tuple)):
        if not layer or not all(isinstance(v, Integral) and not isinstance(v, bool)
                                for v in layer):
            raise ValueError(f"layer={layer!r}: a list of layers must hold at least one "
                             "index, and only integers (0 = embeddings, -1 = last layer).")
        return tuple(int(v) for v in layer)
    raise ValueError(f"layer={layer!r} must be an index (int), a list of indices or a "
                     f"name in {sorted(LAYER_NAMES)}.")


def resolve_layers(layer, n_layers):
    """The hidden-state indices (0 ... ``n_layers``) that ``layer`` selects,
    sorted, without repeats.

    >>> resolve_layers(-1, 30), resolve_layers("middle", 30), resolve_layers([15, -1], 30)
    ((30,), (15,), (15, 30))
    >>> resolve_layers("middle_half", 30), resolve_layers("last4", 6)
    ((8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22), (3, 4, 5, 6))
    >>> resolve_layers(31, 30)
    Traceback (most recent call last):
    ...
    ValueError: layer=31 is out of range: this backbone has 30 layers, so an index must be in [-31, 30] (0 = embeddings, -1 = last layer).
    """
    layer = check_layer(layer)
    if isinstance(layer, str):
        return tuple(sorted(set(LAYER_NAMES[layer](n_layers))))
    indices = (layer,) if isinstance(layer, int) else layer
    n_states = n_layers + 1
    for index in indices:
        if not -n_states <= index < n_states:
            raise ValueError(
                f"layer={index} is out of range: this backbone has {n_layers} layers, so "
                f"an index must be in [{-n_states}, {n_layers}] (0 = embeddings, -1 = last "
                "layer).")
    resolved = sorted({index % n_states for index in indices})
    if len(resolved) != len(indices):
        raise ValueError(f"layer={list(indices)} names the same layer twice.")
    return tuple(resolved)


def mix_width(indices, mix):
    """How many ``d_model``-wide blocks a token's stored state holds: 1
    for one layer or a mean, one per layer for a learned mix.

    >>> mix_width((15,), "learned"), mix_width((8, 9), "mean"), mix_width((8, 9), "learned")
    (1, 1, 2)
    """
    return len(indices) if (mix == "learned" and len(indices) > 1) else 1


def select_hidden(output, indices, n_layers, mix):
    """The token states a model ``output`` gives for ``indices``.

    ``output`` is what a Hugging Face model returns, with ``hidden_states``
    when a layer below the last is selected. One layer: its states as they
    are (bit for bit what earlier versions read). Several: their mean,
    computed in float32, with ``mix="mean"``; side by side,
    ``(batch, tokens, len(indices) * d_model)``, with ``mix="learned"``.
    """
    if indices == (n_layers,):
        return output.last_hidden_state
    hidden = output.hidden_states
    if len(indices) == 1:
        return hidden[indices[0]]
    if mix == "mean":
        total = hidden[indices[0]].float()
        for index in indices[1:]:
            total = total + hidden[index].float()
        return (total / len(indices)).to(hidden[indices[0]].dtype)
    return torch.cat([hidden[index] for index in indices], dim=-1)


def needs_hidden_states(indices, n_layers):
    """Whether the model must return every layer's states (all but the last
    layer alone, which ``last_hidden_state`` gives)."""
    return indices != (n_layers,)
