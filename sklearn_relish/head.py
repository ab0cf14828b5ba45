"""The RELISH head: a latent state refined by cross-attention over token states.

Plain PyTorch, no scikit-learn: the estimator builds it, skorch trains it.

The head reads the frozen backbone's token-level hidden states ``H`` (one
vector of size ``d_model`` per token) and

1. projects every token once to the latent width, ``C = H W + b``;
2. starts from a learned latent ``z`` (``n_latents`` vectors of size
   ``latent_dim``, initialised from N(0, 0.02²));
3. refines ``z`` ``n_iterations`` times with a block of cross-attention
   (the latent reads the tokens; padding is masked out) and a GELU
   feed-forward layer, each followed by a residual connection and LayerNorm;
4. maps the final latent (mean over latents) to the prediction with one
   linear layer;
5. optionally adds that prediction, scaled by a fixed ``output_scale``, to a
   fixed linear map of the pooled states (the ridge *anchor*, see
   :mod:`sklearn_relish.anchor`): both are buffers fitted in closed form by
   the estimator, not trained; zero anchor and unit scale, the defaults,
   give the head exactly as the paper describes it.

Keys and values are never computed for the tokens (see
:class:`ProjectedTokens`): the latent's attention needs only the dot
products of the projected tokens with a few query directions and their
attention-weighted sum, so the key and value projections move to the latent
side, and the input projection is either applied once or folded there too,
whichever costs less for the batch. On the small backbones of the
benchmarks this makes a training step 2-6x faster than projecting every
token to keys and values in every step
(``benchmarks/results/head_speed.md``), with the same parameters and the
same results up to float rounding (``refine(..., factored=False)`` runs the
direct computation).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .anchor import pool_states

__all__ = ["ProjectedTokens", "RefinementBlock", "RelishHead",
           "count_trainable_parameters", "token_state_statistics"]


class ProjectedTokens:
    """Token states seen through the head's input projection.

    Stands for ``C = H W^T + b`` (``H`` the standardised token states, ``W``
    and ``b`` the head's ``projection``). Cross-attention from a handful of
    latent queries only needs

    - ``dot(u)``: ``C u`` for query directions ``u`` in the latent space,
      which equals ``H (W^T u) + b . u``;
    - ``pool(a)``: ``sum_t a_t C_t`` for attention weights ``a``, which equals
      ``(a H) W^T + (sum_t a_t) b``.

    Either ``C`` is computed once (``tokens x d_model x latent_dim``
    multiply-adds per row) and read by every step, or it is never computed
    and each step works on ``H`` through the right-hand sides (about
    ``2 x n_directions x d_model x (latent_dim + tokens)`` per step, with
    ``n_directions`` = heads x latents). The cheaper one is chosen per batch;
    the second path's count is doubled because its thin matrix products run
    at about half the speed of the projection's one large product on a CPU
    (``python -m benchmarks.studies.head_speed``). Long inputs and narrow backbones
    favour the second, short inputs and wide backbones the first.

    Parameters
    ----------
    states : Tensor of shape (batch, tokens, d_model)
    projection : nn.Linear
    n_directions : int
        Query directions per step (heads x latents).
    n_steps : int
        Refinement steps that will read the tokens.
    """

    def __init__(self, states, projection, n_directions, n_steps):
        self.states = states
        self.weight = projection.weight  # (latent_dim, d_model)
        self.bias = projection.bias
        latent_dim, d_model = self.weight.shape
        n_tokens = states.shape[1]
        project_once = n_tokens * d_model * latent_dim
        never = 2 * n_steps * 2 * n_directions * d_model * (latent_dim + n_tokens)
        self.projected = False
        if project_once <= never:
            self.states, self.projected = self.materialize(), True

    def dot(self, u):
        """``C u``: (batch, m, latent_dim) -> (batch, m, tokens)."""
        if self.projected:
            return u @ self.states.transpose(1, 2)
        scores = (u @ self.weight) @ self.states.transpose(1, 2)
        return scores + (u @ self.bias).unsqueeze(-1)

    def pool(self, weights):
        """``sum_t a_t C_t``: (batch, m, tokens) -> (batch, m, latent_dim)."""
        if self.projected:
            return weights @ self.states
        pooled = (weights @ self.states) @ self.weight.T
        return pooled + weights.sum(-1, keepdim=True) * self.bias

    def materialize(self):
        """``C`` itself."""
        if self.projected:
            return self.states
        return self.states @ self.weight.T + self.bias


class RefinementBlock(nn.Module):
    """One refinement step: cross-attention then feed-forward, post-LayerNorm.

    Parameters
    ----------
    latent_dim : int
        Width of the latent state and of the projected token states.
    n_heads : int
        Number of attention heads; must divide ``latent_dim``.
    ffn_multiplier : int
        The feed-forward layer is ``latent_dim -> ffn_multiplier * latent_dim
        -> latent_dim``.
    dropout : float
        Dropout on the attention weights and the feed-forward output.
    """

    def __init__(self, latent_dim, n_heads, ffn_multiplier=4, dropout=0.0):
        super().__init__()
        self.attention = nn.MultiheadAttention(
            latent_dim, n_heads, dropout=dropout, batch_first=True
        )
        self.norm_attention = nn.LayerNorm(latent_dim)
        self.ffn = nn.Sequential(
            nn.Linear(latent_dim, ffn_multiplier * latent_dim),
            nn.GELU(),
            nn.Linear(ffn_multiplier * latent_dim, latent_dim),
        )
        self.dropout = dropout
        self.norm_ffn = nn.LayerNorm(latent_dim)

    def reset_parameters(self, generator=None):
        """PyTorch's own initialisation of these layers, in the order the
        constructor builds them, drawing from ``generator``."""
        attention = self.attention
        _reset_linear(attention.out_proj, generator)
        nn.init.xavier_uniform_(attention.in_proj_weight, generator=generator)
        nn.init.zeros_(attention.in_proj_bias)
        nn.init.zeros_(attention.out_proj.bias)
        self.norm_attention.reset_parameters()
        _reset_linear(self.ffn[0], generator)
        _reset_linear(self.ffn[2], generator)
        self.norm_ffn.reset_parameters()

    def forward(self, z, tokens, key_padding_mask, need_weights=False, generator=None):
        """One step; ``tokens`` is a :class:`ProjectedTokens`.

        The same arithmetic as ``nn.MultiheadAttention(z, C, C)`` with the
        key and value projections moved onto the query and the pooled
        output: per head, ``q . (C_t W_k^T + b_k) = C_t . (W_k^T q) + q . b_k``
        and ``sum_t a_t (C_t W_v^T + b_v) = (sum_t a_t C_t) W_v^T + (sum_t
        a_t) b_v``. The attention module stays the holder of the weights.
        Dropout, in training, draws its masks from ``generator``.
        """
        attention = self.attention
        batch, n_latents, width = z.shape
        n_heads = attention.num_heads
        head_dim = width // n_heads
        w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
        b_q, _, b_v = attention.in_proj_bias.chunk(3)
        q = (z @ w_q.T + b_q).view(batch, n_latents, n_heads, head_dim)
        q = q * head_dim ** -0.5
        directions = torch.einsum("bmhd,hde->bmhe", q, w_k.view(n_heads, head_dim, width))
        m = n_latents * n_heads
        # q . b_k is the same for every token, so the softmax ignores it.
        scores = tokens.dot(directions.reshape(batch, m, width))
        scores = scores.masked_fill(key_padding_mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        weights = _dropout(weights, attention.dropout, self.training, generator)
        pooled = tokens.pool(weights).view(batch, n_latents, n_heads, width)
        total = weights.sum(-1).view(batch, n_latents, n_heads, 1)
        values = (torch.einsum("bmhe,hde->bmhd", pooled, w_v.view(n_heads, head_dim, width))
                  + total * b_v.view(n_heads, head_dim))
        attended = attention.out_proj(values.reshape(batch, n_latents, width))
        z = self.norm_attention(z + attended)
        z = self.norm_ffn(z + _dropout(self.ffn(z), self.dropout, self.training, generator))
        if need_weights:
            return z, weights.view(batch, n_latents, n_heads, -1).mean(2)
        return z, None

    def forward_unfactored(self, z, context, key_padding_mask, need_weights=False):
        """The direct computation on materialised ``context`` (for checks)."""
        attended, weights = self.attention(
            z,
            context,
            context,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            average_attn_weights=True,
        )
        z = self.norm_attention(z + attended)
        z = self.norm_ffn(z + _dropout(self.ffn(z), self.dropout, self.training, None))
        return z, weights


def _reset_linear(linear, generator):
    """``nn.Linear.reset_parameters``, drawing from ``generator``."""
    nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(linear.in_features) if linear.in_features > 0 else 0
    nn.init.uniform_(linear.bias, -bound, bound, generator=generator)


def _dropout(x, p, training, generator):
    """Inverted dropout whose mask comes from ``generator`` (torch's global
    one when None), so that fits running side by side in threads do not
    draw from each other's stream."""
    if not training or p == 0:
        return x
    keep = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator)
    return x * keep / (1.0 - p)


class RelishHead(nn.Module):
    """Latent iterative state head (Su & Lease, 2026).

    Parameters
    ----------
    d_model : int
        Width of the backbone's hidden states.
    latent_dim : int, default=256
        Width ``d_h`` of the latent state.
    n_iterations : int, default=3
        Number of refinement steps ``L``.
    n_heads : int, default=8
        Attention heads of the cross-attention.
    n_latents : int, default=1
        Number of learned latent vectors; they are mean-pooled before the
        regressor.
    share_weights : bool, default=False
        If True, one block is applied ``n_iterations`` times (the paper's
        wording); if False, each step has its own block (the authors' code).
    dropout : float, default=0.0
        Dropout inside the blocks.
    n_outputs : int, default=1
        Number of regression targets.
    state_mean, state_std : Tensor of shape (n_mixed_layers * d_model,) or None
        Fixed (non-trainable) statistics of the token states: each feature
        is standardised as ``(h - state_mean) / state_std`` before the
        projection. None means no shift (zeros) and no scaling (ones). They
        are buffers, so they travel with ``state_dict``.
    n_mixed_layers : int, default=1
        Layers side by side in each token's state (``n_mixed_layers *
        d_model`` features): the head mixes them, each standardised, with
        softmax weights learned with the rest (``layer_logits``, initialised
        to zero, so the mix starts as their mean) before the projection. 1:
        one layer (or a mean made by the backbone), no mixing weights.
    generator : torch.Generator, optional
        Draws the initial weights (torch's global generator when None), in
        the same order and from the same distributions as PyTorch's layers
        do, so ``torch.manual_seed(s)`` then ``RelishHead(...)`` and
        ``RelishHead(..., generator=torch.Generator().manual_seed(s))`` give
        the same head. Not kept: set the attribute ``generator`` to have
        dropout draw from a generator in training.

    Buffers ``anchor_weight`` (n_outputs, 2 * d_model), ``anchor_bias``
    (n_outputs,) and ``output_scale`` (n_outputs,) make the output
    ``pooled @ anchor_weight.T + anchor_bias + output_scale * regressor(z)``,
    ``pooled`` being the raw states' mean over tokens and last token
    (:func:`~sklearn_relish.anchor.pool_states`). They start at zero, zero
    and one (the plain head) and are set with :meth:`set_anchor`.

    Examples
    --------
    >>> import torch
    >>> head = RelishHead(d_model=4096)
    >>> count_trainable_parameters(head)
    3418625
    >>> states = torch.randn(2, 5, 4096)
    >>> mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    >>> head(states, mask).shape
    torch.Size([2, 1])
    """

    def __init__(
        self,
        d_model,
        latent_dim=256,
        n_iterations=3,
        n_heads=8,
        n_latents=1,
        share_weights=False,
        dropout=0.0,
        n_outputs=1,
        state_mean=None,
        state_std=None,
        generator=None,
        n_mixed_layers=1,
    ):
        super().__init__()
        if latent_dim % n_heads:
            raise ValueError(
                f"latent_dim={latent_dim} must be divisible by n_heads={n_heads}."
            )
        self.n_iterations = n_iterations
        self.share_weights = share_weights
        self.n_mixed_layers = int(n_mixed_layers)
        width = self.n_mixed_layers * d_model
        self.register_buffer("state_mean", _statistic(state_mean, width, 0.0))
        self.register_buffer("state_std", _statistic(state_std, width, 1.0))
        # Built without drawing anything (the meta device holds no data),
        # then initialised from ``generator`` alone.
        with torch.device("meta"):
            self.projection = nn.Linear(d_model, latent_dim)
            n_blocks = 1 if share_weights else n_iterations
            self.blocks = nn.ModuleList(
                RefinementBlock(latent_dim, n_heads, dropout=dropout)
                for _ in range(n_blocks)
            )
            self.regressor = nn.Linear(latent_dim, n_outputs)
        for module in (self.projection, self.blocks, self.regressor):
            module.to_empty(device="cpu")
        self.latent = nn.Parameter(torch.empty(n_latents, latent_dim))
        if self.n_mixed_layers > 1:
            self.layer_logits = nn.Parameter(torch.zeros(self.n_mixed_layers))
        else:
            self.layer_logits = None
        self.reset_parameters(generator)
        #: Dropout's masks come from this generator in training (None:
        #: torch's global one). The estimator sets it for one fit.
        self.generator = None
        # Double precision: the coefficients undo a standardisation of the
        # pooled states, so float32 would magnify rounding.
        self.register_buffer("anchor_weight",
                             torch.zeros(n_outputs, 2 * width, dtype=torch.float64))
        self.register_buffer("anchor_bias", torch.zeros(n_outputs, dtype=torch.float64))
        self.register_buffer("output_scale", torch.ones(n_outputs))

    def reset_parameters(self, generator=None):
        """Draw every trainable parameter afresh from ``generator`` (torch's
        global generator when None), as PyTorch's layers initialise
        themselves: the projection, the latent from N(0, 0.02²), each block,
        the regressor. Buffers are left as they are."""
        _reset_linear(self.projection, generator)
        with torch.no_grad():
            self.latent.copy_(torch.randn(self.latent.shape, generator=generator) * 0.02)
        for block in self.blocks:
            block.reset_parameters(generator)
        _reset_linear(self.regressor, generator)
        if self.layer_logits is not None:
            with torch.no_grad():
                self.layer_logits.zero_()

    def set_anchor(self, weight=None, bias=None, scale=None):
        """Set the fixed anchor map and output scale (None leaves one as is)."""
        for name, value in (("anchor_weight", weight), ("anchor_bias", bias),
                            ("output_scale", scale)):
            if value is not None:
                buffer = getattr(self, name)
                value = torch.as_tensor(value, dtype=buffer.dtype, device=buffer.device)
                if value.shape != buffer.shape:
                    raise ValueError(f"{name} must have shape {tuple(buffer.shape)}, "
                                     f"got {tuple(value.shape)}.")
                buffer.copy_(value)

    def reset_anchor(self):
        """Back to the plain head: zero anchor, unit output scale."""
        self.anchor_weight.zero_()
        self.anchor_bias.zero_()
        self.output_scale.fill_(1.0)

    @property
    def has_anchor(self):
        return bool(self.anchor_weight.any() or self.anchor_bias.any())

    def _block(self, step):
        return self.blocks[0 if self.share_weights else step]

    def forward(self, states, mask):
        """Predict from padded token states.

        Parameters
        ----------
        states : Tensor of shape (batch, tokens, d_model)
        mask : bool Tensor of shape (batch, tokens)
            True for real tokens, False for padding.

        Returns
        -------
        Tensor of shape (batch, n_outputs)
        """
        return self.refine(states, mask)[0][-1]

    def refine(self, states, mask, need_weights=False, *, factored=True):
        """Run every refinement step and keep what each one produced.

        Returns
        -------
        predictions : list of Tensor (batch, n_outputs)
            The regressor applied to the latent after each step; the last
            one is the head's output.
        attentions : list of Tensor (batch, n_latents, tokens) or None
            Attention of the latents over the tokens at each step (averaged
            over heads), when ``need_weights``.

        ``factored=False`` projects every token and runs
        ``nn.MultiheadAttention`` directly: the same function, slower; kept
        to check and benchmark the factored path.
        """
        predictions, attentions, _ = self._run(states, mask, need_weights, factored)
        return predictions, (attentions if need_weights else None)

    def final_latent(self, states, mask):
        """The final latent state (mean over latents), which the regressor
        maps to the prediction.

        Returns
        -------
        Tensor of shape (batch, latent_dim)
        """
        return self._run(states, mask, False, True, predict=False)[2]

    def _run(self, states, mask, need_weights, factored, predict=True):
        states = states.to(self.projection.weight.dtype)
        anchor = None
        if predict and self.has_anchor:
            anchor = (pool_states(states, mask.bool()) @ self.anchor_weight.T
                      + self.anchor_bias).to(states.dtype)
        states = self.mix_layers((states - self.state_mean) / self.state_std)
        n_latents, n_heads = self.latent.shape[0], self.blocks[0].attention.num_heads
        tokens = ProjectedTokens(states, self.projection, n_latents * n_heads,
                                 self.n_iterations)
        if not factored:
            tokens = tokens.materialize()
        # A row with no real token would make the softmax produce NaN;
        # such rows are rejected upstream, this keeps the head total anyway.
        key_padding_mask = ~mask.bool()
        empty = key_padding_mask.all(dim=1)
        if empty.any():
            key_padding_mask = key_padding_mask.clone()
            key_padding_mask[empty, 0] = False
        z = self.latent.unsqueeze(0).expand(states.shape[0], -1, -1)
        predictions, attentions = [], []
        for step in range(self.n_iterations):
            block = self._block(step)
            if factored:
                z, weights = block(z, tokens, key_padding_mask, need_weights=need_weights,
                                   generator=self.generator)
            else:
                z, weights = block.forward_unfactored(z, tokens, key_padding_mask,
                                                      need_weights=need_weights)
            if predict:
                prediction = self.regressor(z.mean(dim=1)) * self.output_scale
                predictions.append(prediction if anchor is None else anchor + prediction)
            attentions.append(weights)
        return predictions, attentions, z.mean(dim=1)


    def layer_weights(self):
        """The softmax weights of the mixed layers (None for one layer)."""
        if self.layer_logits is None:
            return None
        return torch.softmax(self.layer_logits, dim=0)

    def mix_layers(self, states):
        """``(batch, tokens, n_mixed_layers * d_model)`` standardised states
        to ``(batch, tokens, d_model)``: the softmax-weighted sum of the
        layers (unchanged for one layer)."""
        if self.layer_logits is None:
            return states
        batch, tokens, _ = states.shape
        layers = states.reshape(batch, tokens, self.n_mixed_layers, -1)
        weights = self.layer_weights().to(states.dtype)
        return torch.einsum("btld,l->btd", layers, weights)


def _statistic(value, d_model, default):
    if value is None:
        return torch.full((d_model,), default)
    value = torch.as_tensor(value, dtype=torch.float32).detach().clone()
    if value.shape != (d_model,):
        raise ValueError(f"state statistics must have shape ({d_model},), "
                         f"got {tuple(value.shape)}.")
    return value


def token_state_statistics(states, min_std=1e-4, sample_weight=None):
    """Per-feature mean and standard deviation over all tokens of ``states``.

    Parameters
    ----------
    states : sequence of Tensor of shape (n_tokens_i, d_model)
        Ragged token states, in any floating dtype; accumulated in float64.
    min_std : float
        Floor of the standard deviation, so that a constant feature is
        shifted but not blown up.
    sample_weight : sequence of float, optional
        Each token of row ``i`` counts ``sample_weight[i]`` times.

    >>> mean, std = token_state_statistics([torch.tensor([[1.0, 5.0]]),
    ...                                      torch.tensor([[3.0, 5.0], [2.0, 5.0]])])
    >>> mean.tolist(), [round(v, 4) for v in std.tolist()]
    ([2.0, 5.0], [0.8165, 0.0001])
    """
    total, total_sq, count = 0.0, 0.0, 0
    weights = [1.0] * len(states) if sample_weight is None else sample_weight
    for tensor, weight in zip(states, weights):
        if weight == 0:
            continue
        tensor = tensor.to(torch.float64)
        total = total + weight * tensor.sum(dim=0)
        total_sq = total_sq + weight * (tensor * tensor).sum(dim=0)
        count += weight * len(tensor)
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    return mean.float(), var.sqrt().clamp_min(min_std).float()


def count_trainable_parameters(module):
    """Number of parameters of ``module`` that require gradients.

    >>> count_trainable_parameters(RelishHead(d_model=576))
    2517505
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
