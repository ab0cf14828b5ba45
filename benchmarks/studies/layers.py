"""Which hidden layers carry the target: a ridge on every layer's pooled states.

For each task, every prompt runs once through the frozen backbone with all
hidden states returned, and only each layer's mean-pooled state and last
token's state are kept (``Backbone.pooled_layers``: small, so no layer's
token states are cached). Then, per layer and pooling, a ridge
(standardised features, penalty by exact leave-one-out error, as the
anchor's) is fitted on the training rows and scored on the test rows. The
same pooled vectors also give, exactly, the ridges of the layer choices
``RelishRegressor(layer=...)`` offers with ``layer_mix="mean"`` (the mean
over tokens of a mean over layers is the mean over layers of the means;
likewise for the last token), and the single layer a user could choose
from the training rows alone (lowest leave-one-out error).

    python -m benchmarks.studies.layers --backbone minilm --threads 1
    python -m benchmarks.studies.layers --train-size 1000 --test-size 500 --threads 1

The pooled vectors of each task are stored (``--store``) and reused by a
rerun; results are written after every task, and ``--report-only`` redraws
the report and figure from the results file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from sklearn_relish.anchor import fit_anchor, fit_ridge_loo
from sklearn_relish.layers import LAYER_NAMES

from .. import cli
from ..baselines import Context
from ..cli import backbone_slug
from ..tasks import TASKS, _subsample, load_task
from ..metrics import score

RESULTS = Path(__file__).resolve().parent.parent / "results"
POOLINGS = ("mean", "last")
#: The layer choices scored as ``layer_mix="mean"`` reads them.
CHOICES = ("first", "quarter", "middle", "three_quarter", "penultimate", "last", "last4",
           "middle_half", "all")


def split(task, train_size, test_size, seed=0):
    """The task's rows, both splits subsampled (seeded) when sizes are given."""
    train = _subsample(len(task.y_train), train_size or len(task.y_train), seed)
    test = _subsample(len(task.y_test), test_size or len(task.y_test), seed + 1)
    return train, test


def pooled(ctx, task, X, store, name):
    """Every layer's pooled states of the prompts of ``X`` (stored in ``store``)."""
    path = store / f"{name}.npy"
    prompts = ctx.prompts(task, X)
    if path.exists():
        cached = np.load(path, mmap_mode="r")
        if len(cached) == len(prompts):
            return np.asarray(cached), 0.0
    start = time.perf_counter()
    values = ctx.load_backbone().pooled_layers(prompts, batch_size=16,
                                              progress=bool(ctx.verbose))
    seconds = time.perf_counter() - start
    store.mkdir(parents=True, exist_ok=True)
    # What is stored is what every call returns, the first one included.
    values = values.astype(np.float16 if np.abs(values).max() < 6e4 else np.float32)
    np.save(path, values)
    return values, seconds


def ridge_scores(train_x, y_train, test_x, y_test):
    fit = fit_ridge_loo(train_x, y_train)
    metrics = score(y_test, fit.predict(test_x).ravel())
    return {"pearson": metrics["pearson"], "nrmse": metrics["nrmse"],
            "loo_mse": float(fit.loo_mse[0])}


def anchor_scores(train_x, y_train, test_x, y_test):
    """The default anchor's ridge (mean, last or both, chosen by LOO)."""
    fit = fit_anchor(np.hstack([train_x[:, 0], train_x[:, 1]]), y_train)
    prediction = fit.predict(np.hstack([test_x[:, 0], test_x[:, 1]])).ravel()
    metrics = score(y_test, prediction)
    return {"pearson": metrics["pearson"], "nrmse": metrics["nrmse"],
            "pooling": fit.pooling[0], "loo_mse": float(fit.loo_mse[0])}


def study_task(ctx, task, train_size, test_size, store):
    train, test = split(task, train_size, test_size)
    sizes = f"{len(train)}-{len(test)}"
    train_x, train_s = pooled(ctx, task, task.X_train[train], store, f"{task.name}-train-{sizes}")
    test_x, test_s = pooled(ctx, task, task.X_test[test], store, f"{task.name}-test-{sizes}")
    train_x, test_x = train_x.astype(np.float64), test_x.astype(np.float64)
    y_train, y_test = task.y_train[train], task.y_test[test]
    n_layers = train_x.shape[1] - 1
    per_layer = {pooling: [] for pooling in POOLINGS}
    for layer in range(n_layers + 1):
        for p, pooling in enumerate(POOLINGS):
            per_layer[pooling].append(ridge_scores(train_x[:, layer, p], y_train,
                                                   test_x[:, layer, p], y_test))
    choices = {}
    for name in CHOICES:
        indices = list(LAYER_NAMES[name](n_layers))
        choices[name] = {"layers": indices,
                         **anchor_scores(train_x[:, indices].mean(1), y_train,
                                         test_x[:, indices].mean(1), y_test)}
    # The single layer and pooling a user would pick from the training rows
    # alone: the lowest leave-one-out error of the per-layer ridges.
    layer, pooling = min(((layer, pooling) for pooling in POOLINGS
                          for layer in range(1, n_layers + 1)),
                         key=lambda k: per_layer[k[1]][k[0]]["loo_mse"])
    chosen = {"layer": layer, "pooling": pooling, **per_layer[pooling][layer]}
    return {"n_train": len(train), "n_test": len(test), "n_layers": n_layers,
            "d_model": int(train_x.shape[-1]), "encode_seconds": round(train_s + test_s, 1),
            "per_layer": per_layer, "choices": choices, "chosen_on_train": chosen}


def _ordered(results):
    """The results' tasks in the benchmarks' order."""
    return sorted(results["tasks"], key=lambda t: list(TASKS).index(t) if t in TASKS else 99)


def _pearsons(entries):
    """Test Pearson of each entry; NaN where the ridge predicted a constant."""
    return np.array([np.nan if e["pearson"] is None else e["pearson"] for e in entries])


def _fmt(value):
    return "const." if value is None else f"{value:.3f}"


def write_report(results, path):
    lines = [f"# Which layers carry the target: {results['backbone']}", "",
             "A ridge (standardised, penalty by leave-one-out) on each hidden layer's "
             "pooled states; test Pearson. Rows as `RelishRegressor(layer=...)` reads "
             "them with `layer_mix=\"mean\"`, through the default anchor's ridge (mean, "
             "last token or both, chosen by leave-one-out); the single layer chosen "
             "on the training rows alone; and the best layer in hindsight (on test).",
             "", f"Command: `{results['command']}`", "",
             f"![Ridge test Pearson per layer]({path.with_suffix('.png').name})", ""]
    tasks = _ordered(results)
    lines += ["| layer choice | " + " | ".join(tasks) + " |",
              "|---|" + "---|" * len(tasks)]
    for name in CHOICES:
        row = []
        for task in tasks:
            entry = results["tasks"][task]["choices"][name]
            row.append(_fmt(entry["pearson"]))
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    row = []
    for task in tasks:
        entry = results["tasks"][task]["chosen_on_train"]
        row.append(f"{_fmt(entry['pearson'])} (L{entry['layer']} {entry['pooling']})")
    lines.append("| single layer chosen on train | " + " | ".join(row) + " |")
    for pooling in POOLINGS:
        row = []
        for task in tasks:
            scores = _pearsons(results["tasks"][task]["per_layer"][pooling])
            best = int(np.nanargmax(scores))
            row.append(f"{scores[best]:.3f} (L{best})")
        lines.append(f"| best layer in hindsight, {pooling} | " + " | ".join(row) + " |")
    lines += ["", "Rows and encoding time per task:", ""]
    for task in tasks:
        entry = results["tasks"][task]
        lines.append(f"- {task}: {entry['n_train']} train, {entry['n_test']} test rows, "
                     f"{entry['n_layers']} layers, {entry['encode_seconds']} s to encode")
    path.write_text("\n".join(lines) + "\n")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = _ordered(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, pooling in zip(axes, POOLINGS):
        for task in tasks:
            scores = _pearsons(results["tasks"][task]["per_layer"][pooling])
            depth = np.arange(len(scores)) / (len(scores) - 1)
            ax.plot(depth, scores, marker=".", label=task)
        ax.set_title(f"{pooling} pooling")
        ax.set_xlabel("depth (hidden-state index / layers; 0 = embeddings)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ridge test Pearson")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(results["backbone"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    import sys

    p = cli.parser("benchmarks.studies.layers", __doc__)
    cli.add_backbone(p)
    cli.add_data_dir(p)
    cli.add_threads(p)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--train-size", type=int, default=None,
                   help="subsample the training split to this many rows (default: all)")
    p.add_argument("--test-size", type=int, default=None,
                   help="subsample the test split to this many rows (default: all)")
    p.add_argument("--store", default=str(cli.CACHE_DIR / "layer-pooled"),
                   help="where the pooled vectors are kept between runs")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--verbose", type=int, default=0)
    args = p.parse_args(argv)
    cli.set_threads(args.threads)
    backbone = cli.resolve_backbone_name(args.backbone)
    slug = backbone_slug(backbone)
    suffix = ("" if args.train_size is None and args.test_size is None
              else f"-train{args.train_size or 'all'}-test{args.test_size or 'all'}")
    out = Path(args.out)
    path = out / f"layers-{slug}{suffix}.json"
    results = (json.loads(path.read_text()) if path.exists()
               else {"backbone": slug, "tasks": {}})
    if not args.report_only:
        results["command"] = "python -m benchmarks.studies.layers " + " ".join(
            sys.argv[1:] if argv is None else argv)
        ctx = Context(backbone, cli.CACHE_DIR, verbose=args.verbose)
        store = Path(args.store).expanduser() / slug
        for name in args.tasks:
            if name in results["tasks"]:
                continue
            task = load_task(name, data_dir=args.data_dir)
            start = time.perf_counter()
            results["tasks"][name] = study_task(ctx, task, args.train_size, args.test_size,
                                                store)
            results["tasks"][name]["seconds"] = round(time.perf_counter() - start, 1)
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))
            print(f"{name}: done in {results['tasks'][name]['seconds']} s", flush=True)
    write_report(results, path.with_suffix(".md"))
    plot(results, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
