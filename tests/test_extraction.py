"""How the backbone forms its batches and runs them: token budgets, SDPA."""

import numpy as np
import pytest
import torch

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish.backbone import load_backbone, plan_batches
from sklearn_relish.cache import MEMORY_CACHE, DiskCache, cached_states

# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, latent_dim=16, n_heads=2, batch_size=8, max_epochs=2, random_state=0)



def _backbone(tiny_model_dir):
    return load_backbone(RelishRegressor(backbone=tiny_model_dir).get_backbone_config())


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

    from sklearn_relish import backbone as backbone_module
    from sklearn_relish.backbone import Backbone

    sdpa = _backbone(tiny_model_dir)
    monkeypatch.setattr(LlamaModel, "_supports_sdpa", False)
    monkeypatch.setattr(backbone_module, "_MODELS", {})
    eager = Backbone(sdpa.config)            # not the shared model: a new load
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


def _calls_at_each_yield(backbone, monkeypatch, ids, **kwargs):
    calls = []
    model = backbone.model

    def spy(**kw):
        calls.append(1)
        return model(**kw)

    monkeypatch.setattr(backbone, "model", spy)
    return [(row, len(calls)) for row, _ in backbone.iter_states(ids, **kwargs)]


def test_on_a_cpu_each_batch_is_stored_before_the_next_runs(tiny_model_dir, monkeypatch):
    """The pipelining of copies is CUDA's alone: on a CPU a batch's states
    are handed over before the next batch runs, so an interrupted run keeps
    every batch it computed."""
    backbone = _backbone(tiny_model_dir)
    ids = [[5] * n for n in (9, 7, 5, 3, 2)]
    seen = _calls_at_each_yield(backbone, monkeypatch, ids, batch_size=2)
    assert seen == [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3)]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_host_copy_stores_what_the_cpu_path_stores():
    from sklearn_relish.backbone import _batch_to_storage, _start_host_copy

    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4, dtype=torch.bfloat16)
    hidden[1, 1, 2] = 1e6          # beyond float16's range: row 1 needs bfloat16
    hidden[2, 4, 0] = 1e9          # but in row 2's padding, which is not stored
    lengths = [5, 3, 4]
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])
    expected = _batch_to_storage(hidden, mask, lengths)
    rows = _start_host_copy(hidden.cuda(), mask.cuda(), lengths)()
    assert [r.dtype for r in rows] == [torch.float16, torch.bfloat16, torch.float16]
    for row, want in zip(rows, expected):
        assert row.device.type == "cpu" and not row.is_pinned()
        assert torch.equal(row, want)
        assert row.untyped_storage().nbytes() == row.numel() * row.element_size()


@cuda
def test_cuda_batches_are_collected_after_the_next_one_is_launched(tiny_model_dir,
                                                                  monkeypatch):
    from sklearn_relish.backbone import BackboneConfig, load_backbone as load

    on_cpu = _backbone(tiny_model_dir)
    on_gpu = load(BackboneConfig(tiny_model_dir, device="cuda", dtype="float32"))
    ids = [[5, 6, 7, 8][: 1 + n % 4] * (n + 1) for n in range(9)]
    seen = _calls_at_each_yield(on_gpu, monkeypatch, ids, batch_size=4)
    # Rows of batch k come out once batch k + 1 has been launched.
    assert [calls for _, calls in seen] == [2] * 4 + [3] * 4 + [3]
    monkeypatch.undo()
    got = dict(on_gpu.iter_states(ids, batch_size=4))
    want = dict(on_cpu.iter_states(ids, batch_size=4))
    for row in want:
        torch.testing.assert_close(got[row], want[row], atol=1e-3, rtol=1e-3)


def test_a_hub_name_fails_fast_with_one_message_when_the_hub_is_unreachable(monkeypatch):
    """Offline, an uncached hub name is refused before transformers tries
    (and retries) the network: one error that names the fixes."""
    import socket
    import time

    import transformers

    from sklearn_relish.backbone import BackboneConfig, BackboneLoadError, load_backbone

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    tried = []

    def unreachable(address, timeout=None):
        tried.append((address, timeout))
        raise OSError("network is unreachable")

    def must_not_load(*args, **kwargs):
        raise AssertionError("transformers was asked to load the model")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", must_not_load)
    start = time.perf_counter()
    with pytest.raises(BackboneLoadError, match=r"(?s)'someone/not-cached'.*not in the local "
                       r"Hugging Face cache.*cannot be reached.*save_pretrained"):
        load_backbone(BackboneConfig("someone/not-cached"))
    assert tried == [(("huggingface.co", 443), 3.0)]
    assert time.perf_counter() - start < 5
