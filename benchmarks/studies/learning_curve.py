"""Learning curves: RELISH against the ridges on its own states, by training rows.

Does the head earn its place at small n? For each task, the training split is
subsampled to each size (a different random subset per seed; ``all`` is the
whole split) and every method is fitted on it and scored on the whole test
split: the ridges of ``benchmarks.run`` on the same frozen states
(``ridge_mean``, ``ridge_last``: the last layer; ``ridge_layers``: the
default's anchor ridge on its own layers), the default ``RelishRegressor``, and the
default with its head cross-fitted over K folds (``relish_cv5``:
``cv=5``; ``relish_cv3``), whose gate sees every training row out of fold
instead of a 10 % hold-out.

    python -m benchmarks.studies.learning_curve --backbone minilm --threads 1
    python -m benchmarks.studies.learning_curve --sizes 250 500 1000 --tasks stsb

Results are written after every fit; a rerun skips what it has.
``--report-only`` redraws the report from the results file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from sklearn_relish import RelishRegressor

from .. import cli
from ..baselines import Context, _relish, _ridge, default_layers_ridge
from ..cli import backbone_slug
from ..metrics import score
from ..tasks import TASKS, _subsample, load_task

RESULTS = Path(__file__).resolve().parent.parent / "results"
METHODS = {
    # Ridges: the last layer's mean-pooled and last-token states (as in
    # benchmarks.run), and the default's anchor ridge on its own layers.
    "ridge_mean": None, "ridge_last": None, "ridge_layers": None,
    # The default, whatever it is when the row was fitted (the report names it).
    "relish": {},
    # Fixed settings, so that a row keeps its meaning when the default moves:
    # the head reading the last layer behind a 10 % hold-out (the default
    # until layer="all" and cv="auto"), and cross-fitted.
    "relish_last": {"layer": -1, "cv": None},
    "relish_last_cv3": {"layer": -1, "cv": 3},
    "relish_last_cv5": {"layer": -1, "cv": 5},
    # The layer choices of the ablation (benchmarks/studies/layers.py narrows them).
    "relish_middle": {"layer": "middle", "cv": None},
    "relish_three_quarter": {"layer": "three_quarter", "cv": None},
    "relish_middle_half": {"layer": "middle_half", "cv": None},
    "relish_all": {"layer": "all", "cv": None},
    "relish_all_cv5": {"layer": "all", "cv": 5},
    "relish_learned_all": {"layer": "all", "layer_mix": "learned", "cv": None},
    "relish_learned_middle_half": {"layer": "middle_half", "layer_mix": "learned",
                                   "cv": None},
}
RIDGES = ("ridge_mean", "ridge_last", "ridge_layers")


def fit_one(ctx, task, rows, method, seed):
    """Test metrics of one method fitted on the training ``rows``."""
    start = time.perf_counter()
    if method == "ridge_layers":
        model, prediction, _, _ = default_layers_ridge(
            _relish(ctx, task, seed), task.X_train[rows], task.y_train[rows], task.X_test)
        extra = {"pooling": model.pooling[0]}
    elif method in RIDGES:
        kind = method.split("_")[1]
        model = _ridge(seed).fit(ctx.features(task, "train")[kind][rows], task.y_train[rows])
        prediction = model.predict(ctx.features(task, "test")[kind])
        extra = {}
    else:
        model = _relish(ctx, task, seed, **METHODS[method])
        model.fit(task.X_train[rows], task.y_train[rows])
        prediction = model.predict(task.X_test)
        extra = {"head_weight": float(model.shrinkage_[0]), "n_epochs": int(model.n_iter_)}
    metrics = score(task.y_test, prediction)
    return {"pearson": metrics["pearson"], "nrmse": metrics["nrmse"],
            "seconds": round(time.perf_counter() - start, 2), **extra}


def prefetch(ctx, task, methods):
    """Encode the task's texts once for every layer choice the methods read
    (one backbone pass per text and layer mix)."""
    default = RelishRegressor()
    by_mix = {}
    for method in methods:
        params = METHODS[method]
        if params is not None:
            by_mix.setdefault(params.get("layer_mix", default.layer_mix), set()).add(
                str(params.get("layer", default.layer)))
    X = np.concatenate([task.X_train, task.X_test])
    for mix, layers in by_mix.items():
        layers = [int(v) if v.lstrip("-").isdigit() else v for v in sorted(layers)]
        _relish(ctx, task, 0, layer_mix=mix).cache_states(X, layers=layers)


def _commands(results):
    """The commands that wrote the results, oldest first (files written before
    the list was kept name only the last one)."""
    return results.get("commands") or ([results["command"]] if "command" in results else [])


def _size_order(size):
    """Sizes in rows, ``all`` last, whatever order the runs added them in."""
    return float("inf") if size == "all" else int(size)


def _mean(entries, key):
    values = [np.nan if e[key] is None else e[key] for e in entries]
    return float(np.mean(values)), float(np.std(values))


def write_report(results, path):
    lines = [f"# Learning curves: {results['backbone']}", "",
             "Test Pearson (mean ± std over seeds; each seed draws its own training "
             "subset) and NRMSE by training rows. `head b` is the head's mean weight in "
             "the stack (0: the prediction is the anchor ridge). `≥ ridge` says whether "
             "the method's mean Pearson is at least the best ridge's and its NRMSE at "
             "most that ridge's, at the table's precision (0.0005).", "",
             "Commands (a rerun skips the cells it has):", ""]
    lines += [f"- `{command}`" for command in _commands(results)] + [""]
    for task, by_size in results["tasks"].items():
        lines += [f"## {task}", ""]
        methods = [m for m in METHODS if any(m in s for s in
                                             (v for size in by_size.values()
                                              for v in size.values()))]
        lines.append("| rows | " + " | ".join(methods) + " |")
        lines.append("|---|" + "---|" * len(methods))
        for size, by_seed in sorted(by_size.items(), key=lambda item: _size_order(item[0])):
            cells = []
            ridge_best = None
            for method in RIDGES:
                entries = [s[method] for s in by_seed.values() if method in s]
                if entries:
                    pearson, nrmse = _mean(entries, "pearson")[0], _mean(entries, "nrmse")[0]
                    if ridge_best is None or pearson > ridge_best[0]:
                        ridge_best = (pearson, nrmse)
            for method in methods:
                entries = [s[method] for s in by_seed.values() if method in s]
                if not entries:
                    cells.append("")
                    continue
                pearson, spread = _mean(entries, "pearson")
                nrmse = _mean(entries, "nrmse")[0]
                cell = f"{pearson:.3f} ± {spread:.3f} / {nrmse:.3f}"
                if "head_weight" in entries[0]:
                    cell += f" (b {np.mean([e['head_weight'] for e in entries]):.2f}"
                    if ridge_best is not None:
                        # At the table's precision: the anchor alone equals a ridge
                        # to about 1e-8, not bit for bit.
                        holds = (pearson >= ridge_best[0] - 5e-4
                                 and nrmse <= ridge_best[1] + 5e-4)
                        cell += ", ≥ ridge" if holds else ", **< ridge**"
                    cell += ")"
                cells.append(cell)
            n_seeds = len(by_seed)
            lines.append(f"| {size} ({n_seeds} seeds) | " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    import sys

    p = cli.parser("benchmarks.studies.learning_curve", __doc__)
    cli.add_backbone(p)
    cli.add_data_dir(p)
    cli.add_cache_dir(p)
    cli.add_threads(p)
    cli.add_seeds(p)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--sizes", nargs="+", default=["250", "500", "1000", "2000", "all"])
    p.add_argument("--methods", nargs="+", default=["ridge_mean", "ridge_last", "ridge_layers",
                                                     "relish", "relish_last"],
                   choices=list(METHODS))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    cli.set_threads(args.threads)
    backbone = cli.resolve_backbone_name(args.backbone)
    path = Path(args.out) / f"learning-curve-{backbone_slug(backbone)}.json"
    results = (json.loads(path.read_text()) if path.exists()
               else {"backbone": backbone_slug(backbone), "tasks": {}})
    if not args.report_only:
        command = "python -m benchmarks.studies.learning_curve " + " ".join(
            sys.argv[1:] if argv is None else argv)
        results["commands"] = [c for c in _commands(results) if c != command] + [command]
        results.pop("command", None)
        ctx = Context(backbone, args.cache_dir)
        for name in args.tasks:
            task = load_task(name, data_dir=args.data_dir)
            prefetch(ctx, task, args.methods)
            for size in args.sizes:
                n = len(task.y_train) if size == "all" else min(int(size), len(task.y_train))
                for seed in args.seeds:
                    rows = _subsample(len(task.y_train), n, seed)
                    done = results["tasks"].setdefault(name, {}).setdefault(
                        size, {}).setdefault(str(seed), {})
                    for method in args.methods:
                        if method in done:
                            continue
                        done[method] = fit_one(ctx, task, rows, method, seed)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_text(json.dumps(results, indent=1))
                        print(name, size, seed, method, done[method], flush=True)
    write_report(results, path.with_suffix(".md"))


if __name__ == "__main__":
    main()
