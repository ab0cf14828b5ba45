"""Extraction spread over a Dask cluster, into the shared disk cache.

The backbone is nearly all the cost of RELISH, and its output, the token
states, is cached on disk per text (:mod:`sklearn_relish.cache`). To scale
out, run the backbone where the hardware is and let every later fit read
the cache:

- :func:`extract_on_dask` sends shards of a table to Dask workers; each
  worker loads the backbone once and writes its shard's states into a cache
  directory that the workers and the client share (a local disk for a
  ``LocalCluster``, a shared file system such as NFS or Lustre for a
  cluster). Workers claim shards of the cache's keys before encoding, so a
  text given twice is still encoded once.
- The grid search itself runs on the same cluster through joblib's Dask
  backend (``joblib.parallel_config(backend="dask")``); its fits read the
  states from the cache instead of running the backbone.

Dask is an optional dependency: ``pip install "sklearn-relish[distributed]"``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.utils import _safe_indexing

from .cache import cache_info, resolve_cache_dir

__all__ = ["extract_on_dask"]


def extract_on_dask(estimator, X, client=None, *, n_shards=None, random_state=0):
    """Encode ``X`` with ``estimator``'s backbone on Dask workers, into its
    disk cache.

    Afterwards ``estimator.fit(X, y)``, a grid search over it, or ``predict``
    on these rows read the token states from the cache (in any process that
    sees the directory) and do not run the backbone.

    Parameters
    ----------
    estimator : RelishRegressor
        Its backbone, layer, prompt template, ``max_length`` and
        ``cache_dir`` decide what is computed and where it goes. Not
        modified.
    X : as in :meth:`RelishRegressor.fit`
    client : distributed.Client, optional
        Default: the current client (``distributed.get_client()``).
    n_shards : int, optional
        Pieces ``X`` is cut into (default: four per worker thread, so that a
        slow worker does not hold up the end).
    random_state : int, default=0
        Rows are shuffled before sharding, so that each shard gets a mix of
        long and short texts.

    Returns
    -------
    report : dict
        ``n_rows``, ``n_shards``, ``n_workers``, ``seconds`` (wall time),
        ``n_encoded`` (texts the workers ran the backbone on) and
        ``cache_dir``.
    """
    try:
        from distributed import get_client
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise ImportError(
            "extract_on_dask needs Dask's distributed scheduler: pip install "
            "'sklearn-relish[distributed]'.") from exc
    directory, _ = resolve_cache_dir(estimator.cache_dir)
    if directory is None:
        raise ValueError(
            "extract_on_dask writes the token states into the estimator's disk "
            "cache for later fits to read, but its cache_dir is off (None, or "
            "RELISH_STATES_DIR=off). Set cache_dir to a directory every "
            "worker and this process can reach.")
    client = client if client is not None else get_client()
    _warn_if_malloc_trims(client)
    n_workers = len(client.scheduler_info()["workers"])
    n_threads = sum(client.nthreads().values()) or 1
    n_rows = _n_rows(X)
    n_shards = min(n_rows, n_shards or 4 * n_threads)
    order = np.random.default_rng(random_state).permutation(n_rows)
    shards = [_safe_indexing(X, np.sort(part)) for part in np.array_split(order, n_shards)
              if len(part)]
    # Workers get the directory itself, not "auto", which their own
    # environment could resolve elsewhere.
    params = clone(estimator).set_params(cache_dir=str(directory), verbose=0).get_params()
    before = cache_info(directory)["n_encoded"]
    start = time.perf_counter()
    futures = client.map(_encode_shard, shards, params=params, pure=False)
    client.gather(futures)
    seconds = time.perf_counter() - start
    return {"n_rows": n_rows, "n_shards": len(shards), "n_workers": n_workers,
            "seconds": seconds, "n_encoded": cache_info(directory)["n_encoded"] - before,
            "cache_dir": str(directory)}


def _warn_if_malloc_trims(client):
    """Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``: glibc then
    returns every freed block above 64 KB to the system, and a backbone
    frees and reallocates its activations at every batch. Measured on
    SmolLM2: a third slower extraction per worker."""
    thresholds = client.run(_malloc_trim_threshold)
    low = sorted(w for w, v in thresholds.items() if v is not None and v < 2**24)
    if low:
        warnings.warn(
            f"{len(low)} Dask worker(s) run with MALLOC_TRIM_THRESHOLD_ below 16 MB (Dask's "
            "default is 65536), which makes the backbone about a third slower. Start the "
            "workers without it: drop MALLOC_TRIM_THRESHOLD_ from the Dask config "
            "'distributed.nanny.pre-spawn-environ' (see the README, Scaling out).",
            UserWarning, stacklevel=3)


def _malloc_trim_threshold():
    import os

    value = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _encode_shard(X, params):
    """On a worker: put one shard's token states in the cache (the
    backbone is loaded once per worker process and kept)."""
    from .estimator import RelishRegressor

    states = RelishRegressor(**params).token_states(X)
    return len(states)


def _n_rows(X):
    shape = getattr(X, "shape", None)
    return int(shape[0]) if shape is not None else len(X)
