"""The RELISH head as a plain torch module."""

import pytest
import torch

from sklearn_relish.head import RelishHead, count_trainable_parameters


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
