"""How strict should the gate be at a few hundred rows?

Below 2,000 rows the default (``cv="auto"``) cross-fits its head over five
folds and weighs it against its ridge anchor on every training row's
out-of-fold predictions (:func:`sklearn_relish.fitting.fit_crossfit`). The
head enters when its out-of-fold gain in squared error exceeds one standard
error (:func:`sklearn_relish.anchor.stack_weights`). At 250-500 rows the
learning curves (``benchmarks/studies/learning_curve.py``) show heads let in
with small weights whose gain does not carry to the test split. This study
asks whether a stricter gate, or none, would do better, without tuning to a
task: it fits the default regressor once per (task, size, seed) on the
learning curve's training subset, keeps what the gate reads (every row's
out-of-fold anchor and head predictions and the targets) and the test rows'
head outputs and deployed-ridge predictions, and scores each rule on that
same fitted head::

    python -m benchmarks.studies.gate_small_n --backbone minilm --sizes 250 500 1000

The rules (all per target; each changes only the threshold of the default's
gate, never how ``b`` is fitted):

``z1``
    The gain must exceed one standard error: the default.
``z1.645`` / ``z2``
    A one-sided test at 5 % / about 2.3 %.
``ridge`` / ``head``
    ``b = 0`` (the deployed ridge alone) and ``b = 1`` (the head alone).
``folds-z1`` / ``folds-z1.645``
    The gate's ``b``, but applied to the mean of the five fold heads' test
    outputs instead of the head retrained on every row: the deployed head is
    then made of the heads whose out-of-fold gain the gate measured (a
    cross-fit bag), not a sixth head it never saw.

The arrays are kept under ``<cache>/gate-small-n/<backbone>/``, so another
rule can be scored later without refitting; the report goes to
``benchmarks/results/gate-small-n-<backbone>``. The ridges the default must
not fall below (the learning curve's, on the same subsets) are fitted here
too.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

from sklearn_relish import fitting
from sklearn_relish.anchor import crossfit_gain, fit_shrinkage, pooled_features

from .. import cli, report
from ..baselines import Context, _relish
from ..cli import backbone_slug
from ..metrics import aggregate, score
from ..tasks import TASKS, _subsample, load_task
from .gate import plain_head_outputs
from .learning_curve import RIDGES, fit_one

#: Gate thresholds, in standard errors of the out-of-fold gain.
THRESHOLDS = {"z1": 1.0, "z1.645": 1.645, "z2": 2.0}
RULES = tuple(THRESHOLDS) + ("ridge", "head", "folds-z1", "folds-z1.645")


def weigh(rule, arrays):
    """``b`` per target for one rule, from the kept arrays."""
    g, h, t = arrays["oof_anchor"], arrays["oof_head"], arrays["target"]
    if rule == "ridge":
        return np.zeros(t.shape[1])
    if rule == "head":
        return np.ones(t.shape[1])
    if rule.startswith("folds-"):
        return weigh(rule[len("folds-"):], arrays)
    departure, error = h - g, t - g
    b = fit_shrinkage(departure, error)
    gain = crossfit_gain(departure, error)
    standard_error = gain.std(axis=0, ddof=1) / np.sqrt(len(t))
    return np.where(gain.mean(axis=0) > THRESHOLDS[rule] * standard_error, b, 0.0)


def fit_once(ctx, task, rows, seed, **params):
    """Fit ``RelishRegressor()`` (the default, changed by ``params``) on the training ``rows``;
    return the arrays every rule reads, after checking that the default rule
    rebuilds the fitted model's own test predictions from them."""
    captured = {"fold_nets": []}
    real_crossfit, real_fold = fitting.fit_crossfit, fitting.fold_anchor
    real_outputs = fitting.head_outputs

    def outputs(net, states):
        # Called by fit_crossfit for each fold's head on its held-out fold.
        captured["fold_nets"].append(net)
        return real_outputs(net, states)

    def crossfit(*args, **kwargs):
        captured["head"] = real_crossfit(*args, **kwargs)
        return captured["head"]

    def fold(net, ridge, head_weight, anchor_weight):
        captured["ridge"] = ridge
        return real_fold(net, ridge, head_weight, anchor_weight)

    model = _relish(ctx, task, seed, **params)
    start = time.perf_counter()
    with (mock.patch.object(fitting, "fit_crossfit", crossfit),
          mock.patch.object(fitting, "fold_anchor", fold),
          mock.patch.object(fitting, "head_outputs", outputs)):
        model.fit(task.X_train[rows], task.y_train[rows])
    fit_s = time.perf_counter() - start
    if "head" not in captured:
        raise RuntimeError(f"{len(rows)} rows were not cross-fitted (n_folds_="
                           f"{model.n_folds_}); this study is for cv='auto' at small n")
    head, ridge = captured["head"], captured["ridge"]
    judged = head.judged

    test_states = model.token_states(task.X_test)
    test_head = plain_head_outputs(head.net, test_states)
    test_ridge = ridge.predict(pooled_features(test_states))
    test_head_folds = np.stack([real_outputs(net, test_states)
                                for net in captured["fold_nets"]])
    b = np.asarray(head.head_weight, dtype=np.float64)
    rebuilt = model._unscale((1 - b) * test_ridge + b * test_head)
    predicted = np.asarray(model.predict(task.X_test), dtype=np.float64).reshape(rebuilt.shape)
    if not np.allclose(rebuilt, predicted, atol=1e-4 * (1 + np.abs(predicted).max())):
        raise RuntimeError("the rebuilt prediction differs from the model's")
    if not np.array_equal(weigh("z1", dict(oof_anchor=judged["anchor"],
                                           oof_head=judged["head"],
                                           target=judged["target"])), b):
        raise RuntimeError("the study's z1 rule is not the estimator's gate")
    y_mean = np.asarray(model.target_mean_, dtype=np.float64).reshape(-1)
    y_scale = np.asarray(model.target_scale_, dtype=np.float64).reshape(-1)
    return dict(oof_anchor=judged["anchor"], oof_head=judged["head"],
                target=judged["target"], test_head=test_head, test_ridge=test_ridge,
                test_head_folds=test_head_folds,
                y_mean=y_mean, y_scale=y_scale, shrinkage=b,
                fit_s=np.array(fit_s), n_folds=np.array(model.n_folds_))


def main(argv=None):
    parser = cli.parser("benchmarks.studies.gate_small_n", __doc__)
    cli.add_backbone(parser)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[250, 500, 1000])
    cli.add_seeds(parser)
    cli.add_data_dir(parser)
    cli.add_cache_dir(parser)
    cli.add_threads(parser)
    parser.add_argument("--report-only", action="store_true",
                        help="score the kept arrays only; fit nothing")
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)

    backbone = cli.resolve_backbone_name(args.backbone)
    slug = backbone_slug(backbone)
    keep = Path(args.cache_dir) / "gate-small-n" / slug
    keep.mkdir(parents=True, exist_ok=True)
    name = f"gate-small-n-{slug}"
    path = report.RESULTS / f"{name}.json"
    runs, commands = _read(path)
    command = "python -m benchmarks.studies.gate_small_n " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if not args.report_only:
        commands = [c for c in commands if c != command] + [command]
    ctx = Context(backbone, args.cache_dir)

    for task_name in args.tasks:
        task = load_task(task_name, data_dir=args.data_dir)
        for size in args.sizes:
            n = min(size, len(task.y_train))
            for seed in args.seeds:
                key = f"{task_name}/{n}/{seed}"
                file = keep / f"{task_name}-n{n}-{seed}.npz"
                if not file.exists():
                    if args.report_only:
                        continue
                    rows = _subsample(len(task.y_train), n, seed)
                    arrays = fit_once(ctx, task, rows, seed)
                    ridges = {m: fit_one(ctx, task, rows, m, seed) for m in RIDGES}
                    np.savez(file, ridges=json.dumps(ridges), **arrays)
                arrays = dict(np.load(file))
                run = {"task": task_name, "size": n, "seed": seed,
                       "fit_s": round(float(arrays["fit_s"]), 1),
                       "ridges": json.loads(str(arrays["ridges"]))}
                for rule in RULES:
                    b = weigh(rule, arrays)
                    head = (arrays["test_head_folds"].mean(axis=0) if rule.startswith("folds-")
                            else arrays["test_head"])
                    pred = (1 - b) * arrays["test_ridge"] + b * head
                    pred = pred * arrays["y_scale"] + arrays["y_mean"]
                    run[rule] = {"b": [round(float(v), 4) for v in b],
                                 **score(task.y_test, pred[:, 0])}
                runs[key] = run
                print(key, {r: (run[r]["b"], round(run[r]["pearson"], 4),
                                round(run[r]["nrmse"], 4)) for r in RULES}, flush=True)
                # Another process may have added runs meanwhile.
                runs = {**_read(path)[0], **runs}
                write(name, backbone, runs, commands)
    write(name, backbone, runs, commands)


def _read(path):
    previous = json.loads(path.read_text()).get("results", {}) if path.exists() else {}
    return ({f"{r['task']}/{r['size']}/{r['seed']}": r for r in previous.get("runs", [])},
            previous.get("commands", []))


def holds(pearson, nrmse, ridges):
    """At or above the best ridge (by Pearson) in Pearson and NRMSE, at the
    tables' precision, as the learning curve's report judges it."""
    best = max(ridges.values(), key=lambda r: r["pearson"])
    return pearson >= best["pearson"] - 5e-4 and nrmse <= best["nrmse"] + 5e-4


def write(name, backbone, runs, commands):
    runs = list(runs.values())
    cells = sorted({(r["task"], r["size"]) for r in runs},
                   key=lambda c: (list(TASKS).index(c[0]), c[1]))
    lines = ["Test Pearson / NRMSE (mean over seeds) of each rule on the same fitted "
             "heads; `b` the head's mean weight; **bold**: below the best ridge on the same "
             "states and subsets (mean Pearson and NRMSE, as the learning curve judges).", "",
             "| task | rows | seeds | best ridge | " + " | ".join(RULES) + " |",
             "|---|---|---|---|" + "---|" * len(RULES)]
    tally = {rule: {} for rule in RULES}
    for task, size in cells:
        group = [r for r in runs if r["task"] == task and r["size"] == size]
        ridges = {m: {k: aggregate([r["ridges"][m][k] for r in group])[0]
                      for k in ("pearson", "nrmse")} for m in group[0]["ridges"]}
        best_name, best = max(ridges.items(), key=lambda kv: kv[1]["pearson"])
        row = [task, str(size), str(len(group)),
               f"{best['pearson']:.3f} / {best['nrmse']:.3f} ({best_name})"]
        for rule in RULES:
            pearson = aggregate([r[rule]["pearson"] for r in group])[0]
            nrmse = aggregate([r[rule]["nrmse"] for r in group])[0]
            b = aggregate([r[rule]["b"][0] for r in group])[0]
            ok = holds(pearson, nrmse, ridges)
            tally[rule].setdefault(size, []).append(ok)
            text = f"{pearson:.3f} / {nrmse:.3f} (b {b:.2f})"
            row.append(text if ok else f"**{text}**")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "At or above the best ridge, cells per size:", "",
              "| rule | " + " | ".join(f"{s} rows" for s in sorted({s for _, s in cells}))
              + " |", "|---|" + "---|" * len({s for _, s in cells})]
    for rule in RULES:
        lines.append(f"| {rule} | " + " | ".join(
            f"{sum(v)} of {len(v)}" for _, v in sorted(tally[rule].items())) + " |")
    lines.append("")
    notes = [f"Backbone `{backbone_slug(backbone)}`; the learning curve's training subsets "
             "(`benchmarks.tasks._subsample`), whole test splits. One default fit per "
             "(task, size, seed); every rule weighs that same head against the deployed "
             "ridge. The rules are described in `benchmarks/studies/gate_small_n.py`.",
             "Commands: " + "; ".join(f"`{c}`" for c in commands)]
    report.write(name, {"runs": runs, "commands": commands}, lines, notes, echo=False)


if __name__ == "__main__":
    main()
