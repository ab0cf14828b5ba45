"""What storing token states in int8 costs in accuracy, per benchmark task.

``RelishRegressor(state_storage="int8")`` caches each token's state as int8
with one scale per token (``d_model + 2`` bytes instead of ``2 * d_model``).
This study refits the default RELISH on each task's full splits twice, from
the same cached float16 states: once as they are, once passed through the
int8 storage's own ``pack`` and ``unpack`` (the arithmetic the cache applies
when it stores a state), with the same seed. It also fits the benchmark's
deterministic ``ridge_mean`` (StandardScaler + RidgeCV on mean-pooled
states) on both, which isolates the information lost from the training
noise, and measures how far the int8 states are from the float16 ones.

The states are read from the benchmark cache and never written there: a
task whose states are not all cached is skipped (run ``benchmarks.run`` on
it first). Results are written after every task, and a rerun skips the
(task, seed) pairs it has.

    python -m benchmarks.studies.storage --backbone minilm --seeds 0 --threads 1
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from sklearn_relish import RelishRegressor
from sklearn_relish.cache import HEADER_BYTES, MEMORY_CACHE, DiskCache, cached_states, text_key
from sklearn_relish.storage import bytes_per_token, pack, storage_fingerprint, unpack

from .. import cli, report
from ..baselines import Context, _ridge
from ..cli import backbone_slug
from ..tasks import TASKS, load_task
from ..metrics import score

STORAGES = ("float16", "int8")


def read_cached(ctx, prompts):
    """Float16 states of ``prompts`` from the benchmark cache, or None when
    some are not cached. Nothing is written to the cache."""
    backbone = ctx.load_backbone()
    disk = DiskCache(ctx.cache_dir, backbone.fingerprint)
    disk.enabled = False      # read-only: DiskCache.put and the ledger do nothing
    keys = [text_key(backbone.fingerprint, p) for p in dict.fromkeys(prompts)]
    if not all(disk.path(key).exists() for key in keys):
        return None
    before = backbone.n_texts_encoded
    states, _ = cached_states(backbone, prompts, disk=disk, memory=None)
    assert backbone.n_texts_encoded == before, "states were encoded, not read"
    return states


def reconstruction(states):
    """How far int8 states are from the float16 ones, over every token."""
    errors, cosines = [], []
    for state in states:
        exact = state.float()
        back = unpack(pack(state, "int8"), "int8").float()
        errors.append(((back - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-12)))
        cosines.append(torch.nn.functional.cosine_similarity(back, exact, dim=1))
    errors, cosines = torch.cat(errors), torch.cat(cosines)
    return {"relative_error_mean": float(errors.mean()),
            "relative_error_p99": float(errors.quantile(0.99)),
            "cosine_mean": float(cosines.mean()), "cosine_min": float(cosines.min())}


def fill_memory(backbone, prompts, states, storage):
    """Put the states in the in-memory cache as ``storage`` keeps them, under
    the keys ``RelishRegressor(state_storage=storage)`` looks up."""
    MEMORY_CACHE.clear()
    fingerprint = storage_fingerprint(backbone.fingerprint, storage)
    for prompt, state in zip(prompts, states):
        MEMORY_CACHE.put(text_key(fingerprint, prompt), pack(state, storage))


def fit_relish(ctx, task, storage, seed, **params):
    """The benchmark's ``relish`` method (default settings, unless ``params``
    say otherwise), reading the states in ``storage`` from memory."""
    backbone = ctx.load_backbone()
    before = backbone.n_texts_encoded
    model = RelishRegressor(backbone=ctx.backbone, prompt_template=task.template,
                            max_length=ctx.max_length, cache_dir=None,
                            state_storage=storage, random_state=seed, **params)
    start = time.perf_counter()
    model.fit(task.X_train, task.y_train)
    fit_time = time.perf_counter() - start
    y_pred = model.predict(task.X_test)
    assert backbone.n_texts_encoded == before, "states were encoded, not read"
    return {**score(task.y_test, y_pred), "fit_time": round(fit_time, 1),
            "n_epochs": model.n_iter_}


def fit_ridge_mean(train_states, y_train, test_states, y_test, storage):
    """The benchmark's ``ridge_mean`` on states stored in ``storage``."""
    def pooled(states):
        return np.stack([unpack(pack(s, storage), storage).float().mean(0).numpy()
                         for s in states])
    model = _ridge(None).fit(pooled(train_states), y_train)
    return score(y_test, model.predict(pooled(test_states)))


def run_task(ctx, task, seeds, **params):
    """Both storages' fits on one task (``params``: RelishRegressor's, for
    tests), or None when its states are not all cached."""
    backbone = ctx.load_backbone()
    train_prompts = ctx.prompts(task, task.X_train)
    test_prompts = ctx.prompts(task, task.X_test)
    prompts = train_prompts + test_prompts
    states = read_cached(ctx, prompts)
    if states is None:
        return None
    n_train = len(train_prompts)
    distinct = {p: s for p, s in zip(prompts, states)}
    n_tokens = sum(len(s) for s in distinct.values())
    record = {"n_train": len(task.y_train), "n_test": len(task.y_test),
              "n_distinct_prompts": len(distinct), "n_tokens": n_tokens,
              "d_model": backbone.d_model,
              "reconstruction": reconstruction(list(distinct.values()))}
    record["bytes_per_token"] = {
        storage: {"payload": bytes_per_token(backbone.d_model, storage),
                  "on_disk": round(bytes_per_token(backbone.d_model, storage)
                                   + HEADER_BYTES * len(distinct) / n_tokens, 1)}
        for storage in STORAGES}
    record["ridge_mean"] = {
        storage: fit_ridge_mean(states[:n_train], task.y_train, states[n_train:],
                                task.y_test, storage)
        for storage in STORAGES}
    record["relish"] = {}
    for seed in seeds:
        for storage in STORAGES:
            fill_memory(backbone, list(distinct), list(distinct.values()), storage)
            outcome = fit_relish(ctx, task, storage, seed, **params)
            record["relish"].setdefault(str(seed), {})[storage] = outcome
            print(f"  {task.name} seed {seed} {storage}: Pearson {outcome['pearson']:.4f} "
                  f"({outcome['fit_time']:.0f} s)", flush=True)
        MEMORY_CACHE.clear()
    return record


def table(results):
    lines = ["| task | RELISH Pearson, float16 | int8 | change | ridge_mean Pearson, "
             "float16 | int8 | change | mean relative error of a token | "
             "bytes per token on disk, float16 | int8 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, record in results["tasks"].items():
        relish = record["relish"]
        half = np.mean([r["float16"]["pearson"] for r in relish.values()])
        quarter = np.mean([r["int8"]["pearson"] for r in relish.values()])
        ridge = record["ridge_mean"]
        size = record["bytes_per_token"]
        lines.append(
            f"| {name} | {half:.4f} | {quarter:.4f} | {quarter - half:+.4f} | "
            f"{ridge['float16']['pearson']:.4f} | {ridge['int8']['pearson']:.4f} | "
            f"{ridge['int8']['pearson'] - ridge['float16']['pearson']:+.4f} | "
            f"{record['reconstruction']['relative_error_mean']:.4f} | "
            f"{size['float16']['on_disk']:.0f} | {size['int8']['on_disk']:.0f} |")
    return lines


def main(argv=None):
    parser = cli.parser("benchmarks.studies.storage", __doc__)
    cli.add_backbone(parser)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    cli.add_seeds(parser, default=(0,))
    parser.add_argument("--max-length", type=int, default=512,
                        help="as benchmarks.run (its cache keys depend on it)")
    cli.add_data_dir(parser)
    cli.add_cache_dir(parser)
    cli.add_threads(parser)
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)
    backbone = cli.resolve_backbone_name(args.backbone)
    name = f"storage-{backbone_slug(backbone)}"
    path = report.RESULTS / f"{name}.json"
    results = (json.loads(path.read_text())["results"] if path.exists()
               else {"backbone": backbone, "tasks": {}, "skipped": {}})
    # A state's size grows with MiniLM's and SmolLM2's longest tasks: the
    # in-memory cache must hold one task's states.
    MEMORY_CACHE.max_bytes = max(MEMORY_CACHE.max_bytes, 6 * 2**30)
    ctx = Context(backbone, args.cache_dir, max_length=args.max_length)
    for task_name in args.tasks:
        done = results["tasks"].get(task_name, {}).get("relish", {})
        if all(str(seed) in done for seed in args.seeds):
            print(f"{task_name}: done", flush=True)
            continue
        print(f"{task_name}:", flush=True)
        record = run_task(ctx, load_task(task_name, data_dir=args.data_dir), args.seeds)
        if record is None:
            results["skipped"][task_name] = "states not all in the cache"
            print(f"{task_name}: skipped, states not all in the cache", flush=True)
            continue
        results["skipped"].pop(task_name, None)
        if task_name in results["tasks"]:
            record["relish"] = {**results["tasks"][task_name]["relish"], **record["relish"]}
        results["tasks"][task_name] = record
        write(name, results, args.seeds)


def write(name, results, seeds):
    seeds_done = sorted({int(s) for r in results["tasks"].values() for s in r["relish"]})
    notes = [
        f"Default RelishRegressor (random_state {', '.join(map(str, seeds_done))}; "
        "the RELISH columns are means over those seeds) and ridge_mean, fitted on each "
        "task's full train split and scored on its test split, from the same cached "
        "float16 states: as they are, and through `sklearn_relish.storage.pack`/`unpack` "
        "with storage int8 (what `state_storage=\"int8\"` stores and reads). "
        "ridge_mean is deterministic, so its change is the information int8 loses; "
        "RELISH's also holds training noise (same seed, different states).",
        "Relative error: |int8 state - float16 state| / |float16 state| per token, "
        "averaged over every token of the task. Bytes per token on disk: the payload "
        "(2 d_model for float16, d_model + 2 for int8) plus the 44-byte header of each "
        "text's entry, shared by its tokens.",
    ]
    if results.get("skipped"):
        notes.append("Skipped (states not all cached): "
                     + ", ".join(sorted(results["skipped"])) + ".")
    report.write(name, results, table(results), notes, echo=False)


if __name__ == "__main__":
    main()
