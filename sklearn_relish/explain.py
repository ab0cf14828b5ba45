"""What the latent reads: the head's attention over each input's tokens.

At every refinement step the latent state attends over the prompt's token
states; :func:`attention_maps` returns those attention weights, averaged over the
latent vectors and the attention heads, next to the decoded tokens they
fall on and the prediction each step leads to. The estimator's
:meth:`~sklearn_relish.RelishRegressor.explain` calls it.

Attention says where the head looked, not why the number is what it is:
it is a reading aid, as in the paper's own figures, not an attribution
method. With the default ``anchor="stack"`` the prediction also has a
ridge part that reads the pooled states; ``head_weight`` says how much of
the prediction the head carries (0 when it was switched off).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .inputs import template_spans
from .training import TokenStateDataset, pad_collate

__all__ = ["TokenAttention", "attention_maps"]


@dataclass(frozen=True, eq=False)
class TokenAttention:
    """The head's attention over one input's tokens, step by step.

    Attributes
    ----------
    prompt : str
        The prompt the backbone read (after any shortening of long fields).
    tokens : list of str
        The prompt's tokens, decoded one by one, special tokens included.
    attention : ndarray of shape (n_iterations, n_tokens)
        At each refinement step, the attention of the latent over the
        tokens, averaged over latent vectors and heads; each row sums to 1.
    staged_predictions : ndarray of shape (n_iterations,) or (n_iterations, n_outputs)
        The prediction after each step, as
        :meth:`~sklearn_relish.RelishRegressor.staged_predict` gives it; the
        last row is :meth:`~sklearn_relish.RelishRegressor.predict`.
    head_weight : ndarray of shape (n_outputs,)
        The factor on the head's output in the prediction
        (``shrinkage_``): 1 for the plain head, 0 when the prediction is the
        ridge anchor alone and the attention does not move it.
    from_text : ndarray of bool, shape (n_tokens,) or None
        Whether each token comes from the input's text (True) or from the
        prompt template and special tokens (False); None when the tokenizer
        cannot map tokens to characters.
    """

    prompt: str
    tokens: list
    attention: np.ndarray
    staged_predictions: np.ndarray
    head_weight: np.ndarray
    from_text: np.ndarray = None

    def top_tokens(self, k=10, step=-1, template=False):
        """The ``k`` tokens with the most attention at ``step``.

        Parameters
        ----------
        k : int
        step : int
            Refinement step (-1: the last).
        template : bool, default=False
            Include the prompt template's own tokens ("Predict", " score",
            the begin-of-text token): a latent often parks attention there,
            which says little about the input.

        Returns
        -------
        list of (int, str, float)
            Position, token and weight, the heaviest first.
        """
        weights = self.attention[step]
        order = np.argsort(-weights, kind="stable")
        if not template and self.from_text is not None:
            order = order[self.from_text[order]]
        return [(int(i), self.tokens[i], float(weights[i])) for i in order[:k]]

    def plot(self, ax=None, max_tokens=80, cmap="Blues"):
        """Draw the attention as a heat map: steps down, tokens across.

        Needs matplotlib. Shows the first ``max_tokens`` tokens.

        Returns
        -------
        matplotlib.axes.Axes
        """
        import matplotlib.pyplot as plt

        n = min(len(self.tokens), max_tokens)
        if ax is None:
            _, ax = plt.subplots(figsize=(max(6.0, 0.28 * n), 0.5 + 0.45 * len(self.attention)))
        image = ax.imshow(self.attention[:, :n], aspect="auto", cmap=cmap, vmin=0)
        ax.set_xticks(range(n))
        ax.set_xticklabels([_printable(t) for t in self.tokens[:n]], rotation=90,
                           fontsize=8)
        ax.set_yticks(range(len(self.attention)))
        staged = np.asarray(self.staged_predictions).reshape(len(self.attention), -1)[:, 0]
        ax.set_yticklabels([f"step {i + 1}: {p:.2f}" for i, p in enumerate(staged)],
                           fontsize=8)
        ax.figure.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
        return ax


def _printable(token):
    token = token.replace("\n", "\\n").replace("\t", "\\t")
    return token if token.strip() else repr(token)


def attention_maps(net, backbone, prompts, states, template, head_weight, unscale,
                   truncation=True):
    """Per prompt, the head's attention over its tokens.

    Parameters
    ----------
    net : the fitted head's net (``RelishRegressor.net_``)
    backbone : Backbone
        The backbone whose tokenizer made ``states`` (for the tokens' text).
    prompts : list of str
        Final prompts (already shortened to the backbone's ``max_length``).
    states : list of Tensor
        Their token states, as the head reads them.
    template : str
        The prompt template, to tell the text's tokens from the template's.
    head_weight : array-like of shape (n_outputs,)
        The head's weight in the prediction (``shrinkage_``).
    unscale : callable
        Standardised predictions to the target's scale.
    truncation : bool, default=True

    Returns
    -------
    list of TokenAttention
        One per prompt, in order.
    """
    ids, _ = backbone.tokenize(prompts, truncation=truncation)
    module = net.module_
    device = next(module.parameters()).device
    dataset = TokenStateDataset(states)
    head_weight = np.asarray(head_weight, dtype=float)
    out = []
    with torch.inference_mode():
        for row, prompt in enumerate(prompts):
            batch, _ = pad_collate([dataset[row]])
            predictions, attentions = module.refine(batch["states"].to(device),
                                                    batch["mask"].to(device),
                                                    need_weights=True)
            n_tokens = len(ids[row])
            if states[row].shape[0] != n_tokens:
                raise RuntimeError(
                    f"Row {row}: the cached token states have {states[row].shape[0]} "
                    f"positions but the prompt has {n_tokens} tokens; the cache "
                    "does not match the tokenizer. Clear it with "
                    "sklearn_relish.clear_cache() and try again.")
            attention = torch.stack([a[0].mean(0)[:n_tokens] for a in attentions])
            staged = torch.stack([p[0] for p in predictions]).float().cpu().numpy()
            staged = unscale(staged)
            tokens = [backbone.tokenizer.decode([i], clean_up_tokenization_spaces=False)
                      for i in ids[row]]
            out.append(TokenAttention(prompt=prompt, tokens=tokens,
                                      attention=attention.float().cpu().numpy(),
                                      staged_predictions=staged, head_weight=head_weight,
                                      from_text=_from_text(prompt, template, ids[row],
                                                           backbone.tokenizer)))
    return out


def _from_text(prompt, template, ids, tokenizer):
    """Per token of ``ids``, whether it overlaps the fields' text rather than
    the template's or a special token; None without an offset mapping."""
    try:
        encoded = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True,
                            truncation=True, max_length=len(ids))
    except (NotImplementedError, ValueError, TypeError):
        return None
    if list(encoded["input_ids"]) != list(ids):
        return None
    spans = template_spans(prompt, template)
    special = set(tokenizer.all_special_ids)
    mask = []
    for token, (start, end) in zip(ids, encoded["offset_mapping"]):
        in_template = any(a <= start and end <= b for a, b in spans)
        mask.append(end > start and token not in special and not in_template)
    return np.array(mask, dtype=bool)
