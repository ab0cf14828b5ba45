"""Fits side by side: threads, processes, and the random state of each."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from joblib import parallel_backend
from sklearn.model_selection import KFold, cross_val_predict

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish.cache import MEMORY_CACHE

# Dropout on, so that every source of randomness (initialisation, shuffling,
# dropout's masks, the validation split) is exercised; no anchor, so that
# the prediction is the head's (a stacked ridge could hide it).
FAST = dict(latent_dim=16, n_heads=2, batch_size=8, max_epochs=4, dropout=0.3,
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
def test_cross_val_predict_is_the_same_under_any_backend(tiny_model_dir, backend):
    """loky's workers run torch with one thread (joblib's limit for two
    workers on two cores); so does the sequential run here, as another
    thread count sums floats in another order."""
    X, y = sentiment_task(40, seed=3)
    reg = RelishRegressor(backbone=tiny_model_dir, random_state=0, **FAST)
    cv = KFold(4, shuffle=True, random_state=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sequential = cross_val_predict(reg, X, y, cv=cv, n_jobs=1)
        MEMORY_CACHE.clear()
        limit = {"inner_max_num_threads": 1} if backend == "loky" else {}
        with parallel_backend(backend, n_jobs=2, **limit):
            parallel = cross_val_predict(reg, X, y, cv=cv)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(parallel, sequential)
