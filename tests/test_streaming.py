"""Fits whose token states exceed ``max_state_memory`` stream them from the
disk cache, and give what the in-memory fit gives."""

import errno
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor, streaming
from sklearn_relish.anchor import fit_anchor, fit_ridge_loo, pooled_features
from sklearn_relish.backbone import load_backbone
from sklearn_relish.cache import CacheWarning, DiskCache, cached_states
from sklearn_relish.storage import storage_fingerprint
from sklearn_relish.streaming import RowBlocks, StreamedStates, memory_budget, streamed_states

FAST = dict(latent_dim=32, n_heads=4, batch_size=16, random_state=0, max_epochs=3)


@pytest.fixture(scope="module")
def task():
    return sentiment_task(240, seed=5)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, so that every sum runs over many blocks."""
    monkeypatch.setattr(streaming, "BLOCK_BYTES", 3000)


@pytest.fixture
def reads(monkeypatch):
    """How many rows were read from the disk cache by a streamed fit."""
    count = [0]
    read = StreamedStates.__getitem__

    def counted(self, index):
        count[0] += 1
        return read(self, index)

    monkeypatch.setattr(StreamedStates, "__getitem__", counted)
    return count


def _blocks(array):
    return RowBlocks(len(array), array.shape[1], lambda rows: array[rows])


def _fit_both(tiny_model_dir, task, tmp_path, empty_memory, reads, **params):
    X, y = task
    weight = params.pop("sample_weight", None)
    settings = dict(backbone=tiny_model_dir, cache_dir=tmp_path / "cache", **FAST, **params)
    in_memory = RelishRegressor(**settings).fit(X, y, sample_weight=weight)
    assert reads[0] == 0
    empty_memory.clear()
    streamed = RelishRegressor(**settings, max_state_memory=1000).fit(X, y, sample_weight=weight)
    assert reads[0] > 3 * len(X)          # it read the rows from disk, pass after pass
    return in_memory, streamed


def _assert_same_fit(a, b, X):
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=0, atol=1e-5)
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-5)
    np.testing.assert_array_equal(a.anchor_alpha_, b.anchor_alpha_)
    assert a.anchor_pooling_ == b.anchor_pooling_
    np.testing.assert_allclose(a.shrinkage_, b.shrinkage_, atol=1e-6)
    np.testing.assert_allclose(a.calibration_.scores, b.calibration_.scores, atol=1e-7)
    np.testing.assert_allclose(a.calibration_.difficulty_coef, b.calibration_.difficulty_coef,
                               rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("params", [
    dict(cv=None, shrinkage=None),              # hold-out; the head's output counts in full
    dict(cv=3),                                 # cross-fitted head and gate
    dict(cv=None, state_storage="int8", anchor="ridge"),
    dict(cv=None, sample_weight="zeros"),
], ids=["holdout", "crossfit", "int8-ridge", "weights"])
def test_a_streamed_fit_is_the_in_memory_fit(tiny_model_dir, task, tmp_path, empty_memory,
                                            reads, small_blocks, params):
    X, _ = task
    if params.get("sample_weight") == "zeros":
        weight = np.random.default_rng(0).uniform(0.2, 3.0, len(X))
        weight[::7] = 0.0
        params["sample_weight"] = weight
    a, b = _fit_both(tiny_model_dir, task, tmp_path, empty_memory, reads, **params)
    _assert_same_fit(a, b, X)
    # The pooled features' file has no name: nothing is left beside the cache.
    assert not [p for p in (tmp_path / "cache").rglob("*") if "pooled" in p.name]


def test_warm_start_continues_a_streamed_fit(tiny_model_dir, task, tmp_path, empty_memory,
                                             reads):
    X, y = task
    settings = dict(backbone=tiny_model_dir, cache_dir=tmp_path, cv=None, warm_start=True,
                    **FAST)
    a = RelishRegressor(**settings).fit(X, y)
    b = RelishRegressor(**settings, max_state_memory=1000).fit(X, y)
    a.fit(X, y)
    b.fit(X, y)
    assert len(b.loss_curve_) == 2 * FAST["max_epochs"]
    _assert_same_fit(a, b, X)


def test_grid_search_streams_each_fold_from_one_cache(tiny_model_dir, task, tmp_path,
                                                     empty_memory, reads):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, cache_dir=tmp_path, cv=None, **FAST)
    reg.cache_states(X)
    empty_memory.clear()
    grid = {"n_iterations": [1, 2]}
    streamed = GridSearchCV(reg.set_params(max_state_memory=1000), grid, cv=2).fit(X, y)
    assert reads[0] > 0
    in_memory = GridSearchCV(reg.set_params(max_state_memory=None), grid, cv=2).fit(X, y)
    np.testing.assert_allclose(streamed.cv_results_["mean_test_score"],
                               in_memory.cv_results_["mean_test_score"], atol=1e-6)


def test_the_block_wise_ridge_is_the_in_memory_ridge(small_blocks):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 12)) * rng.uniform(0.1, 10, 12) + rng.normal(size=12)
    Y = X @ rng.normal(size=(12, 2)) + rng.normal(size=(500, 2))
    weight = rng.uniform(0, 2, 500)
    weight[::9] = 0
    for w in (None, weight):
        a, b = fit_ridge_loo(X, Y, sample_weight=w), fit_ridge_loo(_blocks(X), Y, sample_weight=w)
        assert _blocks(X).block_rows < 100                 # many blocks
        np.testing.assert_array_equal(a.alpha, b.alpha)
        for name in ("coef", "intercept", "loo_predictions", "loo_mse"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-8, atol=1e-10)
    features = np.hstack([X, X[:, ::-1] + rng.normal(size=X.shape)])
    a, b = fit_anchor(features, Y, sample_weight=weight), fit_anchor(_blocks(features), Y,
                                                                     sample_weight=weight)
    assert a.pooling == b.pooling
    np.testing.assert_allclose(a.coef, b.coef, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(a.loo_predictions, b.loo_predictions, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.predict(_blocks(features)), a.predict(features), atol=1e-10)


def _streamed(tiny_model_dir, tmp_path, texts):
    backbone = load_backbone(RelishRegressor(backbone=tiny_model_dir).get_backbone_config())
    disk = DiskCache(tmp_path, storage_fingerprint(backbone.fingerprint, "float16"))
    return streamed_states(backbone, texts, disk=disk)[0], backbone


def test_streamed_states_hold_lengths_and_read_the_rows(tiny_model_dir, tmp_path, task,
                                                      empty_memory):
    texts = task[0][:40]
    states, backbone = _streamed(tiny_model_dir, tmp_path, texts)
    in_memory, _ = cached_states(backbone, texts)
    assert isinstance(states, StreamedStates)
    np.testing.assert_array_equal(states.lengths, [len(s) for s in in_memory])
    for i in (0, 17, 39):
        assert torch.equal(states[i], in_memory[i])
    assert torch.equal(states.take([39, 0])[1], in_memory[0])
    np.testing.assert_array_equal(pooled_features(states.take(range(0, 40, 3))),
                                  pooled_features([in_memory[i] for i in range(0, 40, 3)]))
    assert states.nbytes() == sum(len(s) for s in dict(zip(texts, in_memory)).values()) \
        * backbone.state_width * 2


def test_a_missing_or_damaged_entry_mid_stream_is_encoded_again(tiny_model_dir, tmp_path,
                                                                task, empty_memory):
    texts = task[0][:20]
    states, backbone = _streamed(tiny_model_dir, tmp_path, texts)
    expected = [states[i].clone() for i in range(3)]
    states.disk.path(states.keys[0]).unlink()                       # deleted by a cleaner
    path = states.disk.path(states.keys[1])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40                                                # a flipped bit
    path.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="row 0 .* was missing or damaged"):
        again = [states[i] for i in range(3)]
    for a, b in zip(again, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3)        # float16 of a new batch
    assert states.n_encoded_again == 2
    assert states.disk.get(states.keys[0]) is not None             # stored again


def test_an_entry_of_another_length_is_an_error_not_a_wrong_row(tiny_model_dir, tmp_path,
                                                                task, empty_memory):
    states, _ = _streamed(tiny_model_dir, tmp_path, task[0][:5])
    other = states.disk.path(states.keys[1]).read_bytes()
    # Another text's entry under row 0's key fails the digest (it covers the
    # key) and is encoded again; a stored length that no longer matches is
    # refused.
    states.lengths[2] += 1
    with pytest.raises(RuntimeError, match="row 2 has .* tokens, but it had"):
        states[2]
    states.disk.path(states.keys[0]).write_bytes(other)
    with pytest.warns(CacheWarning):
        assert len(states[0]) == states.lengths[0]


def test_a_full_disk_while_pooling_is_a_clear_error_and_keeps_the_fit(
        tiny_model_dir, task, tmp_path, empty_memory, monkeypatch):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, cache_dir=tmp_path, cv=None, **FAST)
    reg.fit(X, y)
    before = reg.predict(X[:5])

    class Full:
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kwargs: (
        Full() if kwargs.get("prefix") == ".relish-pooled-" else real(**kwargs)))
    with pytest.raises(OSError, match="could not write its pooled features .*No space left"
                                      ".*Free that much space"):
        reg.set_params(max_state_memory=1000, random_state=1).fit(X, y)
    np.testing.assert_array_equal(reg.predict(X[:5]), before)     # the earlier fit stays


def test_over_the_budget_without_a_disk_cache_is_a_clear_error(tiny_model_dir, task):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, cache_dir=None, max_state_memory="10kB",
                          **FAST)
    with pytest.raises(ValueError, match="without a disk cache.*cache_dir.*max_state_memory"):
        reg.fit(X, y)
    assert not hasattr(reg, "net_")


def test_the_capped_default_cache_is_not_used_to_stream(tiny_model_dir, task, tmp_path,
                                                        monkeypatch):
    monkeypatch.setenv("RELISH_STATES_DIR", str(tmp_path))
    monkeypatch.setenv("RELISH_STATES_MAX_GB", "0.00001")
    reg = RelishRegressor(backbone=tiny_model_dir, max_state_memory=1000, **FAST)
    with pytest.raises(ValueError, match="capped at .*RELISH_STATES_MAX_GB"):
        reg.fit(*task)


def test_lora_does_not_stream(tiny_model_dir, task, tmp_path):
    pytest.importorskip("peft")
    reg = RelishRegressor(backbone=tiny_model_dir, backbone_tuning="lora", cache_dir=tmp_path,
                          max_state_memory=1000, **FAST)
    with pytest.raises(ValueError, match="lora' cannot stream"):
        reg.fit(*task)


def test_memory_budget_reads_sizes():
    assert memory_budget("512MiB") == 512 * 2**20
    assert memory_budget(1e9) == 10**9
    assert 0 < memory_budget("auto") < streaming.available_memory()
    with pytest.raises(ValueError, match="'8 parsecs' is not a size"):
        memory_budget("8 parsecs")


# -- the budget, measured ----------------------------------------------------

_MEASURE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from data_utils import sentiment_task
    from sklearn_relish import RelishRegressor, streaming
    from sklearn_relish.backbone import load_backbone
    from sklearn_relish.cache import MEMORY_CACHE

    streaming.BLOCK_BYTES = 2**20                   # blocks well below the states' size

    def status(field):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle
                        if line.startswith(field + ":"))

    reg = RelishRegressor(backbone=sys.argv[2], cache_dir=sys.argv[3], random_state=0,
                          latent_dim=32, n_heads=4, max_epochs=1, cv=None,
                          max_state_memory=None if sys.argv[4] == "none" else int(sys.argv[4]))
    X, y = sentiment_task(int(sys.argv[5]), seed=3)
    X = [" ".join([t] * 6) for t in X]             # long rows: many states per row
    load_backbone(reg.get_backbone_config())        # the model is in the baseline,
    budget = reg.max_state_memory                    # and so is torch's first training
    reg.set_params(max_state_memory=None).fit(X[:40], y[:40])
    MEMORY_CACHE.clear()
    reg.set_params(max_state_memory=budget)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")                           # the peak (VmHWM) starts again here
    before = status("VmRSS")
    reg.fit(X, y)
    print(json.dumps({"growth": status("VmHWM") - before}))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_a_streamed_fit_keeps_its_peak_memory_flat_in_the_rows(tmp_path, empty_memory):
    """Peak RSS growth of fit in fresh processes, at n and 2n rows: in
    memory it grows with the states (several times their float16 size);
    streamed it does not."""
    from tiny import build_tiny_llama

    model = build_tiny_llama(tmp_path / "wide", hidden_size=256)
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def growth(budget, n):
        out = subprocess.run([sys.executable, "-c", _MEASURE, tests, model,
                              str(tmp_path / "cache"), budget, str(n)],
                             capture_output=True, text=True, env=env, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["growth"]

    sizes, in_memory, streamed = [], [], []
    for n in (800, 1600):          # more rows than features: the ridge in its primal form
        texts = [" ".join([t] * 6) for t in sentiment_task(n, seed=3)[0]]
        sizes.append(_streamed(model, tmp_path / "cache", texts)[0].nbytes())  # encodes them
        budget = sizes[0] // 20
        in_memory.append(growth("none", n))
        streamed.append(growth(str(budget), n))
    print(f"states {sizes[0] / 1e6:.0f} -> {sizes[1] / 1e6:.0f} MB: peak growth in memory "
          f"{in_memory[0] / 1e6:.0f} -> {in_memory[1] / 1e6:.0f} MB, streamed "
          f"{streamed[0] / 1e6:.0f} -> {streamed[1] / 1e6:.0f} MB")
    more = sizes[1] - sizes[0]
    # In memory the peak grows by the states at least (2x measured on a quiet
    # machine, 0.8x under load: the heap reuses what the warm-up freed).
    assert in_memory[1] - in_memory[0] > 0.5 * more    # the measurement sees the states
    assert streamed[1] - streamed[0] < 0.3 * more
    assert streamed[1] < in_memory[1] - 0.5 * sizes[1]
