"""``benchmarks.studies.gpu``'s measurements, run with the CPU standing in for the GPU.

The benchmark itself needs CUDA; its two measurements take the GPU's device
as an argument, so their plumbing (variants, the old per-row storage path,
the state agreement, the paired fits) is checked here on the tiny model.
"""

import numpy as np
import pytest

from benchmarks.studies.gpu import extraction, head_fit

from data_utils import sentiment_task


@pytest.fixture(scope="module")
def prompts():
    X, _ = sentiment_task(12, seed=5)
    return [f"Input:\n{x}\n\nPredict a score:" for x in X]


def test_extraction_times_every_variant_and_compares_states(tiny_model_dir, prompts):
    rows, agreement = extraction(tiny_model_dir, prompts, n_cpu=6, batch_size=4, rounds=1,
                                 per_row_copies=True, gpu="cpu")
    assert [r["variant"] for r in rows] == ["GPU bfloat16", "GPU float32", "CPU float32",
                                            "GPU bfloat16, per-row copies"]
    texts = {r["variant"]: r["texts"] for r in rows}
    assert texts["CPU float32"] == 6 and texts["GPU float32"] == len(prompts)
    for r in rows:   # the rates are what was counted over what was timed
        assert r["tokens"] >= r["texts"]
        assert r["texts_per_s"] == pytest.approx(r["texts"] / r["seconds"])
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"])
    # Same device, same dtype: identical states; the per-row path stores what
    # the batched one stores; bfloat16 compute is close but not equal.
    assert agreement["GPU float32"] == pytest.approx(1.0, abs=1e-6)
    assert agreement["GPU bfloat16, per-row copies"] == pytest.approx(
        agreement["GPU bfloat16"], abs=1e-7)
    assert 0.95 < agreement["GPU bfloat16"] < 1.0


def test_head_fit_pairs_two_devices_on_the_same_states(tiny_model_dir, tmp_path):
    X, y = sentiment_task(24, seed=6)
    fit = head_fit(tiny_model_dir, X, np.asarray(y), str(tmp_path), gpu="cpu")
    assert fit["GPU"]["params"] == fit["CPU"]["params"] > 0
    assert fit["n_texts"] == 24
    assert fit["speedup"] == pytest.approx(fit["CPU"]["fit_s"] / fit["GPU"]["fit_s"])
    # Two CPU fits with one seed on one cache are the same fit.
    assert fit["median_abs_difference_over_y_std"] == 0.0


def test_reports_name_the_device_a_timing_ran_on():
    import torch

    from benchmarks.report import device_name

    assert device_name(torch.device("cpu")) == f"CPU, {torch.get_num_threads()} threads"
