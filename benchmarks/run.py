"""RELISH against the three LLM-regression families on one frozen backbone.

Usage::

    python -m benchmarks.run [--backbone NAME] [--quick] [--tasks ...]
        [--methods ...] [--seeds 0 1 2] [--out benchmarks/results]

Writes ``<out>/<backbone-slug>[-quick].json`` after every (task, method,
seed), so a rerun resumes and skips finished entries; then the Markdown report
``<slug>[-quick].md`` and two PNGs (Pearson per method and task; RELISH
predicted vs true per task). ``--report-only`` regenerates the report and
plots from the JSON. Runs split across processes (each with its own
``--out``) are folded back with ``--merge OTHER.json ...``.

The LoRA methods (``relish_lora``, ``lora_linear``: the paper's second
regime, hours of CPU per task) run only when named, for example
``--methods relish relish_lora lora_linear``.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from . import cli, report
from .baselines import GRID, METHODS, Context
from .cli import backbone_slug, resolve_backbone_name
from .tasks import QUICK_TEST, QUICK_TRAIN, SPLIT_SEED, TASKS, load_task
from .metrics import METRICS, aggregate, score
from .prompted import N_SHOTS

HERE = Path(__file__).resolve().parent
#: Quick mode scores the prompted (generative) methods on this many of the
#: quick test rows: they cost a backbone pass per test row and prompt.
QUICK_GEN_TEST = 100
#: Quick mode's default tasks: a similarity pair, a translation-quality pair
#: and a single-text sentiment set. MLQE si-en is left out because SmolLM2's
#: tokenizer makes its prompts about 3.4 times as long as ro-en's.
QUICK_TASKS = ("stsb", "mlqe-ro-en", "vader-tweets")


def parse_args(argv=None):
    parser = cli.parser("benchmarks.run", __doc__)
    cli.add_backbone(parser)
    parser.add_argument("--quick", action="store_true",
                        help=f"a few minutes' check: {QUICK_TRAIN} train / {QUICK_TEST} test "
                             "rows per task (seeded), three tasks unless --tasks says "
                             "otherwise; 3-fold CV for the tuned RELISH")
    parser.add_argument("--train-size", type=int, default=None, metavar="N",
                        help="train on N rows of each training split (seeded, the same "
                             "for every method; test splits stay whole); results go to "
                             "<slug>-trainN.json. For the LoRA methods on a CPU")
    parser.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS),
                        help="default: all six; with --quick, "
                             + ", ".join(QUICK_TASKS) + " (one task of each kind)")
    parser.add_argument("--methods", nargs="+",
                        default=[name for name, m in METHODS.items() if not m.opt_in],
                        choices=list(METHODS),
                        help="default: every method except the LoRA ones ("
                             + ", ".join(n for n, m in METHODS.items() if m.opt_in)
                             + "), which train the backbone's adapters for hours on a "
                             "CPU and run only when named here")
    cli.add_seeds(parser)
    parser.add_argument("--out", default=str(HERE / "results"))
    cli.add_data_dir(parser)
    cli.add_cache_dir(parser)
    parser.add_argument("--max-length", type=int, default=512,
                        help="token limit of the prompts (512 keeps all but 8 of MLQE "
                             "si-en's 8,000 prompts whole for SmolLM2's tokenizer)")
    parser.add_argument("--gen-test", type=int, default=None,
                        help="score prompted methods on the first N test rows "
                             f"(default: all; {QUICK_GEN_TEST} with --quick)")
    parser.add_argument("--no-quick-limits", action="store_true",
                        help="with --quick, run relish_tuned, fewshot and rail_fewshot "
                             "on every seed and task (quick mode otherwise runs them on "
                             "the first seed, and relish_tuned on stsb and vader-tweets "
                             "only)")
    cli.add_threads(parser)
    parser.add_argument("--rerun", action="store_true",
                        help="recompute the --methods given even where the JSON has "
                             "them (after a change to the package); others are kept")
    parser.add_argument("--report-only", action="store_true",
                        help="only regenerate the Markdown report and plots")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="fold these results files (written by runs of the same "
                             "backbone and settings with another --out, for example in "
                             "parallel) into <out>/<slug>.json: their entries replace "
                             "the same (task, method, seed), their runs are added to "
                             "the record; then regenerate the report. Runs nothing")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick and args.train_size is not None:
        parser.error("--quick and --train-size both subsample: give one of them")
    if args.merge and args.report_only:
        parser.error("--merge already regenerates the report: give one of them")
    if args.tasks is None:
        args.tasks = list(QUICK_TASKS if args.quick else TASKS)
    if args.gen_test is None and args.quick:
        args.gen_test = QUICK_GEN_TEST
    return args


def _entry_key(task, method, seed):
    return f"{task}|{method}|{'-' if seed is None else seed}"


def _save(results, path):
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _log(message):
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


def _mode(meta):
    if meta.get("quick"):
        return "quick (subsampled, see tasks)"
    if meta.get("train_size") is not None:
        return (f"training subsample of {meta['train_size']} rows per task (seeded), "
                "full test splits")
    return "full"


def run(args):
    backbone = resolve_backbone_name(args.backbone)
    slug = backbone_slug(backbone) + ("-quick" if args.quick else "") + (
        f"-train{args.train_size}" if args.train_size is not None else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{slug}.json"
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in args.argv)

    results = json.loads(path.read_text()) if path.exists() else {}
    if args.report_only:
        if not results:
            raise SystemExit(f"{path} does not exist: nothing to report.")
        return results, out, slug
    if args.merge:
        results.setdefault("meta", {}).setdefault("slug", slug)
        for other in args.merge:
            merge_results(results, json.loads(Path(other).read_text()), other)
        _save(results, path)
        _log(f"merged {len(args.merge)} file(s) into {path}")
        return results, out, slug
    cli.set_threads(args.threads)
    meta = results.setdefault("meta", {})
    meta.update({
        "backbone": backbone, "slug": slug, "quick": args.quick,
        "train_size": args.train_size,
        "max_length": args.max_length, "split_seed": SPLIT_SEED,
        "gen_test": args.gen_test, "n_shots": N_SHOTS, "grid": GRID,
        "quick_limits": bool(args.quick and not args.no_quick_limits),
    })
    meta.setdefault("runs", []).append({
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": report.machine(),
    })
    results.setdefault("tasks", {})
    results.setdefault("entries", {})
    results.setdefault("predictions", {})

    ctx = Context(backbone, args.cache_dir, max_length=args.max_length,
                  quick=args.quick, gen_test=args.gen_test)
    meta["is_decoder"] = ctx.is_decoder
    _save(results, path)
    _log(f"backbone {backbone} (decoder: {ctx.is_decoder}); results -> {path}")

    first_seed = args.seeds[0]
    for task_name in args.tasks:
        task = load_task(task_name, data_dir=args.data_dir, quick=args.quick,
                         train_size=args.train_size)
        task_record = results["tasks"].setdefault(task_name, {})
        task_record.update(task.describe())
        ctx._passes.clear()
        todo = []
        for name in args.methods:
            method = METHODS[name]
            if method.generative and not ctx.is_decoder:
                results["entries"][_entry_key(task_name, name, None)] = {
                    "task": task_name, "method": name, "seed": None,
                    "skipped": "generative method: the backbone is an encoder"}
                continue
            seeds = args.seeds if method.seeded else [None]
            limited = args.quick and not args.no_quick_limits
            if limited and method.quick_tasks and task_name not in method.quick_tasks:
                continue
            if limited and method.seeded and method.expensive:
                seeds = seeds[:1]
            for seed in seeds:
                if args.rerun or _entry_key(task_name, name, seed) not in results["entries"]:
                    todo.append((method, seed))
        if not todo:
            _log(f"{task_name}: nothing to do")
            continue
        layers = list(dict.fromkeys(v for m, _ in todo for v in m.reads_layers))
        if layers:
            encoding = ctx.encode_task(task, layers)
            # Keep the first encoding on record: a later run re-encodes only
            # after its cache was wiped, and its time is not the figure the
            # report labels "first run that encoded them".
            if not task_record.get("encoding", {}).get("n_encoded"):
                task_record["encoding"] = {k: round(v, 2) if isinstance(v, float) else v
                                           for k, v in encoding.items()}
            _log(f"{task_name}: states of {encoding['n_prompts']} prompts ready "
                 f"({encoding['n_encoded']} encoded in {encoding['seconds']:.1f} s)")
        _save(results, path)

        for method, seed in todo:
            key = _entry_key(task_name, method.name, seed)
            start = time.perf_counter()
            outcome = method.run(ctx, task, seed)
            n_test = outcome.get("n_test", len(task.y_test))
            y_true = task.y_test[:n_test]
            metrics = score(y_true, outcome["y_pred"])
            results["entries"][key] = {
                "task": task_name, "method": method.name, "seed": seed,
                **metrics, "n_test": n_test,
                "fit_time": round(outcome["fit_time"], 3),
                "predict_time": round(outcome["predict_time"], 3),
                "n_params": outcome["n_params"],
                "extra": outcome.get("extra", {}),
            }
            if method.name == "relish" and seed == first_seed:
                results["predictions"][task_name] = {
                    "seed": seed,
                    "y_true": np.round(y_true, 4).tolist(),
                    "relish": np.round(outcome["y_pred"], 4).tolist()}
            _save(results, path)
            _log(f"{task_name} {method.name} seed={seed}: pearson="
                 f"{_fmt(metrics['pearson'])} nrmse={_fmt(metrics['nrmse'])} "
                 f"({time.perf_counter() - start:.1f} s)")
    return results, out, slug


#: What must agree for two results files to describe the same table.
MERGE_KEYS = ("backbone", "slug", "quick", "train_size", "max_length", "split_seed")


def merge_results(results, other, name="the other file"):
    """Fold the results ``other`` into ``results`` in place.

    ``other``'s entries win over the same (task, method, seed) in
    ``results`` (a merge follows the runs it folds in); its runs join the
    record unless already there; a task keeps the first encoding on record.
    Files of another backbone or other settings are refused, naming the key.
    """
    meta, theirs = results.setdefault("meta", {}), other.get("meta", {})
    for key in MERGE_KEYS:
        if key in meta and meta.get(key) != theirs.get(key):
            raise SystemExit(
                f"cannot merge {name}: its {key} is {theirs.get(key)!r}, this "
                f"table's is {meta.get(key)!r}. Merge only files written with the "
                "same --backbone, --quick, --train-size and --max-length.")
    for key, value in theirs.items():
        if key != "runs":
            meta.setdefault(key, value)
    runs = meta.setdefault("runs", [])
    seen = {(r["command"], r["date"]) for r in runs}
    runs.extend(r for r in theirs.get("runs", []) if (r["command"], r["date"]) not in seen)
    runs.sort(key=lambda r: r["date"])
    for task, record in other.get("tasks", {}).items():
        mine = results.setdefault("tasks", {}).setdefault(task, {})
        encoding = mine.get("encoding")
        mine.update(record)
        if encoding and encoding.get("n_encoded"):
            mine["encoding"] = encoding
    results.setdefault("entries", {}).update(other.get("entries", {}))
    results.setdefault("predictions", {}).update(other.get("predictions", {}))
    return results


def _fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


# -- report --------------------------------------------------------------------


def summarise(results):
    """(task, method) -> aggregated metrics over seeds."""
    groups = {}
    for entry in results["entries"].values():
        groups.setdefault((entry["task"], entry["method"]), []).append(entry)
    summary = {}
    for key, entries in groups.items():
        if any("skipped" in e for e in entries):
            summary[key] = {"skipped": entries[0]["skipped"]}
            continue
        row = {"n_runs": len(entries),
               "seeded": any(e["seed"] is not None for e in entries),
               "n_test": entries[0]["n_test"],
               # A search can choose a different head per seed.
               "n_params": sorted({e["n_params"] for e in entries})}
        for metric in METRICS:
            row[metric] = aggregate([e[metric] for e in entries])
        row["fit_time"] = aggregate([e["fit_time"] for e in entries])[0]
        row["predict_time"] = aggregate([e["predict_time"] for e in entries])[0]
        row["extras"] = [e.get("extra", {}) for e in entries]
        summary[key] = row
    return summary


def _params(counts):
    """Trainable parameters: one count, or the range when seeds differ."""
    if len(counts) == 1:
        return f"{counts[0]:,}"
    return f"{counts[0]:,}–{counts[-1]:,}"


def _pm(pair, digits=3):
    mean, std = pair
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std else f"{mean:.{digits}f}"


def _notes(method, row):
    extras = row["extras"]
    notes = []
    if method in ("zeroshot", "fewshot"):
        rates = [e.get("parse_failure_rate") for e in extras]
        notes.append(f"parse failures {np.mean(rates):.0%}")
    if method.startswith("rail"):
        notes.append(f"candidate mass {np.mean([e['candidate_mass_mean'] for e in extras]):.2f}")
    if method == "relish_tuned":
        best = [",".join(f"{k.replace('n_iterations', 'L').replace('latent_dim', 'd')}="
                         f"{v}" for k, v in sorted(e["best_params"].items()))
                for e in extras]
        notes.append("best " + "; ".join(best))
        # Below zero, the search found no setting better than the mean.
        scores = [e["best_cv_r2"] for e in extras if e.get("best_cv_r2") is not None]
        if scores:
            notes.append("CV R² " + "; ".join(f"{r:.2f}" for r in scores))
    if method in ("ridge_mean", "ridge_last", "tfidf_ridge", "ridge_layers", "ridge_best_layer"):
        notes.append(f"alpha {extras[0]['alpha']:.3g}")
    if method == "ridge_layers":
        notes.append(f"{extras[0]['pooling']} of layers {extras[0]['layers'][0]}-"
                     f"{extras[0]['layers'][-1]}")
    if method == "ridge_best_layer":
        notes.append(f"layer {extras[0]['layer']}, {extras[0]['pooling']}")
    if method in ("relish", "relish_last", "relish_lora") and any("shrinkage" in e
                                                                  for e in extras):
        # An entry of the plain head (no anchor) has no shrinkage: "-".
        notes.append("epochs " + "; ".join(str(e.get("n_epochs", "-")) for e in extras))
        notes.append("shrinkage " + "; ".join(
            ",".join(f"{v:.2f}" for v in e.get("shrinkage", [])) or "-" for e in extras))
    if any("n_backbone_params" in e for e in extras):
        # The paper's efficiency comparison: trainable weights (adapters and
        # head) as a share of the frozen backbone's.
        backbone = next(e["n_backbone_params"] for e in extras if "n_backbone_params" in e)
        notes.append(f"trainable {np.mean(row['n_params']) / backbone:.2%} of the backbone")
    return ", ".join(notes)


def _order(results, key):
    seen = []
    for entry in results["entries"].values():
        if entry[key] not in seen:
            seen.append(entry[key])
    reference = list(TASKS) if key == "task" else list(METHODS)
    return sorted(seen, key=lambda v: reference.index(v) if v in reference else 99)


def write_report(results, out, slug):
    summary = summarise(results)
    tasks, methods = _order(results, "task"), _order(results, "method")
    meta = results["meta"]
    lines = [f"# RELISH vs LLM-regression baselines: `{slug}`", ""]
    lines += ["Generated by `benchmarks/run.py`; do not edit by hand.", ""]
    lines += [f"- Backbone: `{meta['backbone']}` "
              f"({'decoder' if meta.get('is_decoder') else 'encoder'}), frozen, "
              f"max_length {meta['max_length']}, float32 on CPU. RELISH (`relish`) reads "
              "its default layers (every layer, averaged); `ridge_mean` and `ridge_last` "
              "read the last layer, `ridge_layers` the default's layers, "
              "`ridge_best_layer` the layer its training rows choose.",
              f"- Mode: {_mode(meta)}."]
    if any(e["method"] == "relish_last" for e in results["entries"].values()):
        lines.append("- `relish_last` is the earlier default (the last layer, a 10 % "
                     "hold-out): its rows were run as `relish` by the commands below "
                     "dated before 2026-12-07.")
    for run in meta["runs"]:
        m = run["machine"]
        lines.append(f"- Run {run['date']}: `{run['command']}` — {m['cpu_count']} CPUs "
                     f"({m['torch_threads']} torch threads), {m['platform']}, Python "
                     f"{m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
                     f"scikit-learn {m['scikit-learn']}.")
    lines += ["", "## How to read this", "",
              "- Pearson, Spearman (scipy.stats), NRMSE = RMSE / std(y_test) (population "
              "std; 1.0 = predicting the test mean), MAE on the target scale. "
              "mean ± std (ddof=1) over seeds "
              f"{sorted({e['seed'] for e in results['entries'].values() if e.get('seed') is not None})}"
              " for seeded methods; methods marked `det.` are deterministic given the split "
              "(ridge) or untrained (zero-shot prompting) and run once.",
              "- Every method sees the same splits and the same frozen backbone; the "
              "state-based methods share one token-state cache, so fit/predict times are "
              "for the head only (the backbone encoding time is listed per task).",
              "- `relish`: `RelishRegressor` defaults (latent 256, L=3, separate blocks, "
              "standardised states, AdamW lr 3e-4 with a per-epoch cosine decay, at most 10 "
              "epochs, Huber) with the task prompt. Since 2026-11-30 the defaults anchor the "
              "head on a leave-one-out ridge of the pooled states, stop early on 10% of the "
              "training rows held out and shrink the head's correction there (notes: epochs "
              "run, shrinkage); entries of `relish_tuned` and earlier `relish` entries used "
              "the plain head trained for 10 epochs on all rows. `relish_tuned`: "
              f"GridSearchCV over {GRID} on the training split ({'3' if meta['quick'] else '5'}"
              "-fold, R²), refit on all of it.",
              "- `finetuned_minilm`: all-MiniLM-L6-v2 with a one-output regression head, "
              "every weight fine-tuned (AdamW lr 2e-5, 10% warm-up, batch 16, 3 epochs, MSE "
              "on standardised targets; a pair as a cross-encoder), whatever the backbone "
              "of the run; its fit time is the whole model's training.",
              "- `relish_lora`, `lora_linear` (the paper's second regime, opt-in): the "
              "backbone is not frozen but LoRA-adapted (rank 8, alpha 16, dropout 0.05, "
              "peft's default target modules: q_proj and v_proj for Llama), adapters "
              "trained with the head by `relish`'s loop (AdamW lr 3e-4, cosine, at most "
              "10 epochs, Huber, early stopping on the same held-out rows). "
              "`relish_lora`: `RelishRegressor(backbone_tuning='lora', anchor=None)`, the "
              "RELISH head (with its shrinkage). `lora_linear`: "
              "`AutoModelForSequenceClassification(num_labels=1)`, a linear layer on the "
              "last token. Their trainable parameters count adapters and head; their fit "
              "time is the backbone's forward and backward passes too.",
              "- `tfidf_ridge`: TF-IDF of word 1-2-grams (one vectoriser per text field) "
              "+ RidgeCV on the raw texts; no backbone.",
              "- `ridge_*`: StandardScaler + RidgeCV (alphas 1e-2..1e6, efficient LOO) on the "
              "mean-pooled or last-token state. `mlp_mean`: StandardScaler + "
              "MLPRegressor(256 hidden, early_stopping) on standardised targets.",
              f"- `zeroshot`/`fewshot`: greedy decoding with the chat template "
              f"({N_SHOTS} random training examples as earlier chat turns, drawn per seed), "
              "first number parsed by regex, clipped to the prompt's range, mapped to the "
              "target scale; parse failures fall back to the training mean (rate in notes).",
              "- `rail_*` (RAIL-style, no sampling): the expected answer under the model's "
              "distribution over every integer in the prompt's range, read from the same "
              "prompts as decoding. SmolLM2 writes numbers one digit per token, so "
              "P(answer) is the product of next-token probabilities along its digits "
              "('-' then a digit for negatives; for 0..100 the first digit, then the "
              "second digit or the end of the number, and '10' then '0' for 100), "
              "renormalised over the integers; 'candidate mass' in the notes is the "
              "probability the model puts on them. Decimals are cut to their integer part.",
              "- MLQE targets are `z_mean`; prompted methods answer on 0..100 and are mapped "
              "with the line z_mean ≈ a·mean + b fitted on the training labels (task table).",
              ]
    if meta.get("quick_limits"):
        lines.append("- Quick mode runs `relish_tuned`, `fewshot` and `rail_fewshot` on the "
                     "first seed only (runs = 1), and `relish_tuned` (19 head fits per run) "
                     "on stsb and vader-tweets only: on a 2-core CPU each costs minutes "
                     "per seed and task.")
    if meta.get("gen_test"):
        lines.append(f"- Prompted methods (decoding, RAIL) are scored on the first "
                     f"{meta['gen_test']} test rows only (column n_test); the others on "
                     "the whole test split.")
    if not meta.get("is_decoder"):
        lines.append("- **Generative methods (decoding, RAIL) are skipped: the backbone is "
                     "an encoder.**")

    lines += ["", "## Pearson (mean ± std over seeds)", ""]
    lines.append("| method | " + " | ".join(tasks) + " |")
    lines.append("|---|" + "---|" * len(tasks))
    skipped = [m for m in methods
               if all("skipped" in summary.get((t, m), {"skipped": 1}) for t in tasks)]
    for method in [m for m in methods if m not in skipped]:
        cells = []
        for task in tasks:
            row = summary.get((task, method))
            if row is None:
                cells.append("")
            elif "skipped" in row:
                cells.append("skipped")
            else:
                best = _is_best(summary, task, method, tasks)
                text = _pm(row["pearson"])
                cells.append(f"**{text}**" if best else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if skipped:
        lines.append(f"| {', '.join(skipped)} | " + " | ".join(["skipped"] * len(tasks)) + " |")
    lines += ["", "Bold: best mean Pearson in the column. n/a: constant predictions "
              "(Pearson undefined); a mean over seeds leaves such runs out."]
    # An entry without a fitted anchor in its extras is the plain head: name
    # the tasks whose relish entries are such.
    plain = [t for t in tasks if summary.get((t, "relish"), {}).get("extras")
             and not any("anchor_alpha" in e for e in summary[(t, "relish")]["extras"])]
    if plain:
        lines.append(f"relish on {', '.join(plain)}: the plain head (no anchor), recorded "
                     "before the stacked default of 2026-11-30 and not rerun since.")
    lines.append("")

    lines += ["## Per task", ""]
    for task in tasks:
        info = results["tasks"].get(task, {})
        enc = info.get("encoding", {})
        lines += [f"### {task}", "",
                  f"{info.get('n_train')} train / {info.get('n_test')} test rows; split: "
                  f"{info.get('split')}" + (f"; quick: {info['quick_subsample']}"
                                            if info.get("quick_subsample") else "")
                  + (f"; training subsample: {info['train_subsample']}"
                     if info.get("train_subsample") else "") + ".",
                  f"Target `{info.get('target')}`, prompted range {info.get('answer_range')}"
                  + (f", answer→target: {info['answer_to_target']}"
                     if info.get("answer_to_target") else "") + "."]
        if enc:
            lines.append(f"Backbone encoding (train + test prompts, first run that encoded "
                         f"them): {enc['n_encoded']} of {enc['n_prompts']} prompts "
                         f"newly encoded in {enc['seconds']:.1f} s "
                         f"({enc['n_truncated']} truncated).")
        schemes = {e["scheme"] for r in [summary.get((task, m)) for m in methods]
                   if r and "extras" in r for e in r["extras"] if "scheme" in e}
        if schemes:
            lines.append(f"RAIL candidates: {'; '.join(sorted(schemes))}.")
        lines += ["", "| method | runs | n_test | Pearson | Spearman | NRMSE | MAE | "
                  "trainable params | fit s | predict s | notes |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for method in methods:
            row = summary.get((task, method))
            if row is None:
                continue
            if "skipped" in row:
                continue
            runs = str(row["n_runs"]) if row["seeded"] else "det."
            lines.append(
                f"| {method} | {runs} | {row['n_test']} | {_pm(row['pearson'])} | "
                f"{_pm(row['spearman'])} | {_pm(row['nrmse'])} | {_pm(row['mae'])} | "
                f"{_params(row['n_params'])} | {row['fit_time']:.1f} | {row['predict_time']:.1f} | "
                f"{_notes(method, row)} |")
        lines.append("")
    lines += ["## Plots", "",
              f"![Pearson per method and task]({slug}-pearson.png)", "",
              f"![RELISH predicted vs true]({slug}-scatter.png)", ""]
    (out / f"{slug}.md").write_text("\n".join(lines))
    return summary


def _is_best(summary, task, method, tasks):
    values = {m: r["pearson"][0] for (t, m), r in summary.items()
              if t == task and "pearson" in r and r["pearson"][0] is not None}
    return bool(values) and method in values and values[method] == max(values.values())


def write_plots(results, out, slug, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, methods = _order(results, "task"), _order(results, "method")
    methods = [m for m in methods
               if any("pearson" in summary.get((t, m), {}) for t in tasks)]
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(tasks)), 4.5))
    width = 0.8 / max(len(methods), 1)
    cmap = plt.get_cmap("tab10")
    for j, method in enumerate(methods):
        means, stds = [], []
        for task in tasks:
            row = summary.get((task, method), {})
            mean, std = row.get("pearson", (None, None))
            means.append(np.nan if mean is None else mean)
            stds.append(0.0 if std is None else std)
        x = np.arange(len(tasks)) + (j - (len(methods) - 1) / 2) * width
        ax.bar(x, means, width, yerr=stds, label=method, color=cmap(j % 10),
               capsize=2, error_kw={"linewidth": 0.8})
    ax.set_xticks(np.arange(len(tasks)), tasks, rotation=15)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("Pearson r (test)")
    ax.set_title(f"{slug}: Pearson per method and task (mean ± std over seeds)")
    ax.legend(fontsize=8, ncol=min(len(methods), 5), loc="upper center",
              bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    fig.savefig(out / f"{slug}-pearson.png", dpi=90)
    plt.close(fig)

    preds = results["predictions"]
    # The default's predictions, or the earlier default's where the default
    # has not run on a task yet (the subplot says which).
    shown = {t: next((m for m in ("relish", "relish_last") if m in preds.get(t, {})), None)
             for t in tasks}
    names = [t for t in tasks if shown[t] is not None]
    if not names:
        return
    cols = min(3, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.8 * rows), squeeze=False)
    for ax, task in zip(axes.ravel(), names):
        y_true, y_pred = np.asarray(preds[task]["y_true"]), np.asarray(preds[task][shown[task]])
        ax.scatter(y_true, y_pred, s=6, alpha=0.5)
        lo, hi = min(y_true.min(), y_pred.min()), max(y_true.max(), y_pred.max())
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--")
        r = score(y_true, y_pred)["pearson"]
        ax.set_title(f"{task} (r={_fmt(r)})", fontsize=10)
        ax.set_xlabel("true")
        ax.set_ylabel("RELISH predicted" + ("" if shown[task] == "relish" else ", last layer"))
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{slug}: RELISH (seed {preds[names[0]]['seed']}) predicted vs true, test")
    fig.tight_layout()
    fig.savefig(out / f"{slug}-scatter.png", dpi=80)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    results, out, slug = run(args)
    summary = write_report(results, out, slug)
    write_plots(results, out, slug, summary)
    _log(f"done in {time.perf_counter() - start:.0f} s: {out / (slug + '.md')}")


if __name__ == "__main__":
    main()
