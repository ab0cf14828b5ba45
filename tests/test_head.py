"""The RELISH head as a plain torch module."""

import pytest
import torch

from sklearn_relish.head import ProjectedTokens, RelishHead, count_trainable_parameters


@pytest.mark.parametrize("d_model", [32, 576, 4096, 5120])
def test_parameter_count_matches_the_paper_formula(d_model):
    # Paper configuration: 256 * d_model + 2,370,049 trainable parameters.
    assert count_trainable_parameters(RelishHead(d_model)) == 256 * d_model + 2_370_049


def test_paper_figures_for_7b_and_13b_widths():
    assert count_trainable_parameters(RelishHead(4096)) == 3_418_625
    assert count_trainable_parameters(RelishHead(5120)) == 3_680_769


def test_shared_weights_have_one_block():
    separate = count_trainable_parameters(RelishHead(64, n_iterations=3))
    shared = count_trainable_parameters(RelishHead(64, n_iterations=3, share_weights=True))
    assert separate - shared == 2 * 789_760


def test_latent_init_is_small():
    torch.manual_seed(0)
    head = RelishHead(64, latent_dim=256, n_latents=64)
    assert abs(head.latent.std().item() - 0.02) < 0.002


def test_padding_is_masked():
    torch.manual_seed(0)
    head = RelishHead(16, latent_dim=32, n_heads=4).eval()
    states = torch.randn(1, 5, 16)
    alone = head(states, torch.ones(1, 5, dtype=torch.bool))
    padded = torch.cat([states, 100 * torch.randn(1, 7, 16)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 7])
    assert torch.allclose(head(padded, mask), alone, atol=1e-5)


def test_refine_returns_one_prediction_and_attention_per_step():
    head = RelishHead(16, latent_dim=32, n_heads=4, n_iterations=4, n_latents=2).eval()
    mask = torch.tensor([[True, True, False], [True, True, True]])
    predictions, attentions = head.refine(torch.randn(2, 3, 16), mask, need_weights=True)
    assert len(predictions) == 4 and predictions[-1].shape == (2, 1)
    assert attentions[0].shape == (2, 2, 3)
    # No attention on padding, and each latent's weights sum to one.
    assert torch.all(attentions[0][0, :, 2] == 0)
    assert torch.allclose(attentions[0].sum(-1), torch.ones(2, 2))


def test_multi_output():
    head = RelishHead(16, latent_dim=32, n_heads=4, n_outputs=3)
    assert head(torch.randn(4, 6, 16), torch.ones(4, 6, dtype=torch.bool)).shape == (4, 3)


def test_latent_dim_must_divide_into_heads():
    with pytest.raises(ValueError, match="divisible"):
        RelishHead(16, latent_dim=30, n_heads=8)


@pytest.mark.parametrize("n_heads, n_latents, n_tokens, share_weights, projected", [
    (4, 1, 7, False, True),     # short input: the tokens are projected once
    (4, 3, 7, True, True),
    (1, 1, 120, False, False),  # long input: the projection is folded away
])
def test_factored_attention_equals_the_direct_computation(
        n_heads, n_latents, n_tokens, share_weights, projected):
    # The default path computes no keys or values; it must compute the same
    # function as projecting the tokens and running nn.MultiheadAttention,
    # values, attention maps and gradients alike, on either of its branches.
    torch.manual_seed(0)
    d_model = 24
    head = RelishHead(d_model, latent_dim=32, n_heads=n_heads, n_iterations=3,
                      n_latents=n_latents, share_weights=share_weights,
                      state_mean=torch.randn(d_model) * 5, state_std=torch.rand(d_model) + 0.5)
    with torch.no_grad():  # non-zero biases everywhere, so none is left out
        for parameter in head.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    states = 3 + 4 * torch.randn(3, n_tokens, d_model)
    mask = torch.ones(3, n_tokens, dtype=torch.bool)
    mask[1, n_tokens // 2:] = False
    mask[2, 1:] = False
    tokens = ProjectedTokens(states, head.projection, n_heads * n_latents, 3)
    assert tokens.projected is projected

    outputs, grads = {}, {}
    for factored in (True, False):
        head.zero_grad()
        predictions, attentions = head.refine(states, mask, need_weights=True,
                                              factored=factored)
        torch.stack(predictions).square().sum().backward()
        outputs[factored] = predictions + attentions
        grads[factored] = [p.grad.clone() for p in head.parameters()]

    for fast, slow in zip(outputs[True], outputs[False]):
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    for fast, slow in zip(grads[True], grads[False]):
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_attention_dropout_acts_in_training_only():
    torch.manual_seed(0)
    head = RelishHead(16, latent_dim=32, n_heads=4, dropout=0.5)
    states, mask = torch.randn(2, 9, 16), torch.ones(2, 9, dtype=torch.bool)
    head.train()
    assert not torch.equal(head(states, mask), head(states, mask))
    head.eval()
    torch.testing.assert_close(head(states, mask), head.refine(states, mask, factored=False)[0][-1])
