"""``benchmarks.studies.storage``: RELISH on float16 and int8 states, from a
cache it only reads."""

import os
import numpy as np

from benchmarks.baselines import Context
from benchmarks.studies import storage as study
from data_utils import benchmark_task
from sklearn_relish.cache import DiskCache, cached_states


def _snapshot(directory):
    return {path: os.stat(os.path.join(path, name)).st_mtime_ns
            for path, _, names in os.walk(directory) for name in names}


def test_both_storages_are_fitted_from_the_cache_without_writing_it(
        tiny_model_dir, tmp_path, empty_memory):
    task = benchmark_task(60, 20, seed=7)
    ctx = Context(tiny_model_dir, tmp_path, max_length=64)
    backbone = ctx.load_backbone()
    prompts = ctx.prompts(task, task.X_train) + ctx.prompts(task, task.X_test)
    disk = DiskCache(tmp_path, backbone.fingerprint)
    disk.check_writable()
    cached_states(backbone, prompts, disk=disk, memory=None)      # the benchmark's run
    before, encoded = _snapshot(tmp_path), backbone.n_texts_encoded

    record = study.run_task(ctx, task, seeds=[0], max_epochs=3, latent_dim=16, n_heads=2)

    assert _snapshot(tmp_path) == before                 # nothing written or touched
    assert backbone.n_texts_encoded == encoded           # nothing encoded either
    fits = record["relish"]["0"]
    assert set(fits) == {"float16", "int8"}
    assert all(np.isfinite(f["pearson"]) for f in fits.values())
    assert fits["int8"] != fits["float16"]               # the states did differ
    d = backbone.d_model
    assert record["bytes_per_token"]["int8"]["payload"] == d + 2
    assert record["bytes_per_token"]["float16"]["payload"] == 2 * d
    assert 0 < record["reconstruction"]["relative_error_mean"] < 0.02
    assert record["reconstruction"]["cosine_min"] > 0.99
    assert set(record["ridge_mean"]) == {"float16", "int8"}


def test_a_task_not_all_cached_is_skipped_not_encoded(tiny_model_dir, tmp_path,
                                                     empty_memory):
    task = benchmark_task(60, 20, seed=7)
    ctx = Context(tiny_model_dir, tmp_path, max_length=64)
    backbone = ctx.load_backbone()
    encoded = backbone.n_texts_encoded
    assert study.run_task(ctx, task, seeds=[0]) is None
    assert backbone.n_texts_encoded == encoded
    assert not any(tmp_path.iterdir())
