"""A grid search pays the backbone once.

``GridSearchCV`` over n_iterations {1,2,3} x latent_dim {128,256}, 5 folds
(30 fits + refit), on VADER tweets with the default backbone. Reports:

- backbone forward passes per distinct text (goal: exactly 1.0);
- the cached grid search against one extraction pass plus the same 31 head
  fits on states already in memory (goal: <= 1.3x);
- with the cache against without it. Without the cache every fit and every
  scoring runs the backbone again, which on the full set would take hours
  on this CPU; it is measured on a subset (``--uncached-n``) with the same
  grid and folds, and estimated for the full set from the measured
  extraction time (31 passes over the data).

    python -m benchmarks.studies.grid_search_cache --n-texts 2000
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_relish import RelishRegressor
from sklearn_relish.backbone import load_backbone
from sklearn_relish.cache import MEMORY_CACHE, cached_states
from sklearn_relish.datasets import load_vader_tweets

from .. import cli, report

GRID = {"n_iterations": [1, 2, 3], "latent_dim": [128, 256]}


def _grid(X, y, max_epochs, backbone):
    search = GridSearchCV(
        RelishRegressor(backbone=backbone, max_epochs=max_epochs, random_state=0),
        GRID, cv=KFold(5, shuffle=True, random_state=0), n_jobs=1)
    start = time.perf_counter()
    search.fit(X, y)
    return time.perf_counter() - start, search


def main(argv=None):
    parser = cli.parser("benchmarks.studies.grid_search_cache", __doc__)
    cli.add_backbone(parser)
    parser.add_argument("--n-texts", type=int, default=2000)
    parser.add_argument("--uncached-n", type=int, default=200)
    parser.add_argument("--max-epochs", type=int, default=10)
    cli.add_threads(parser)
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)
    backbone_name = cli.resolve_backbone_name(args.backbone)

    X, y = load_vader_tweets(return_X_y=True)
    rng = np.random.default_rng(0)
    rows = rng.permutation(len(X))[: args.n_texts]
    X, y = X[rows], y[rows]
    probe = RelishRegressor(backbone=backbone_name)
    backbone = load_backbone(probe.get_backbone_config())  # load time excluded
    prompts = probe.prompts(X)
    n_unique = len(set(prompts))

    # 1. Cached grid search from a cold cache.
    MEMORY_CACHE.clear()
    before = backbone.n_texts_encoded
    t_cached, search = _grid(X, y, args.max_epochs, backbone_name)
    passes = (backbone.n_texts_encoded - before) / n_unique
    print(f"cached grid: {t_cached:.1f} s, {passes:.3f} passes per text", flush=True)

    # 2. The ideal: one extraction pass, then the 31 head fits on states in memory.
    MEMORY_CACHE.clear()
    start = time.perf_counter()
    cached_states(backbone, prompts)
    t_extract = time.perf_counter() - start
    t_heads, _ = _grid(X, y, args.max_epochs, backbone_name)  # every lookup hits
    print(f"one extraction pass: {t_extract:.1f} s; 31 head fits: {t_heads:.1f} s", flush=True)

    # 3. With and without the cache on a subset.
    Xs, ys = X[: args.uncached_n], y[: args.uncached_n]
    MEMORY_CACHE.clear()
    t_small_cached, _ = _grid(Xs, ys, args.max_epochs, backbone_name)
    MEMORY_CACHE.clear()
    limit, MEMORY_CACHE.max_bytes = MEMORY_CACHE.max_bytes, 0   # nothing is kept
    before = backbone.n_texts_encoded
    try:
        t_small_uncached, _ = _grid(Xs, ys, args.max_epochs, backbone_name)
    finally:
        MEMORY_CACHE.max_bytes = limit
    small_passes = (backbone.n_texts_encoded - before) / len(set(Xs))
    print(f"subset of {len(Xs)}: cached {t_small_cached:.1f} s, uncached "
          f"{t_small_uncached:.1f} s ({small_passes:.1f} passes per text)", flush=True)

    # Without the cache on the full set: the heads, plus the backbone over the
    # data once per fit and once per scoring (30 folds x 5/5 + refit = 31 passes).
    t_uncached_est = t_heads + 31 * t_extract
    results = {
        "n_texts": len(X), "n_unique": n_unique, "max_epochs": args.max_epochs,
        "grid": GRID, "cv": 5, "n_fits": 31, "backbone": backbone_name,
        "passes_per_unique_text": passes,
        "t_cached_grid_s": t_cached,
        "t_one_extraction_s": t_extract,
        "t_head_fits_s": t_heads,
        "overhead_ratio": t_cached / (t_extract + t_heads),
        "uncached_subset_n": len(Xs),
        "t_subset_cached_s": t_small_cached,
        "t_subset_uncached_s": t_small_uncached,
        "subset_passes_per_text_uncached": small_passes,
        "speedup_subset_measured": t_small_uncached / t_small_cached,
        "t_uncached_full_estimated_s": t_uncached_est,
        "speedup_full_estimated": t_uncached_est / t_cached,
        "best_params": search.best_params_,
        "best_score_r2": float(search.best_score_),
    }
    r = results
    table = [
        "| measure | value | goal |", "|---|---|---|",
        f"| backbone passes per distinct text (cached grid, {r['n_texts']} tweets) | {r['passes_per_unique_text']:.3f} | 1.0 |",
        f"| cached grid search, wall time | {r['t_cached_grid_s']:.0f} s | |",
        f"| one extraction pass + the 31 head fits on in-memory states | {r['t_one_extraction_s']:.0f} s + {r['t_head_fits_s']:.0f} s | |",
        f"| cached grid / (one pass + head fits) | {r['overhead_ratio']:.2f}x | <= 1.3x |",
        f"| subset of {r['uncached_subset_n']}: uncached / cached (measured) | {r['t_subset_uncached_s']:.0f} s / {r['t_subset_cached_s']:.0f} s = {r['speedup_subset_measured']:.1f}x | >= 10x |",
        f"| full set: uncached (estimated: heads + 31 passes) / cached | {r['t_uncached_full_estimated_s']:.0f} s / {r['t_cached_grid_s']:.0f} s = {r['speedup_full_estimated']:.1f}x | >= 10x |",
    ]
    notes = [f"Best grid point: {r['best_params']} (mean CV R² {r['best_score_r2']:.3f}).",
             "Times exclude loading the backbone (once per process, shared by all clones)."]
    report.write("grid_search_cache", results, table, notes)


if __name__ == "__main__":
    main()
