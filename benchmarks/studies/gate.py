"""How should the default weigh the head against its ridge anchor?

``RelishRegressor()`` predicts ``(1 - b) * ridge + b * head`` and fits ``b``
on the 10% of training rows that early stopping holds out (from 2,000 rows
on; below, ``cv="auto"`` fits it on every row out of fold)
(:func:`sklearn_relish.anchor.stack_weights`). This study scores the
hold-out: it fits the default head once per (task, seed) through
:func:`sklearn_relish.fitting.fit_holdout`, keeps what the weighing reads (the held-out rows'
targets, head outputs and anchor predictions; the test rows' head outputs and
anchor predictions) and scores every weighing rule on the same fitted head::

    python -m benchmarks.studies.gate [--backbone minilm] [--tasks ...] [--seeds 0 1 2]

The rules (all per target, none tuned to a task):

``train-ridge``
    ``b`` and its gate judged against the ridge of the 90% training rows
    (the deployed anchor is the ridge refitted on every row), the gate on
    the gain of ``b`` on the rows ``b`` was fitted on: the default before
    2026-12-06.
``deployed-ridge``
    The same fit of ``b``, judged against the deployed ridge: its exact
    leave-one-out predictions on the held-out rows.
``crossfit``
    ``train-ridge``'s ``b``, but the gate reads the gain of ``b`` on folds of
    the held-out rows it was not fitted on (``b`` refitted per fold): the
    default since (:func:`sklearn_relish.anchor.crossfit_gain`).
``deployed+crossfit``
    Both.
``ridge`` / ``head``
    ``b = 0`` (the deployed ridge alone) and ``b = 1`` (the head alone).

The arrays are kept under ``<cache>/gate/`` so that another rule can be scored
later without refitting; results go to ``benchmarks/results/gate-<backbone>``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from sklearn_relish import fitting
from sklearn_relish.anchor import (ALPHAS, fit_anchor, fit_shrinkage, pooled_features,
                                   stack_weights)
from sklearn_relish.training import head_outputs

from .. import cli, report
from ..baselines import METHODS, Context, _relish
from ..cli import backbone_slug, resolve_backbone_name
from ..tasks import load_task
from ..metrics import aggregate, score

RULES = ("train-ridge", "deployed-ridge", "crossfit", "deployed+crossfit", "ridge", "head")


def weigh(rule, arrays):
    """``b`` per target for one rule, from the kept arrays."""
    t, h = arrays["valid_target"], arrays["valid_head"]
    if rule == "ridge":
        return np.zeros(t.shape[1])
    if rule == "head":
        return np.ones(t.shape[1])
    g = arrays["valid_loo" if rule.startswith("deployed") else "valid_train_ridge"]
    if rule.endswith("crossfit"):
        return stack_weights(g, h, t)[1]          # the estimator's rule
    # The gate before 2026-12-06: the gain of b on the rows b was fitted on.
    b = fit_shrinkage(h - g, t - g)
    error = t - g
    gain = error ** 2 - (error - b * (h - g)) ** 2
    return np.where(gain.mean(0) > gain.std(0, ddof=1) / np.sqrt(len(t)), b, 0.0)


def plain_head_outputs(net, states):
    """The head's own outputs on ``states``, without the anchor and weight
    folded into its buffers (which are left as they were)."""
    module = net.module_
    saved = {k: v.clone() for k, v in module.state_dict().items()
             if k in ("anchor_weight", "anchor_bias", "output_scale")}
    module.reset_anchor()
    try:
        return head_outputs(net, states)
    finally:
        module.load_state_dict({**module.state_dict(), **saved})


def fit_once(ctx, task, seed, **params):
    """Fit the default's head (changed by ``params``) once, through the
    hold-out stage ``RelishRegressor.fit`` runs (:func:`~sklearn_relish.fitting.fit_holdout`,
    on the states ``ctx`` reads, ``cv=None``); return the arrays every rule
    reads."""
    settings = _relish(ctx, task, seed, **{"layer": ctx.layer, "cv": None, **params})
    prompts = ctx.prompts(task, task.X_train)
    states = ctx.states(prompts)[0]
    y = np.asarray(task.y_train, dtype=np.float64).reshape(len(task.y_train), -1)
    target, y_mean, y_scale = fitting.scale_target(y)
    start = time.perf_counter()
    head = fitting.fit_holdout(settings, states, ctx.load_backbone(), target, None,
                               fitting.fit_seed(seed),
                               fitting.n_validation_rows(settings, len(states)),
                               None, None, prompts, None)
    fit_s = time.perf_counter() - start
    judged = head.judged
    valid_rows = judged["rows"]
    deployed = fit_anchor(pooled_features(states), target, ALPHAS)

    test_states = ctx.states(ctx.prompts(task, task.X_test))[0]
    predicted = head_outputs(head.net, test_states)       # the head with its anchor
    test_head = plain_head_outputs(head.net, test_states)
    test_ridge = deployed.predict(pooled_features(test_states))
    # The fitted model must be what the current rule gives on these arrays.
    b = head.head_weight
    rebuilt = (1 - b) * test_ridge + b * test_head
    if not np.allclose(rebuilt, predicted, atol=1e-4):
        raise RuntimeError("the rebuilt prediction differs from the model's")
    return dict(valid_train_ridge=judged["anchor"], valid_head=judged["head"],
                valid_target=judged["target"],
                valid_loo=deployed.loo_predictions[valid_rows],
                test_head=test_head, test_ridge=test_ridge,
                y_mean=y_mean, y_scale=y_scale, shrinkage=np.asarray(b),
                fit_s=np.array(fit_s), n_epochs=np.array(len(head.loss_curve)))


def main(argv=None):
    parser = cli.parser("benchmarks.studies.gate", __doc__)
    cli.add_backbone(parser)
    parser.add_argument("--tasks", nargs="+",
                        default=["stsb", "mlqe-en-de", "mlqe-ro-en", "mlqe-si-en",
                                 "vader-tweets", "vader-movies"])
    cli.add_seeds(parser)
    cli.add_data_dir(parser)
    cli.add_cache_dir(parser)
    cli.add_threads(parser)
    parser.add_argument("--report-only", action="store_true",
                        help="score the kept arrays only; fit nothing")
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)

    backbone = resolve_backbone_name(args.backbone)
    slug = backbone_slug(backbone)
    keep = Path(args.cache_dir) / "gate" / slug
    keep.mkdir(parents=True, exist_ok=True)
    name = f"gate-{slug}"
    path = report.RESULTS / f"{name}.json"
    runs, baselines, commands = _read(path)
    commands.append(report.command())
    ctx = Context(backbone, args.cache_dir)

    for task_name in args.tasks:
        task = load_task(task_name, data_dir=args.data_dir)
        if not args.report_only:
            for method in ("ridge_mean", "ridge_last"):
                baselines[f"{method}/{task_name}"] = score(
                    task.y_test, METHODS[method].run(ctx, task, 0)["y_pred"])
        for seed in args.seeds:
            file = keep / f"{task_name}-{seed}.npz"
            if not file.exists():
                if args.report_only:
                    continue
                np.savez(file, **fit_once(ctx, task, seed))
            arrays = dict(np.load(file))
            run = {"task": task_name, "seed": seed, "fit_s": round(float(arrays["fit_s"]), 1),
                   "n_epochs": int(arrays["n_epochs"]), "n_valid": len(arrays["valid_target"])}
            for rule in RULES:
                b = weigh(rule, arrays)
                pred = ((1 - b) * arrays["test_ridge"] + b * arrays["test_head"])
                pred = pred * arrays["y_scale"] + arrays["y_mean"]
                metrics = score(task.y_test, pred[:, 0])
                run[rule] = {"b": [round(float(v), 4) for v in b], **metrics}
            runs[(task_name, seed)] = run
            # Another process may have added runs of other tasks meanwhile.
            others, other_baselines, _ = _read(path)
            runs = {**others, **runs}
            baselines = {**other_baselines, **baselines}
            print(task_name, seed, {r: (run[r]["b"], round(run[r]["pearson"], 4),
                                        round(run[r]["nrmse"], 4)) for r in RULES}, flush=True)
            write(name, backbone, list(runs.values()), baselines, commands)
    write(name, backbone, list(runs.values()), baselines, commands)


def _read(path):
    previous = json.loads(path.read_text()).get("results", {}) if path.exists() else {}
    return ({(r["task"], r["seed"]): r for r in previous.get("runs", [])},
            previous.get("baselines", {}), previous.get("commands", []))


def write(name, backbone, runs, baselines, commands):
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    lines = []
    for metric in ("pearson", "nrmse", "b"):
        lines += [f"**{metric}** (mean ± std over seeds)", "",
                  "| rule | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for rule in RULES:
            cells = []
            for t in tasks:
                values = [r[rule][metric] for r in runs if r["task"] == t]
                values = [v[0] if isinstance(v, list) else v for v in values]
                mean, std = aggregate(values)
                cells.append("" if mean is None else f"{mean:.4f} ± {std:.4f}")
            lines.append(f"| {rule} | " + " | ".join(cells) + " |")
        if metric != "b":
            for method in ("ridge_mean", "ridge_last"):
                cells = [f"{baselines[f'{method}/{t}'][metric]:.4f}"
                         if f"{method}/{t}" in baselines else "" for t in tasks]
                lines.append(f"| *{method}* | " + " | ".join(cells) + " |")
        lines.append("")
    notes = [f"Backbone `{backbone}`, full splits of `benchmarks.run`, seeds "
             + ", ".join(sorted({str(r['seed']) for r in runs})) + ". One default fit per "
             "(task, seed); every rule weighs that same head against the deployed ridge "
             "(refitted on every training row). The rules are described in "
             "`benchmarks/studies/gate.py`.",
             "Commands: " + "; ".join(f"`{c}`" for c in commands)]
    report.write(name, {"runs": runs, "commands": commands, "baselines": baselines},
                 lines, notes, echo=False)


if __name__ == "__main__":
    main()
