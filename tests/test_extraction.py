"""How the backbone forms its batches and runs them: token budgets, SDPA."""

import numpy as np
import pytest
import torch

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish.backbone import load_backbone, plan_batches
from sklearn_relish.cache import MEMORY_CACHE, DiskCache, cached_states

FAST = dict(latent_dim=16, n_heads=2, batch_size=8, max_epochs=2, random_state=0)


@pytest.fixture
def empty_memory():
    MEMORY_CACHE.clear()
    yield MEMORY_CACHE
    MEMORY_CACHE.clear()


def _backbone(tiny_model_dir):
    return load_backbone(RelishRegressor(backbone=tiny_model_dir)._backbone_config())


@pytest.mark.parametrize("budget", [1, 7, 40, 100, 10_000])
def test_token_budget_batches_stay_within_budget_longest_first(budget):
    lengths = np.random.default_rng(0).integers(1, 60, size=200).tolist()
    batches = plan_batches(lengths, batch_tokens=budget)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(200))            # each row once
    assert [lengths[i] for i in rows] == sorted(lengths, reverse=True)
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= budget or len(batch) == 1
        # ... and as full as the budget allows: one more row would not fit.
        assert len(batch) == max(1, budget // lengths[batch[0]]) or batch is batches[-1]
    if budget == 100:
        # Short texts share a batch; the longest run one or two at a time.
        assert len(batches[0]) == 1 and max(len(b) for b in batches) > 10


def test_without_a_budget_batches_hold_a_fixed_count():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    batches = plan_batches(lengths, batch_size=3)
    assert [b.tolist() for b in batches] == [[2, 5, 0], [3, 4, 6], [1]]


def _spy_shapes(monkeypatch, backbone):
    shapes = []
    model = backbone.model

    def spy(**kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return model(**kwargs)

    monkeypatch.setattr(backbone, "model", spy)
    return shapes


def test_token_budget_gives_the_same_states(tiny_model_dir, monkeypatch):
    backbone = _backbone(tiny_model_dir)
    texts, _ = sentiment_task(60, seed=1)
    texts = texts + [" ".join(["a great film"] * 20)]
    by_count, _ = backbone.encode(texts, batch_size=32)
    shapes = _spy_shapes(monkeypatch, backbone)
    by_tokens, _ = backbone.encode(texts, batch_tokens=64)
    assert all(rows * width <= 64 or rows == 1 for rows, width in shapes)
    assert shapes[0][0] == 1 and max(rows for rows, _ in shapes) > 5
    for a, b in zip(by_count, by_tokens):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_regressor_batches_by_tokens_through_the_disk_cache(tiny_model_dir, empty_memory,
                                                           tmp_path, monkeypatch):
    X, y = sentiment_task(80, seed=2)
    by_count = RelishRegressor(backbone=tiny_model_dir, cache_dir=None, **FAST).fit(X, y)
    MEMORY_CACHE.clear()
    backbone = _backbone(tiny_model_dir)
    shapes = _spy_shapes(monkeypatch, backbone)
    before = backbone.n_texts_encoded
    by_tokens = RelishRegressor(backbone=tiny_model_dir, cache_dir=tmp_path,
                                encode_batch_tokens=48, **FAST).fit(X, y)
    assert backbone.n_texts_encoded - before == len(set(X))
    assert shapes and all(rows * width <= 48 or rows == 1 for rows, width in shapes)
    np.testing.assert_allclose(by_tokens.predict(X), by_count.predict(X), rtol=1e-4, atol=1e-4)


def test_reserved_chunks_are_sized_in_tokens_with_a_budget(tiny_model_dir, empty_memory,
                                                          tmp_path, monkeypatch):
    """With a budget, a process reserves eight batches' worth of tokens at a
    time, not eight times ``batch_size`` texts (which would cap a batch of
    short texts below the budget)."""
    import sklearn_relish.cache as cache_module

    backbone = _backbone(tiny_model_dir)
    texts = [f"good {i}" for i in range(300)]
    chunks = []
    real = cache_module._encode_reserved

    def spy(disk, keys, *args):
        chunks.append(len(keys))
        return real(disk, keys, *args)

    monkeypatch.setattr(cache_module, "_encode_reserved", spy)
    n_tokens = sum(len(row) for row in backbone.tokenize(texts)[0])
    cached_states(backbone, texts, disk=DiskCache(tmp_path, backbone.fingerprint),
                  batch_size=2, batch_tokens=n_tokens // 8 + 1)
    assert chunks == [300]
    chunks.clear()
    MEMORY_CACHE.clear()
    cached_states(backbone, [t + "!" for t in texts],
                  disk=DiskCache(tmp_path, backbone.fingerprint), batch_size=2)
    assert chunks == [16] * 18 + [12]


def test_backbone_runs_pytorch_sdpa_attention(tiny_model_dir):
    assert _backbone(tiny_model_dir).attn_implementation == "sdpa"


def test_model_without_sdpa_loads_with_its_own_attention_and_same_states(
        tiny_model_dir, monkeypatch):
    """An architecture without SDPA still loads (with its default, eager
    attention); the states differ from SDPA's by rounding only, so the
    fingerprint, and the cache, do not depend on the attention."""
    from transformers import LlamaModel

    from sklearn_relish.backbone import Backbone

    sdpa = _backbone(tiny_model_dir)
    monkeypatch.setattr(LlamaModel, "_supports_sdpa", False)
    eager = Backbone(sdpa.config)            # not the shared one: a new load
    assert eager.attn_implementation == "eager"
    assert eager.fingerprint == sdpa.fingerprint
    texts, _ = sentiment_task(40, seed=3)
    for a, b in zip(sdpa.encode(texts)[0], eager.encode(texts)[0]):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_a_failure_other_than_sdpa_is_still_reported(tmp_path):
    from sklearn_relish.backbone import Backbone, BackboneConfig, BackboneLoadError

    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": "x"}')
    with pytest.raises(BackboneLoadError, match="not a loadable model"):
        Backbone(BackboneConfig(str(tmp_path)))
