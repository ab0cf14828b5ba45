"""Scaling out: a grid search and an extraction on a Dask ``LocalCluster``.

Three parts, run together or one at a time (each updates
``results/scaling.json`` and the report):

- ``grid-sequential``: ``GridSearchCV`` over n_iterations {1, 2, 3} x
  latent_dim {128, 256}, 5 folds (30 fits and the refit), ``n_jobs=1``, one
  thread, from an empty disk cache;
- ``grid-dask``: the same search on a ``LocalCluster`` of 2 worker processes
  with 1 thread each, through joblib's Dask backend, from an empty default
  cache (``cache_dir="auto"``, as the quick start leaves it): backbone
  passes per distinct text across the workers and the refit (goal <= 1.05),
  and the wall time against ``grid-sequential``;
- ``extract``: token states of ``--extract-n`` texts by one process (one
  thread) against :func:`sklearn_relish.parallel.extract_on_dask` on the
  same cluster.

Passes are counted by the cache's ledger, which every process appends to
(:func:`sklearn_relish.cache_info`).

    python -m benchmarks.studies.scaling --n-texts 2000 --max-epochs 2
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_relish import RelishRegressor, cache_info
from sklearn_relish.cache import MEMORY_CACHE
from sklearn_relish.datasets import load_vader_tweets

from .. import cli, report

GRID = {"n_iterations": [1, 2, 3], "latent_dim": [128, 256]}
PARTS = ("grid-sequential", "grid-dask", "extract")
NAME = "scaling"


def _tweets(n_texts):
    X, y = load_vader_tweets(return_X_y=True)
    rows = np.random.default_rng(0).permutation(len(X))[:n_texts]
    return X[rows], y[rows]


def _search(max_epochs, n_jobs):
    return GridSearchCV(RelishRegressor(max_epochs=max_epochs, random_state=0), GRID,
                        cv=KFold(5, shuffle=True, random_state=0), n_jobs=n_jobs)


def _cluster(cache_dir, dask_malloc_trim=False):
    """A LocalCluster whose workers see ``cache_dir`` as the default cache.

    Without Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` for its workers (the
    setting the README recommends for RELISH) unless ``dask_malloc_trim``:
    that threshold makes glibc hand every freed block above 64 KB back to the
    system, and the backbone's activations are freed and allocated again at
    every batch.
    """
    import dask
    import distributed

    os.environ["RELISH_STATES_DIR"] = str(cache_dir)
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    if not dask_malloc_trim:
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
    return cluster, distributed.Client(cluster)


def _load_default_backbone():
    from sklearn_relish.backbone import load_backbone

    load_backbone(RelishRegressor().get_backbone_config())


def _torch_threads():
    import torch

    return torch.get_num_threads()


def grid_sequential(X, y, args, scratch):
    cache_dir = scratch / "sequential"
    os.environ["RELISH_STATES_DIR"] = str(cache_dir)
    MEMORY_CACHE.clear()
    start = time.perf_counter()
    search = _search(args.max_epochs, n_jobs=1).fit(X, y)
    seconds = time.perf_counter() - start
    info = cache_info(cache_dir)
    return {"seconds": seconds, "n_encoded": info["n_encoded"],
            "passes_per_text": info["n_encoded"] / len(set(X)),
            "best_params": search.best_params_, "best_score_r2": search.best_score_}


def grid_dask(X, y, args, scratch):
    from joblib import parallel_config

    cache_dir = scratch / "dask"
    cluster, client = _cluster(cache_dir)
    try:
        threads = sorted(client.run(_torch_threads).values())
        MEMORY_CACHE.clear()
        start = time.perf_counter()
        with parallel_config(backend="dask"):
            search = _search(args.max_epochs, n_jobs=-1).fit(X, y)
        seconds = time.perf_counter() - start
    finally:
        client.close()
        cluster.close()
    info = cache_info(cache_dir)
    return {"seconds": seconds, "n_encoded": info["n_encoded"],
            "passes_per_text": info["n_encoded"] / len(set(X)),
            "worker_torch_threads": threads,
            "best_params": search.best_params_, "best_score_r2": search.best_score_}


def extract(X, args, scratch):
    from sklearn_relish.parallel import extract_on_dask

    X = X[: args.extract_n]
    one = RelishRegressor(cache_dir=scratch / "extract-one")
    one.token_states(X[:2])             # load the backbone outside the timing
    MEMORY_CACHE.clear()
    start = time.perf_counter()
    one.token_states(X)
    t_one = time.perf_counter() - start
    runs = {}
    for trim in (False, True):
        cluster, client = _cluster(scratch / f"extract-dask-{trim}", dask_malloc_trim=trim)
        try:
            # Every worker loads the backbone before the timing (a map of two
            # small shards may well land on one worker).
            client.run(_load_default_backbone)
            runs[trim] = extract_on_dask(
                RelishRegressor(cache_dir=scratch / f"extract-dask-{trim}"), X, client)
        finally:
            client.close()
            cluster.close()
    dask, dask_trim = runs[False], runs[True]
    return {"n_texts": len(X), "seconds_one_process": t_one,
            "seconds_two_workers": dask["seconds"], "n_encoded_two_workers": dask["n_encoded"],
            "texts_per_s_one_process": len(X) / t_one,
            "texts_per_s_two_workers": len(X) / dask["seconds"],
            "speedup": t_one / dask["seconds"],
            "seconds_two_workers_dask_malloc_trim": dask_trim["seconds"],
            "speedup_dask_malloc_trim": t_one / dask_trim["seconds"]}


def _table(r):
    lines = ["| measure | value | goal |", "|---|---|---|"]
    seq, dsk, ext = r.get("grid-sequential"), r.get("grid-dask"), r.get("extract")
    if dsk:
        lines.append(f"| backbone passes per distinct text, Dask grid search (2 workers + refit) "
                     f"| {dsk['passes_per_text']:.3f} | <= 1.05 |")
    if seq:
        lines.append(f"| backbone passes per distinct text, n_jobs=1 | "
                     f"{seq['passes_per_text']:.3f} | |")
        lines.append(f"| grid search wall time, n_jobs=1 (1 thread) | {seq['seconds']:.0f} s | |")
    if dsk:
        lines.append(f"| grid search wall time, Dask LocalCluster 2 x 1 thread | "
                     f"{dsk['seconds']:.0f} s | |")
    if seq and dsk:
        lines.append(f"| n_jobs=1 / Dask | {seq['seconds'] / dsk['seconds']:.2f}x | |")
    if ext:
        lines.append(f"| extraction of {ext['n_texts']} texts: one process (1 thread) | "
                     f"{ext['texts_per_s_one_process']:.2f} texts/s | |")
        lines.append(f"| extraction: extract_on_dask, 2 workers x 1 thread | "
                     f"{ext['texts_per_s_two_workers']:.2f} texts/s "
                     f"({ext['speedup']:.2f}x) | |")
        if "speedup_dask_malloc_trim" in ext:
            lines.append(f"| the same with Dask's default MALLOC_TRIM_THRESHOLD_=65536 | "
                         f"{ext['n_texts'] / ext['seconds_two_workers_dask_malloc_trim']:.2f} "
                         f"texts/s ({ext['speedup_dask_malloc_trim']:.2f}x) | |")
    return lines


def main(argv=None):
    parser = cli.parser("benchmarks.studies.scaling", __doc__)
    parser.add_argument("--n-texts", type=int, default=2000)
    parser.add_argument("--max-epochs", type=int, default=2,
                        help="epochs per head fit (the measure is the backbone's, "
                             "the head's share only dilutes the ratio)")
    parser.add_argument("--extract-n", type=int, default=400)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args(argv)

    # One thread, as each of the cluster's two workers has.
    cli.set_threads(1)
    path = report.RESULTS / f"{NAME}.json"
    results = json.loads(path.read_text())["results"] if path.exists() else {}
    results.update({"n_texts": args.n_texts, "max_epochs": args.max_epochs, "grid": GRID,
                    "cv": 5})
    X, y = _tweets(args.n_texts)
    results["n_distinct"] = len(set(X))
    scratch = Path(tempfile.mkdtemp(prefix="relish-scaling-"))
    try:
        for part in args.parts:
            print(f"[{time.strftime('%H:%M:%S')}] {part} ...", flush=True)
            if part == "grid-sequential":
                results[part] = grid_sequential(X, y, args, scratch)
            elif part == "grid-dask":
                results[part] = grid_dask(X, y, args, scratch)
            else:
                results[part] = extract(X, args, scratch)
            results[part]["date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            results[part]["command"] = report.command()
            print(json.dumps(results[part], default=str), flush=True)
            report.write(NAME, results, _table(results), _notes(results), echo=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.write(NAME, results, _table(results), _notes(results))


def _notes(r):
    return [
        f"{r['n_texts']} VADER tweets (the bundled set, {r['n_distinct']} distinct), default "
        f"backbone, grid {r['grid']} x {r['cv']} folds (30 fits + refit), "
        f"max_epochs={r['max_epochs']} per head fit.",
        "Passes are the texts the backbones ran on, summed over every process by the cache's "
        "ledger, over the distinct texts. Each part starts from an empty cache; times exclude "
        "nothing but the parent's backbone load (workers load theirs inside the timing of the "
        "grid search; the extraction loads it on every worker first).",
        "Dask's workers run without its default MALLOC_TRIM_THRESHOLD_=65536 (see the README: "
        "with it, extraction in a worker is about a third slower) except in the row that says "
        "so. grid-sequential ran beside another one-thread benchmark on the second core.",
        "Parts may have been run at different times; the machine is shared, so the ratios are "
        "the figures to read. Each part's command and date:",
        *(f"- {part}: `{r[part]['command']}` ({r[part]['date']})" for part in PARTS
          if part in r and "command" in r[part]),
    ]


if __name__ == "__main__":
    main()
