"""Which training settings make the RELISH head good and steady?

Fits ``RelishRegressor`` under several training settings on the quick splits
of ``benchmarks.run`` (400 training / 200 test rows, the same prompts and the
same token-state cache; ``--full``: the full splits), three seeds each, and
reports test Pearson and NRMSE per setting and task next to the mean-pooled
and last-token ridge baselines.
Each setting changes one or two parameters of the defaults, so the table
reads as an ablation::

    python -m benchmarks.studies.defaults [--backbone minilm] [--full] [--tasks stsb vader-tweets]
        [--settings lr=1e-3,lr_schedule=constant max_epochs=30,lr=3e-4 ...]

A setting is ``key=value[,key=value]`` of ``RelishRegressor`` parameters,
or ``defaults`` for ``RelishRegressor()`` itself (:data:`SETTINGS` lists the
settings compared when ``--settings`` is not given). Results go to
``benchmarks/results/defaults-<backbone>[-full].{json,md}``; a rerun skips the
(setting, task, seed) entries already in the JSON.
"""

from __future__ import annotations

import ast
import json
import time

from .. import cli, report
from ..baselines import METHODS, Context, _relish
from ..cli import backbone_slug, resolve_backbone_name
from ..tasks import load_task
from ..metrics import aggregate, score

#: The settings compared when ``--settings`` is not given. Every label sets
#: ``lr`` and ``lr_schedule`` itself, so that it names the same fit whatever
#: ``RelishRegressor``'s own values (3e-4, cosine: the last setting);
#: ``standardize_states=False`` is the head as the paper describes it.
SETTINGS = [
    "standardize_states=False,lr=1e-3,lr_schedule=constant",
    "standardize_states=False,lr=3e-4,lr_schedule=constant",
    "standardize_states=False,lr=1e-4,lr_schedule=constant",
    "standardize_states=False,max_epochs=30,lr=1e-3,lr_schedule=constant",
    "standardize_states=False,max_epochs=30,lr=3e-4,lr_schedule=constant",
    "standardize_states=False,latent_dim=128,n_iterations=1,lr=1e-3,lr_schedule=constant",
    "lr=1e-3,lr_schedule=constant",
    "max_epochs=30,lr=1e-3,lr_schedule=constant",
    "lr=3e-4,lr_schedule=constant",
    "lr=1e-3,lr_schedule=cosine",
    "max_grad_norm=1.0,lr=1e-3,lr_schedule=constant",
    "max_grad_norm=1.0,lr=1e-3,lr_schedule=cosine",
    "early_stopping=True,lr=1e-3,lr_schedule=constant",
    "lr=3e-4,lr_schedule=cosine",
]


def parse_setting(text):
    params = {}
    if text == "defaults":
        return params
    for item in text.split(","):
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"setting {text!r}: expected key=value[,key=value]")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    return params


def main(argv=None):
    parser = cli.parser("benchmarks.studies.defaults", __doc__)
    cli.add_backbone(parser)
    parser.add_argument("--tasks", nargs="+", default=["stsb", "mlqe-ro-en", "vader-tweets"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    cli.add_seeds(parser)
    cli.add_data_dir(parser)
    cli.add_cache_dir(parser)
    parser.add_argument("--full", action="store_true",
                        help="use the full splits of benchmarks.run instead of the quick ones")
    cli.add_threads(parser)
    parser.add_argument("--name", default=None,
                        help="results file name under benchmarks/results (default: "
                             "defaults-<backbone>[-full]); two runs in parallel need two")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite the Markdown table from the JSON")
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)

    backbone = resolve_backbone_name(args.backbone)
    name = args.name or (f"defaults-{backbone_slug(backbone)}" + ("-full" if args.full else ""))
    path = report.RESULTS / f"{name}.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    runs = previous.get("results", {}).get("runs", [])
    commands = previous.get("results", {}).get("commands", []) + [report.command()]
    done = {(r["setting"], r["task"], r["seed"]) for r in runs}
    # Keep the baselines of tasks that this run does not touch.
    baselines = {tuple(k.split("/", 1)): v
                 for k, v in previous.get("results", {}).get("baselines", {}).items()}
    if args.report_only:
        write(name, backbone, args, runs, baselines, commands[:-1])
        return
    quick = not args.full
    ctx = Context(backbone, args.cache_dir, quick=quick)
    # A setting that reads another layer is compared with ridges on that layer.
    layers = {parse_setting(s).get("layer", -1) for s in args.settings} - {-1}
    contexts = {-1: ctx, **{layer: Context(backbone, args.cache_dir, quick=quick, layer=layer)
                            for layer in sorted(layers)}}

    for task_name in args.tasks:
        task = load_task(task_name, data_dir=args.data_dir, quick=quick)
        for layer, layer_ctx in contexts.items():
            for method in ("ridge_mean", "ridge_last"):
                out = METHODS[method].run(layer_ctx, task, 0)
                label = method if layer == -1 else f"{method}, layer={layer}"
                baselines[(label, task_name)] = score(task.y_test, out["y_pred"])
        for setting in args.settings:
            params = parse_setting(setting)
            for seed in args.seeds:
                if (setting, task_name, seed) in done:
                    continue
                start = time.perf_counter()
                model = _relish(ctx, task, seed, **params).fit(task.X_train, task.y_train)
                fit_time = time.perf_counter() - start
                metrics = score(task.y_test, model.predict(task.X_test))
                runs.append({"setting": setting, "params": params, "task": task_name,
                             "seed": seed, **metrics, "fit_s": round(fit_time, 1),
                             "final_train_loss": round(model.loss_curve_[-1], 4),
                             "n_epochs": model.n_iter_,
                             "shrinkage": [round(float(v), 4) for v in model.shrinkage_],
                             "anchor_alpha": (None if model.anchor_alpha_ is None else
                                              [float(v) for v in model.anchor_alpha_])})
                pearson = "n/a" if metrics["pearson"] is None else f"{metrics['pearson']:.3f}"
                print(f"{task_name:13s} {setting:32s} seed {seed}: Pearson "
                      f"{pearson}  NRMSE {metrics['nrmse']:.3f}  "
                      f"loss {model.loss_curve_[-1]:.3f}  epochs {model.n_iter_}  "
                      f"shrinkage {model.shrinkage_.round(3)}  {fit_time:.0f} s", flush=True)
                write(name, backbone, args, runs, baselines, commands, partial=True)
    write(name, backbone, args, runs, baselines, commands)


def _cell(values):
    mean, std = aggregate(values)
    if mean is None:
        return ""
    return f"{mean:.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:.3f}"


def write(name, backbone, args, runs, baselines, commands, partial=False):
    tasks = list(dict.fromkeys(r["task"] for r in runs)) or args.tasks
    settings = list(dict.fromkeys(r["setting"] for r in runs))
    lines = []
    for metric in ("pearson", "nrmse", "fit_s", "final_train_loss"):
        lines += [f"**{metric}** (mean ± std over seeds)", "",
                  "| setting | " + " | ".join(tasks) + " |",
                  "|---|" + "---|" * len(tasks)]
        for setting in settings:
            cells = [_cell([r[metric] for r in runs
                            if r["setting"] == setting and r["task"] == t]) for t in tasks]
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        if metric in ("pearson", "nrmse"):
            for method in dict.fromkeys(m for m, _ in baselines):  # last layer first
                cells = [f"{baselines[(method, t)][metric]:.3f}"
                         if (method, t) in baselines else "" for t in tasks]
                lines.append(f"| *{method}* | " + " | ".join(cells) + " |")
        lines.append("")
    splits = ("full splits of `benchmarks.run`" if args.full else
              "quick splits of `benchmarks.run` (400 train / 200 test rows)")
    notes = [f"Backbone `{backbone}`, {splits}, seeds " + ", ".join(map(str, args.seeds)) + ". Each setting "
             "changes only the listed parameters of `RelishRegressor()`; ridge rows are "
             "the deterministic baselines of `benchmarks.run` on the same states "
             "(the last layer's, or the layer the row names). "
             "final_train_loss is the Huber loss on standardised targets after the last "
             "epoch."]
    notes.append("Commands that wrote these runs: " + "; ".join(f"`{c}`" for c in commands))
    if partial:
        notes.append("PARTIAL: the run was still going when this was written.")
    report.write(name, {"runs": runs, "commands": commands,
                        "baselines": {f"{m}/{t}": v for (m, t), v in baselines.items()}},
                 lines, notes, echo=not partial)


if __name__ == "__main__":
    main()
