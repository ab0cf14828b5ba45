"""explain(): the latent's attention over decoded tokens, step by step."""

import numpy as np
import pandas as pd
import pytest
import torch

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish.backbone import load_backbone

# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, latent_dim=32, n_heads=4, batch_size=16, random_state=0, max_epochs=3)


@pytest.fixture(scope="module")
def fitted(tiny_model_dir):
    X, y = sentiment_task(60, seed=0)
    return RelishRegressor(backbone=tiny_model_dir, n_iterations=3, **FAST).fit(X, y), X


def test_one_explanation_per_row_with_decoded_prompt_tokens(fitted):
    reg, X = fitted
    explanations = reg.explain(X[:4])
    assert len(explanations) == 4
    tokenizer = load_backbone(reg.backbone_config_).tokenizer
    for text, e in zip(X[:4], explanations):
        assert text in e.prompt
        # The decoded tokens spell the prompt the backbone read.
        assert "".join(e.tokens) == tokenizer.decode(
            tokenizer(e.prompt)["input_ids"], clean_up_tokenization_spaces=False)
        assert e.attention.shape == (3, len(e.tokens))
        np.testing.assert_allclose(e.attention.sum(1), 1.0, atol=1e-5)
        assert (e.attention >= 0).all()


def test_staged_predictions_match_staged_predict_and_predict(fitted):
    reg, X = fitted
    explanations = reg.explain(X[:5])
    stages = np.stack(list(reg.staged_predict(X[:5])))           # (steps, rows)
    got = np.stack([e.staged_predictions for e in explanations], axis=1)
    np.testing.assert_allclose(got, stages, atol=1e-5)
    np.testing.assert_allclose(got[-1], reg.predict(X[:5]), atol=1e-5)
    np.testing.assert_array_equal(explanations[0].head_weight, reg.shrinkage_)


def test_attention_is_the_heads_own(fitted):
    """The weights are the head's: recomputed by nn.MultiheadAttention on the
    materialised projection (the unfactored path), they agree."""
    reg, X = fitted
    e = reg.explain(X[:1])[0]
    states = reg.token_states(X[:1])[0].float().unsqueeze(0)
    mask = torch.ones(states.shape[:2], dtype=torch.bool)
    with torch.inference_mode():
        _, attentions = reg.net_.module_.refine(states, mask, need_weights=True,
                                                factored=False)
    direct = np.stack([a[0].mean(0).numpy() for a in attentions])
    np.testing.assert_allclose(e.attention, direct, atol=1e-5)


def test_top_tokens_and_plot(fitted):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    reg, X = fitted
    e = reg.explain(X[:1])[0]
    top = e.top_tokens(3, template=True)
    assert [w for _, _, w in top] == sorted((w for _, _, w in top), reverse=True)
    assert top[0][2] == pytest.approx(e.attention[-1].max())
    assert all(e.tokens[i] == t for i, t, _ in top)
    # By default only the text's own tokens, the heaviest of them first.
    text = e.top_tokens(100)
    assert text and all(e.from_text[i] for i, _, _ in text)
    assert "".join(t for _, t, _ in sorted(text)).strip() == X[0].strip()
    assert len(text) == e.from_text.sum() < len(e.tokens)
    ax = e.plot()
    assert len(ax.get_yticklabels()) == 3
    assert len(ax.get_xticklabels()) == len(e.tokens)


def test_pairs_from_a_dataframe(tiny_model_dir):
    frame = pd.DataFrame({"a": ["a good movie", "an awful plot"] * 15,
                          "b": ["a great film", "a bad ending"] * 15})
    y = np.tile([1.0, -1.0], 15)
    reg = RelishRegressor(backbone=tiny_model_dir, **FAST).fit(frame, y)
    e = reg.explain(frame.iloc[:1])[0]
    assert "a good movie" in e.prompt and "a great film" in e.prompt
    # Both fields' tokens count as text, the column labels as template.
    text = "".join(t for _, t, _ in sorted(e.top_tokens(100)))
    assert "good movie" in text and "great film" in text and "b:" not in text


def test_not_fitted_raises(tiny_model_dir):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        RelishRegressor(backbone=tiny_model_dir).explain(["text"])
