"""Fits side by side: threads, processes, and the random state of each."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from joblib import parallel_backend
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, cross_val_predict

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor, cache_info, clear_cache
from sklearn_relish.backbone import load_backbone
from sklearn_relish.cache import (MEMORY_CACHE, CacheWarning, DiskCache, cached_states,
                                  text_key)

# Dropout on, so that every source of randomness (initialisation, shuffling,
# dropout's masks, the validation split) is exercised; no anchor, so that
# the prediction is the head's (a stacked ridge could hide it).
# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, latent_dim=16, n_heads=2, batch_size=8, max_epochs=4, dropout=0.3,
            early_stopping=True, validation_fraction=0.25, anchor=None)


def _fit_predict(model_dir, X, y, seed=0):
    reg = RelishRegressor(backbone=model_dir, random_state=seed, **FAST).fit(X, y)
    return reg.predict(X)


def test_fit_leaves_torch_global_generator_alone(tiny_model_dir):
    X, y = sentiment_task(24, seed=1)
    _fit_predict(tiny_model_dir, X, y)   # loading the backbone draws (transformers)
    state = torch.get_rng_state()
    _fit_predict(tiny_model_dir, X, y)
    assert torch.equal(torch.get_rng_state(), state)


def test_fits_in_threads_match_the_sequential_fit(tiny_model_dir):
    """Four fits at once, and a thread that keeps reseeding and drawing from
    torch's global generator meanwhile: each fit draws only from its own."""
    X, y = sentiment_task(40, seed=2)
    expected = _fit_predict(tiny_model_dir, X, y)
    stop = threading.Event()

    def meddle():
        while not stop.is_set():
            torch.manual_seed(123)
            torch.rand(1000)

    noise = threading.Thread(target=meddle)
    noise.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: _fit_predict(tiny_model_dir, X, y), range(4)))
    finally:
        stop.set()
        noise.join()
    for result in results:
        np.testing.assert_array_equal(result, expected)
    # The seed matters: another one gives another head.
    assert not np.array_equal(_fit_predict(tiny_model_dir, X, y, seed=1), expected)


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_cross_val_predict_is_the_same_under_any_backend(tiny_model_dir, backend, tmp_path):
    """loky's workers run torch with one thread (joblib's limit for two
    workers on two cores); so does the sequential run here, as another
    thread count sums floats in another order. The states are encoded once
    beforehand, into a disk cache every worker reads: encoded in other
    batches, a few of their float16 values could differ in the last bit,
    which is not what this test is about."""
    X, y = sentiment_task(40, seed=3)
    reg = RelishRegressor(backbone=tiny_model_dir, random_state=0, cache_dir=tmp_path, **FAST)
    cv = KFold(4, shuffle=True, random_state=0)
    MEMORY_CACHE.clear()
    reg.token_states(X)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = cross_val_predict(reg, X, y, cv=cv, n_jobs=1)
        limit = {"inner_max_num_threads": 1} if backend == "loky" else {}
        with parallel_backend(backend, n_jobs=2, **limit):
            parallel = cross_val_predict(reg, X, y, cv=cv)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(parallel, sequential)


# -- the shared disk cache ------------------------------------------------------


@pytest.fixture
def default_cache(tmp_path, monkeypatch):
    """The default disk cache (``cache_dir="auto"``) in a directory of this
    test's; workers started from now on inherit it."""
    from joblib.externals.loky import get_reusable_executor

    directory = tmp_path / "relish-cache"
    monkeypatch.setenv("RELISH_STATES_DIR", str(directory))
    get_reusable_executor().shutdown(wait=True)  # idle workers keep the old env
    MEMORY_CACHE.clear()
    yield directory
    MEMORY_CACHE.clear()
    get_reusable_executor().shutdown(wait=True)


def test_grid_search_workers_share_the_default_cache(tiny_model_dir, default_cache):
    """As the quick start writes it, with n_jobs=2: the workers and the
    parent's refit run the backbone once per distinct text in total."""
    X, y = sentiment_task(90, seed=4)
    X = [x + " and long" * 60 for x in X]   # the workers' encoding overlaps in time
    search = GridSearchCV(RelishRegressor(backbone=tiny_model_dir, latent_dim=16, n_heads=2,
                                          max_epochs=2, random_state=0),
                          {"n_iterations": [1, 2]}, cv=3, n_jobs=2).fit(X, y)
    info = cache_info()
    assert info["directory"] == str(default_cache)
    assert info["n_entries"] == len(set(X))
    assert info["n_encoded"] == len(set(X))
    assert search.predict(X[:3]).shape == (3,)


def test_a_new_process_reuses_the_default_cache(tiny_model_dir, default_cache):
    X, y = sentiment_task(30, seed=5)
    reg = RelishRegressor(backbone=tiny_model_dir, latent_dim=16, n_heads=2, max_epochs=1)
    backbone = load_backbone(reg.get_backbone_config())
    reg.fit(X, y)
    MEMORY_CACHE.clear()                  # what a restart loses
    before = backbone.n_texts_encoded
    reg.fit(X, y)
    assert backbone.n_texts_encoded == before
    assert clear_cache() > 0
    assert cache_info()["n_entries"] == 0
    reg.fit(X, y)
    assert backbone.n_texts_encoded == before + len(set(X))


def test_cache_can_be_turned_off(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RELISH_STATES_DIR", "off")
    monkeypatch.setenv("RELISH_HOME", str(tmp_path))
    RelishRegressor(backbone=tiny_model_dir, max_epochs=1).fit(["a b", "c d"], [1.0, 2.0])
    assert not list(tmp_path.iterdir())
    assert cache_info()["directory"] is None


def test_unwritable_default_cache_warns_and_fits_in_memory(tiny_model_dir, tmp_path,
                                                          monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("RELISH_STATES_DIR", str(blocker / "cache"))
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=1)
    with pytest.warns(CacheWarning, match="cannot be written to.*RELISH_STATES_DIR"):
        reg.fit(["a b", "c d"], [1.0, 2.0])
    assert reg.predict(["a b"]).shape == (1,)


def test_reserved_texts_are_waited_for_and_read_not_encoded(tiny_model_dir, tmp_path):
    """The reservation protocol itself, without timing luck: while another
    (live) owner holds some texts, the encoder does the rest and waits;
    what is stored meanwhile it reads instead of encoding."""
    reg = RelishRegressor(backbone=tiny_model_dir)
    backbone = load_backbone(reg.get_backbone_config())
    texts = [f"reserved text {i}" for i in range(64)]
    held = texts[::4]
    disk = DiskCache(tmp_path, backbone.fingerprint)
    disk.check_writable()
    held_keys = [text_key(backbone.fingerprint, t) for t in held]
    assert all(disk.reserve(key) for key in held_keys)     # this process: alive
    assert not disk.reserve(held_keys[0])                 # held: a second try fails
    MEMORY_CACHE.clear()
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        states=cached_states(backbone, texts, disk=disk, memory=None)[0]))
    before = backbone.n_texts_encoded
    worker.start()
    deadline = time.monotonic() + 60
    while backbone.n_texts_encoded - before < len(texts) - len(held):
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.01)
    time.sleep(0.2)
    assert worker.is_alive()              # waiting for the reserved texts
    done_elsewhere, _ = backbone.encode(held)
    for key, states in zip(held_keys, done_elsewhere):
        disk.put(key, states)
    encoded_so_far = backbone.n_texts_encoded
    disk.release(held_keys)
    worker.join(60)
    assert backbone.n_texts_encoded == encoded_so_far   # read, not encoded again
    assert len(result["states"]) == len(texts)
    assert cache_info(tmp_path)["n_encoded"] == len(texts) - len(held)
    assert not list(tmp_path.rglob("*.claim"))


def test_a_dead_owners_reservations_are_taken_over(tiny_model_dir, tmp_path):
    import socket
    import subprocess
    import sys

    reg = RelishRegressor(backbone=tiny_model_dir)
    backbone = load_backbone(reg.get_backbone_config())
    texts = ["orphan one", "orphan two"]
    disk = DiskCache(tmp_path, backbone.fingerprint)
    disk.check_writable()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for text in texts:
        path = disk.path(text_key(backbone.fingerprint, text)).with_suffix(".claim")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{socket.gethostname()} {dead}")
    MEMORY_CACHE.clear()
    states, _ = cached_states(backbone, texts, disk=disk, memory=None)
    assert len(states) == 2 and cache_info(tmp_path)["n_encoded"] == 2
    assert not list(tmp_path.rglob("*.claim"))


def test_default_cache_evicts_the_least_recently_used_past_its_cap(tmp_path):
    entry = torch.zeros(10, 20, dtype=torch.float16)     # 400 B + a 44 B header
    size = 400 + 44
    disk = DiskCache(tmp_path, "f" * 64, max_bytes=10 * size)
    disk.check_writable()
    for i in range(10):
        disk.put(f"{i:02d}" + "0" * 62, entry)
        os.utime(disk.path(f"{i:02d}" + "0" * 62), (i, i))   # written in order
    disk.get("00" + "0" * 62)             # read: now the most recent
    disk.put("aa" + "0" * 62, entry)      # 11 entries: over the cap, evicts
    left = {p.stem[:2] for p in tmp_path.rglob("*.states")}
    assert "00" in left and "aa" in left and "01" not in left
    assert len(left) * size <= 0.9 * 10 * size


# -- Dask -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _cluster(tmp_path_factory):
    """A real LocalCluster: two worker processes, one thread each, started
    with the default cache in a directory of this module's (one cluster for
    the module: starting one costs seconds)."""
    distributed = pytest.importorskip("distributed")
    import dask

    # As the README recommends: workers without Dask's MALLOC_TRIM_THRESHOLD_.
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with pytest.MonkeyPatch.context() as patch, \
            dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        patch.setenv("RELISH_STATES_DIR", str(tmp_path_factory.mktemp("dask-cache")))
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None, silence_logs=50) as cluster, \
                distributed.Client(cluster) as client:
            yield client, patch


@pytest.fixture
def dask_client(_cluster):
    """The module's client, with empty caches (disk, and memory everywhere)."""
    client, _ = _cluster
    clear_cache()
    client.run(_clear_memory_cache)
    return client


def _clear_memory_cache():
    from sklearn_relish.cache import MEMORY_CACHE

    MEMORY_CACHE.clear()


def test_grid_search_runs_on_dask_and_encodes_each_text_once(tiny_model_dir, dask_client):
    from joblib import parallel_config

    X, y = sentiment_task(60, seed=6)
    search = GridSearchCV(RelishRegressor(backbone=tiny_model_dir, latent_dim=16, n_heads=2,
                                          max_epochs=2, random_state=0),
                          {"n_iterations": [1, 2]}, cv=3, n_jobs=-1)
    with parallel_config(backend="dask"):
        search.fit(X, y)
    assert len(search.cv_results_["params"]) == 2
    assert cache_info()["n_encoded"] == len(set(X))


def test_extraction_on_dask_fills_the_cache_the_fit_reads(tiny_model_dir, dask_client):
    from sklearn_relish.parallel import extract_on_dask

    X, y = sentiment_task(80, seed=7)
    X = X + X[:10]                       # repeats, in other shards
    y = np.concatenate([y, y[:10]])
    reg = RelishRegressor(backbone=tiny_model_dir, latent_dim=16, n_heads=2, max_epochs=1)
    report = extract_on_dask(reg, X, dask_client, n_shards=6)
    assert report["n_workers"] == 2 and report["n_shards"] == 6
    assert report["n_encoded"] == len(set(X))
    backbone = load_backbone(reg.get_backbone_config())
    before = backbone.n_texts_encoded
    reg.fit(X, y)                         # this process: reads, never encodes
    assert backbone.n_texts_encoded == before
    assert cache_info()["n_encoded"] == len(set(X))
    # A fit that streams the states reads the workers' entries from disk.
    _clear_memory_cache()
    streamed = clone(reg).set_params(max_state_memory=1000, random_state=0).fit(X, y)
    assert backbone.n_texts_encoded == before
    in_memory = clone(reg).set_params(random_state=0).fit(X, y)
    np.testing.assert_allclose(streamed.predict(X), in_memory.predict(X), atol=1e-5)


def test_extraction_on_dask_needs_a_disk_cache(tiny_model_dir, dask_client):
    from sklearn_relish.parallel import extract_on_dask

    reg = RelishRegressor(backbone=tiny_model_dir, cache_dir=None)
    with pytest.raises(ValueError, match="cache_dir is off"):
        extract_on_dask(reg, ["a", "b"], dask_client)


def test_extraction_on_dask_warns_about_dasks_malloc_trim_threshold(tiny_model_dir,
                                                                    dask_client):
    from sklearn_relish.parallel import extract_on_dask

    reg = RelishRegressor(backbone=tiny_model_dir)
    dask_client.run(_set_malloc_trim, "65536")
    try:
        with pytest.warns(UserWarning, match="2 Dask worker.*MALLOC_TRIM_THRESHOLD_"):
            extract_on_dask(reg, ["a b", "c d"], dask_client)
    finally:
        dask_client.run(_set_malloc_trim, None)


def _set_malloc_trim(value):
    import os

    if value is None:
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    else:
        os.environ["MALLOC_TRIM_THRESHOLD_"] = value
