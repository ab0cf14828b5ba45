"""Faults: interrupted fits, and pickles made on another device."""

import pickle

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from data_utils import sentiment_task
from sklearn_relish import RelishHead, RelishRegressor

# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, latent_dim=16, n_heads=2, batch_size=8, max_epochs=3, random_state=0)


def _interrupt_after(monkeypatch, n_calls):
    calls = []
    forward = RelishHead.forward

    def flaky(self, states, mask):
        calls.append(1)
        if len(calls) > n_calls:
            raise KeyboardInterrupt
        return forward(self, states, mask)

    monkeypatch.setattr(RelishHead, "forward", flaky)


def test_interrupted_refit_keeps_the_previous_fit(tiny_model_dir, monkeypatch):
    X, y = sentiment_task(40, seed=7)
    reg = RelishRegressor(backbone=tiny_model_dir, **FAST).fit(X, y)
    before = reg.predict(X)
    net = reg.net_
    _interrupt_after(monkeypatch, 3)  # mid-epoch: 5 batches per epoch
    with pytest.raises(KeyboardInterrupt):
        reg.fit(X[:30], -y[:30])
    monkeypatch.undo()
    assert reg.net_ is net
    np.testing.assert_array_equal(reg.predict(X), before)


def test_interrupted_first_fit_leaves_an_unfitted_estimator(tiny_model_dir, monkeypatch):
    X, y = sentiment_task(40, seed=8)
    reg = RelishRegressor(backbone=tiny_model_dir, **FAST)
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        reg.fit(X, y)
    monkeypatch.undo()
    with pytest.raises(NotFittedError):
        reg.predict(X)


def test_early_stopping_is_not_mistaken_for_an_interrupt(tiny_model_dir):
    X, y = sentiment_task(40, seed=9)
    reg = RelishRegressor(backbone=tiny_model_dir, early_stopping=True, n_iter_no_change=1,
                          tol=100.0, **{**FAST, "max_epochs": 50}).fit(X, y)
    assert reg.n_iter_ == 2


def test_pickle_from_a_gpu_loads_on_the_cpu(tiny_model_dir):
    """skorch remaps CUDA tensors when unpickled where there is no GPU."""
    X, y = sentiment_task(20, seed=10)
    reg = RelishRegressor(backbone=tiny_model_dir, **FAST).fit(X, y)
    state = pickle.loads(pickle.dumps(reg))
    state.net_.device = "cuda"          # what a GPU-made pickle records
    state.backbone_config_ = type(state.backbone_config_)(
        **{**vars(state.backbone_config_), "device": "cuda"})
    blob = pickle.dumps(state)
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check is about machines without a GPU")
    with pytest.warns(Warning, match="(?i)cuda"):
        restored = pickle.loads(blob)
    assert str(restored.net_.device) == "cpu"
    assert restored.backbone_config_.device == "cpu"
    np.testing.assert_allclose(restored.predict(X), reg.predict(X))


def test_out_of_memory_batches_are_split_and_retried(tiny_model_dir, monkeypatch):
    import torch

    from sklearn_relish.backbone import Backbone, BackboneConfig, load_backbone

    backbone = load_backbone(BackboneConfig(tiny_model_dir))
    texts = [f"text {i} " * (i % 5 + 1) for i in range(11)]
    expected, _ = backbone.encode(texts, batch_size=8)
    real = Backbone._launch_batch      # where the model runs and memory is taken
    sizes = []

    def small_memory(self, rows, views=None):
        sizes.append(len(rows))
        if len(rows) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, rows, views)

    monkeypatch.setattr(Backbone, "_launch_batch", small_memory)
    got, _ = backbone.encode(texts, batch_size=8)
    assert max(sizes) == 8 and sizes.count(8) == 1      # tried whole, then split
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=0)


def test_failed_save_leaves_no_partial_model_and_keeps_the_old_one(tiny_model_dir, tmp_path,
                                                                  monkeypatch):
    import errno

    import safetensors.torch

    X, y = sentiment_task(20, seed=11)
    reg = RelishRegressor(backbone=tiny_model_dir, **FAST).fit(X, y)
    path = reg.save(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        reg.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def test_save_into_an_unwritable_place_says_so(tiny_model_dir, tmp_path):
    X, y = sentiment_task(20, seed=12)
    reg = RelishRegressor(backbone=tiny_model_dir, **FAST).fit(X, y)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        reg.save(blocker / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_second_conversion_of_the_bundled_backbone_waits_for_the_first(tmp_path):
    """Two conversions of the GGUF file at once (threads here; the lock is
    on a file, so processes wait the same way): the second waits on the
    lock, then finds the first one's directory and converts nothing."""
    import threading

    from filelock import FileLock

    from sklearn_relish import bundled

    target = tmp_path / "converted"
    lock = FileLock(str(tmp_path / f".{target.name}.lock"))
    lock.acquire()
    # The GGUF file does not exist: converting would fail, so returning
    # cleanly means the waiting call found the result instead.
    outcome = []

    def convert():
        try:
            bundled._convert_gguf(tmp_path / "absent.gguf", target)
            outcome.append("returned")
        except Exception as exc:      # pragma: no cover - the failure shown below
            outcome.append(exc)

    waiter = threading.Thread(target=convert)
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive()          # blocked on the lock
    target.mkdir()
    (target / "config.json").write_text("{}")
    lock.release()
    waiter.join(timeout=60)
    assert outcome == ["returned"]
