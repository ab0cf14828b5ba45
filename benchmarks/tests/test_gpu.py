"""``benchmarks.studies.gpu``'s measurements, run with the CPU standing in for the GPU.

The study itself needs CUDA; its two measurements take the GPU's device as
an argument, so their plumbing is checked here on the tiny model: which
texts and tokens each variant counts, which timings its median and speedup
are made of (through a scripted clock, so a wrong median, a timed warm-up or
an inverted ratio shows), that the per-row storage path really runs and
stores what the batched one stores, and how far the states agree.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks.studies import gpu
from sklearn_relish import backbone as backbone_module
from sklearn_relish.backbone import BackboneConfig, load_backbone

from data_utils import sentiment_task

VARIANTS = ["GPU bfloat16", "GPU float32", "CPU float32", "GPU bfloat16, per-row copies"]


@pytest.fixture(scope="module")
def prompts():
    X, _ = sentiment_task(12, seed=5)
    return [f"Input:\n{x}\n\nPredict a score:" for x in X]


def test_extraction_times_every_variant_and_compares_states(tiny_model_dir, prompts,
                                                            monkeypatch):
    # Call k of the encoder "takes" k seconds, the warm-up round 1000 s; the
    # encoding itself is real, so the states are.
    calls = []
    real = gpu._timed_encode

    def scripted(backbone, texts, batch_size, batch_tokens=None):
        _, states = real(backbone, texts, batch_size, batch_tokens)
        calls.append(len(texts))
        k = len(calls) - 1
        return (1000.0 if k < len(VARIANTS) else float(k)), states

    per_row_batches = []
    real_per_row = gpu._per_row_copies

    def counted_per_row(hidden, attention_mask, lengths):
        per_row_batches.append(len(lengths))
        return real_per_row(hidden, attention_mask, lengths)

    monkeypatch.setattr(gpu, "_timed_encode", scripted)
    monkeypatch.setattr(gpu, "_per_row_copies", counted_per_row)
    rounds, batch_size = 2, 4
    rows, agreement = gpu.extraction(tiny_model_dir, prompts, n_cpu=6, batch_size=batch_size,
                                     rounds=rounds, per_row_copies=True, gpu="cpu")

    assert [r["variant"] for r in rows] == VARIANTS
    assert len(calls) == (rounds + 1) * len(VARIANTS)
    tokenizer = load_backbone(BackboneConfig(tiny_model_dir)).tokenize
    for v, r in enumerate(rows):
        n = 6 if r["variant"] == "CPU float32" else len(prompts)
        # The real tokens (special tokens included, no padding) of its texts.
        assert (r["texts"], r["tokens"]) == (n, sum(map(len, tokenizer(prompts[:n])[0])))
        # Rounds 1 and 2 of variant v are calls 4 + v and 8 + v; the warm-up
        # (round 0) is left out of the median.
        assert r["seconds"] == pytest.approx(6.0 + v)
        assert r["texts_per_s"] == pytest.approx(n / (6.0 + v))
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / (6.0 + v))
    # The per-row path stored every batch of its variant, in every round, and
    # nothing else went through it.
    assert per_row_batches == [4, 4, 4] * (rounds + 1)

    # Same device, same dtype: identical states; the per-row path stores what
    # the batched one stores; bfloat16 compute is close but not equal.
    assert agreement["GPU float32"] == pytest.approx(1.0, abs=1e-6)
    assert agreement["GPU bfloat16, per-row copies"] == pytest.approx(
        agreement["GPU bfloat16"], abs=1e-7)
    assert 0.95 < agreement["GPU bfloat16"] < 1.0


def test_token_budgets_and_synchronous_copies_are_variants_of_their_own(
        tiny_model_dir, prompts, monkeypatch):
    budgets = []
    real = gpu._timed_encode

    def recorded(backbone, texts, batch_size, batch_tokens=None):
        budgets.append(batch_tokens)
        return real(backbone, texts, batch_size, batch_tokens)

    monkeypatch.setattr(gpu, "_timed_encode", recorded)
    rows, agreement = gpu.extraction(tiny_model_dir, prompts, n_cpu=6, batch_size=4,
                                     rounds=1, per_row_copies=False, gpu="cpu",
                                     sync_copies=True, batch_tokens=[64])
    names = ["GPU bfloat16", "GPU float32", "CPU float32",
             "GPU bfloat16, synchronous copies", "GPU bfloat16, 64-token batches"]
    assert [r["variant"] for r in rows] == names
    assert budgets == [None, None, None, None, 64] * 2
    # No peak is known for a CPU: no MFU, but the model's FLOP rate.
    assert all(r["mfu"] is None and r["model_tflops_per_s"] > 0 for r in rows)
    assert agreement["GPU bfloat16, 64-token batches"] == pytest.approx(
        agreement["GPU bfloat16"], abs=1e-4)


def test_mfu_counts_the_forward_flops_of_the_real_tokens(tiny_model_dir, monkeypatch):
    backbone = load_backbone(BackboneConfig(tiny_model_dir))
    # The tiny Llama: d_model 32, 2 layers, a vocabulary of len(tokenizer).
    n_embedding = backbone.model.get_input_embeddings().weight.numel()
    n_params = sum(p.numel() for p in backbone.model.parameters()) - n_embedding
    assert gpu.forward_flops(backbone, [3, 5]) == (2 * n_params * 8
                                                   + 4 * 2 * 32 * (9 + 25))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H200")
    cuda = torch.device("cuda")
    assert gpu.peak_flops(cuda, "bfloat16") == 989e12
    assert gpu.peak_flops(cuda, "float32") == 67e12
    assert gpu.peak_flops(cuda, "bfloat16", override_tflops=500) == 500e12
    assert gpu.peak_flops(torch.device("cpu"), "bfloat16") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA GeForce")
    assert gpu.peak_flops(cuda, "bfloat16") is None


def test_storage_stand_ins_store_at_once_what_they_wrap():
    hidden = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    finish = gpu._finished(backbone_module._batch_to_storage)(hidden, mask, [3, 2])
    for a, b in zip(finish(), backbone_module._batch_to_storage(hidden, mask, [3, 2])):
        assert torch.equal(a, b)


def test_per_row_copies_store_what_the_batched_path_stores():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    hidden[1, 2, 0] = 1e5                         # beyond float16: bfloat16 row
    hidden[2, 4, 1] = 1e6                         # beyond float16, but padding
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 4 + [0]])
    lengths = [5, 3, 4]
    batched = backbone_module._batch_to_storage(hidden, mask, lengths)
    per_row = gpu._per_row_copies(hidden, mask, lengths)
    assert [s.dtype for s in per_row] == [torch.float16, torch.bfloat16, torch.float16]
    for a, b in zip(batched, per_row):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_head_fit_pairs_two_devices_on_the_same_states(tiny_model_dir, tmp_path,
                                                       monkeypatch):
    # Scripted clock: the "GPU" fit runs from 10 s to 13 s, the "CPU" one
    # from 20 s to 26 s. The untimed warm-up fits read no clock.
    ticks = iter([10.0, 13.0, 20.0, 26.0])
    monkeypatch.setattr(gpu, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    X, y = sentiment_task(24, seed=6)
    fit = gpu.head_fit(tiny_model_dir, X, np.asarray(y), str(tmp_path), gpu="cpu")
    assert next(ticks, None) is None                 # exactly the two timed fits
    assert (fit["GPU"]["fit_s"], fit["CPU"]["fit_s"]) == (3.0, 6.0)
    assert fit["speedup"] == 2.0                     # CPU time over GPU time
    assert fit["GPU"]["params"] == fit["CPU"]["params"] > 0
    assert (fit["n_texts"], fit["seed"]) == (24, 0)
    # Two CPU fits with one seed on one cache are the same fit.
    assert fit["median_abs_difference_over_y_std"] == 0.0


def test_reports_name_the_device_a_timing_ran_on():
    from benchmarks.report import device_name

    assert device_name(torch.device("cpu")) == f"CPU, {torch.get_num_threads()} threads"
