"""The token-state cache: each distinct text runs through the backbone once."""

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor, cache_info
from sklearn_relish.backbone import load_backbone
from sklearn_relish.cache import (MEMORY_CACHE, CacheWarning, DiskCache, MemoryCache,
                                  cached_states, text_key)
from sklearn_relish.training import pad_collate

# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, latent_dim=16, n_heads=2, batch_size=8, max_epochs=2, random_state=0)



def _backbone(reg):
    return load_backbone(reg.get_backbone_config())


def test_grid_search_runs_the_backbone_once_per_distinct_text(tiny_model_dir, empty_memory):
    X, y = sentiment_task(60, seed=3)
    X = X + X[:10]  # duplicates are encoded once too
    y = np.concatenate([y, y[:10]])
    reg = RelishRegressor(backbone=tiny_model_dir, **FAST)
    backbone = _backbone(reg)
    before = backbone.n_texts_encoded
    GridSearchCV(reg, {"n_iterations": [1, 2, 3], "latent_dim": [8, 16]}, cv=5).fit(X, y)
    # 6 grid points x 5 folds + refit = 31 fits, and each distinct text once.
    assert backbone.n_texts_encoded - before == len(set(X))


def test_cached_and_uncached_training_agree(tiny_model_dir, empty_memory, tmp_path):
    X, y = sentiment_task(40, seed=4)
    reg = RelishRegressor(backbone=tiny_model_dir, cache_dir=tmp_path, **FAST)
    backbone = _backbone(reg)
    start = backbone.n_texts_encoded
    cold = reg.fit(X, y).predict(X)
    assert backbone.n_texts_encoded - start == len(set(X))
    warm = reg.fit(X, y).predict(X)          # from memory
    MEMORY_CACHE.clear()
    from_disk = reg.fit(X, y).predict(X)     # from disk
    assert backbone.n_texts_encoded - start == len(set(X))
    np.testing.assert_array_equal(cold, warm)
    np.testing.assert_array_equal(cold, from_disk)


def test_states_are_stored_ragged_in_half_precision(tiny_model_dir, empty_memory, tmp_path):
    reg = RelishRegressor(backbone=tiny_model_dir)
    backbone = _backbone(reg)
    texts = ["a", "a much longer text than the first one"]
    states, _ = cached_states(backbone, texts, disk=DiskCache(tmp_path, backbone.fingerprint))
    assert [s.dtype for s in states] == [torch.float16] * 2
    lengths = [len(backbone.tokenize([t])[0][0]) for t in texts]
    assert [s.shape for s in states] == [(n, backbone.d_model) for n in lengths]
    files = sorted(tmp_path.rglob("*.states"))
    assert len(files) == 2
    assert min(f.stat().st_size for f in files) < 200 + lengths[0] * backbone.d_model * 2


def test_corrupt_disk_entry_is_recomputed(tiny_model_dir, empty_memory, tmp_path):
    X, y = sentiment_task(20, seed=5)
    reg = RelishRegressor(backbone=tiny_model_dir, cache_dir=tmp_path, **FAST).fit(X, y)
    expected = reg.predict(X)
    files = sorted(tmp_path.rglob("*.states"))
    files[0].write_bytes(files[0].read_bytes()[:-7])              # truncated
    blob = bytearray(files[1].read_bytes()); blob[-1] ^= 0xFF     # flipped bits
    files[1].write_bytes(bytes(blob))
    files[2].write_bytes(b"")                                     # empty
    MEMORY_CACHE.clear()
    backbone = _backbone(reg)
    before = backbone.n_texts_encoded
    # The three recomputed texts are encoded in a batch of their own, so their
    # padding differs from the first pass; float32 kernels may then round
    # differently (seen on CI's CPU), which is why this is not an exact match.
    np.testing.assert_allclose(reg.predict(X), expected, rtol=1e-5, atol=1e-6)
    assert backbone.n_texts_encoded - before == 3
    disk = DiskCache(tmp_path, backbone.fingerprint)
    assert all(disk.get(f.stem) is not None for f in files[:3])


def test_unwritable_cache_dir_fails_before_any_work(tiny_model_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    reg = RelishRegressor(backbone=tiny_model_dir, cache_dir=blocker / "cache", **FAST)
    with pytest.raises(OSError, match="cannot be written to.*cache_dir=None"):
        reg.fit(["a", "b"], [1.0, 2.0])


def test_failed_write_warns_and_leaves_no_partial_file(tiny_model_dir, empty_memory,
                                                       tmp_path, monkeypatch):
    import sklearn_relish.cache as cache_module

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    reg = RelishRegressor(backbone=tiny_model_dir, cache_dir=tmp_path, **FAST)
    reg.fit(["warm up"], [0.0])  # creates the directory and backbone.json
    monkeypatch.setattr(cache_module.os, "replace", disk_full)
    with pytest.warns(CacheWarning, match="No space left"):
        reg.fit(["one", "two", "three"], [1.0, 2.0, 3.0])
    assert reg.predict(["one"]).shape == (1,)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]


def test_two_processes_share_a_cache_dir(tiny_model_dir, tmp_path):
    script = Path(__file__).with_name("cache_writer.py")
    procs = [subprocess.Popen([sys.executable, str(script), tiny_model_dir, str(tmp_path), str(seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    # Both wrote the same 150 texts at the same time; every entry is whole.
    reg = RelishRegressor(backbone=tiny_model_dir)
    backbone = _backbone(reg)
    disk = DiskCache(tmp_path, backbone.fingerprint)
    files = list(tmp_path.rglob("*.states"))
    assert len(files) == 150
    assert all(disk.get(f.stem) is not None for f in files)
    assert not [p for p in tmp_path.rglob(".tmp-*")]
    # ... and split the work by claiming shards: each text was encoded once.
    assert cache_info(tmp_path)["n_encoded"] == 150


def test_memory_cache_is_bounded_lru():
    cache = MemoryCache(max_bytes=3 * 400)
    tensors = {k: torch.zeros(10, 20, dtype=torch.float16) for k in "abcd"}  # 400 B each
    for k in "abc":
        cache.put(k, tensors[k])
    cache.get("a")            # a becomes the most recent
    cache.put("d", tensors["d"])
    assert cache.get("b") is None and cache.get("a") is not None
    assert len(cache) == 3 and cache.nbytes == 1200


def test_key_depends_on_fingerprint_and_text():
    assert text_key("f1", "x") != text_key("f2", "x") != text_key("f1", "y")
    assert text_key("f1", "x") == text_key("f1", "x")


def test_fingerprint_changes_with_layer_and_max_length(tiny_model_dir):
    base = RelishRegressor(backbone=tiny_model_dir)
    prints = {_backbone(base.set_params(layer=layer, max_length=m)).fingerprint
              for layer in (-1, 1) for m in (64, 128)}
    assert len(prints) == 4


def test_collate_pads_each_batch_to_its_own_longest_text():
    # Rows come in float16, or bfloat16 where float16 would overflow.
    short = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)).half()
    wide = torch.full((5, 4), 1e5).bfloat16()
    X, y = pad_collate([(short, torch.zeros(1)), (wide, torch.ones(1))])
    assert X["states"].shape == (2, 5, 4) and X["states"].dtype == torch.float32
    assert X["mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert torch.equal(X["states"][0, :3], short.float())
    assert torch.equal(X["states"][1], wide.float())
    assert not X["states"][0, 3:].any()          # zeros where the mask is False
    assert y.tolist() == [[0.0], [1.0]]


def test_extraction_pads_on_the_right_with_the_pad_id(tiny_model_dir, monkeypatch):
    """Positions stay 0..n-1 for every text of a batch, and padded ids are
    masked out: each text's states do not depend on its batch."""
    backbone = _backbone(RelishRegressor(backbone=tiny_model_dir))
    seen = []
    model = backbone.model

    def spy(**kwargs):
        seen.append(kwargs)
        return model(**kwargs)

    monkeypatch.setattr(backbone, "model", spy)
    ids = [[5, 6], [7, 8, 9, 10], [11]]
    batched = dict(backbone.iter_states(ids, batch_size=3))
    alone = dict(backbone.iter_states(ids, batch_size=1))
    pad = backbone.pad_id
    # One batch, longest first.
    assert seen[0]["input_ids"].tolist() == [[7, 8, 9, 10], [5, 6, pad, pad],
                                             [11, pad, pad, pad]]
    assert seen[0]["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]
    assert [len(batched[row]) for row in range(3)] == [2, 4, 1]
    for row in range(3):
        torch.testing.assert_close(batched[row], alone[row], atol=1e-3, rtol=1e-3)


def test_progress_bar_only_when_asked(tiny_model_dir, capsys):
    backbone = _backbone(RelishRegressor(backbone=tiny_model_dir))
    backbone.encode(["a b", "c"], batch_size=1, progress=False)
    assert capsys.readouterr().err == ""
    backbone.encode(["a b", "c"], batch_size=1, progress=True)
    err = capsys.readouterr().err
    assert "extracting token states" in err and "2/2" in err


def test_release_freed_memory_calls_malloc_trim_where_glibc_has_it(monkeypatch):
    import sklearn_relish.cache as cache_module

    calls = []
    monkeypatch.setattr(cache_module, "_MALLOC_TRIM", lambda pad: calls.append(pad) or 1)
    cache_module.release_freed_memory()
    assert calls == [0]
    # Without glibc (macOS, Windows, musl) it does nothing, and does not fail.
    monkeypatch.setattr(cache_module, "_MALLOC_TRIM", None)
    cache_module.release_freed_memory()
    assert calls == [0]
    # The real lookup, on this machine, finds it or finds nothing.
    monkeypatch.setattr(cache_module, "_MALLOC_TRIM", False)
    assert cache_module._malloc_trim() is None or callable(cache_module._malloc_trim())


def test_states_are_stored_unpadded_in_float16_and_widened_only_where_needed():
    from sklearn_relish.backbone import _batch_to_storage

    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    hidden[1, 1, 2] = 1e6          # beyond float16's range: row 1 needs bfloat16
    hidden[2, 4, 0] = 1e9          # but in row 2's padding, which is not stored
    lengths = [5, 3, 4]
    mask = torch.tensor([[1] * n + [0] * (5 - n) for n in lengths])
    rows = _batch_to_storage(hidden, mask, lengths)
    assert [r.dtype for r in rows] == [torch.float16, torch.bfloat16, torch.float16]
    assert [r.shape for r in rows] == [(n, 4) for n in lengths]
    for i, (row, n) in enumerate(zip(rows, lengths)):
        torch.testing.assert_close(row.float(), hidden[i, :n], rtol=1e-2, atol=1e-2)
        # A row owns its memory: a cache that saves it does not save the batch.
        assert row.untyped_storage().nbytes() == row.numel() * row.element_size()


def test_states_held_in_memory_are_written_to_a_new_disk_cache(tiny_model_dir, empty_memory,
                                                               tmp_path):
    X, y = sentiment_task(20, seed=11)
    reg = RelishRegressor(backbone=tiny_model_dir, cache_dir=None, **FAST).fit(X, y)
    backbone = _backbone(reg)
    before = backbone.n_texts_encoded
    reg.set_params(cache_dir=tmp_path).fit(X, y)
    assert backbone.n_texts_encoded == before           # from memory ...
    assert len(list(tmp_path.rglob("*.states"))) == len(set(X))   # ... and now on disk
