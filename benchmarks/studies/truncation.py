"""Cutting an over-long prompt's text fields against cutting its end.

``RelishRegressor`` shortens a prompt longer than ``max_length`` tokens by
cutting its longest text field, so that the template (its closing cue) and
the other field stay. The alternative is the tokenizer's right truncation,
which cuts the rendered prompt's end: for a translation pair whose source
is long, the whole translation goes. That is what the estimator does when it
gets the rendered prompts as one field (template ``"{0}"``), so both are the
same estimator, fitted with the same seeds on the same rows.

    python -m benchmarks.studies.truncation --task mlqe-si-en \\
        --max-length 256 --n-train 400 --n-test 400 --seeds 0 1 2

Writes ``results/truncation-<backbone>-<task>-<max_length>.{json,md}``.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from sklearn_relish import RelishRegressor
from sklearn_relish.backbone import load_backbone
from sklearn_relish.inputs import render_prompts, validate_texts

from .. import cli, report
from ..cli import backbone_slug, resolve_backbone_name
from ..tasks import TASKS, load_task
from ..metrics import aggregate, score


def lost_fields(tokenizer, fields, template, max_length):
    """Per row: over the limit, and whether an end cut drops the last field whole."""
    prompts = render_prompts(fields, template)
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]]
    last = fields.copy()
    last[:, -1] = "\x00"               # where the last field starts
    starts = [p[:p.index("\x00")] for p in render_prompts(last, template)]
    before_last = [len(ids) for ids in tokenizer(starts, add_special_tokens=True)["input_ids"]]
    over = np.array(lengths) > max_length
    return over, over & (np.array(before_last) >= max_length)


def main(argv=None):
    parser = cli.parser("benchmarks.studies.truncation", __doc__)
    cli.add_backbone(parser)
    parser.add_argument("--task", default="mlqe-si-en", choices=list(TASKS))
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=2000,
                        help="training rows (seeded subsample)")
    parser.add_argument("--n-test", type=int, default=None,
                        help="test rows (seeded subsample; default: all)")
    cli.add_seeds(parser)
    cli.add_data_dir(parser)
    cli.add_cache_dir(parser)
    cli.add_threads(parser)
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)

    backbone = resolve_backbone_name(args.backbone)
    task = load_task(args.task, args.data_dir)
    if not task.is_pair:
        raise SystemExit(f"{args.task} has one text field: both cuts are the same there.")
    rows = np.random.default_rng(0).permutation(len(task.y_train))[:args.n_train]
    X_train, y_train = task.X_train[rows], task.y_train[rows]
    test = np.random.default_rng(1).permutation(len(task.y_test))[:args.n_test]
    X_test, y_test = task.X_test[test], task.y_test[test]
    variants = {
        "fields": (X_train, X_test, task.template),
        "end": (np.array(render_prompts(X_train, task.template), dtype=object),
                np.array(render_prompts(X_test, task.template), dtype=object), "{0}"),
    }
    probe = RelishRegressor(backbone=backbone, max_length=args.max_length,
                            cache_dir=args.cache_dir)
    tokenizer = load_backbone(probe.get_backbone_config()).tokenizer
    over, lost = lost_fields(tokenizer, validate_texts(np.concatenate([X_train, X_test]))[0],
                             task.template, args.max_length)

    runs = {name: [] for name in variants}
    for seed in args.seeds:
        for name, (train, test, template) in variants.items():
            model = RelishRegressor(backbone=backbone, prompt_template=template,
                                    max_length=args.max_length, cache_dir=args.cache_dir,
                                    random_state=seed)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)   # the truncation warning
                model.fit(train, y_train)
                y_pred = model.predict(test)
            runs[name].append({"seed": seed, **score(y_test, y_pred),
                               "seconds": round(time.perf_counter() - start, 1)})
            print(f"seed {seed}, {name}: {runs[name][-1]}", flush=True)

    results = {"backbone": backbone, "task": args.task, "max_length": args.max_length,
               "n_train": len(y_train), "n_test": len(y_test),
               "over_limit": float(over.mean()), "end_cut_loses_last_field": float(lost.mean()),
               "runs": runs}
    table = ["| cut | Pearson | NRMSE | seeds |", "|---|---|---|---|"]
    for name, label in [("fields", "longest text field (RelishRegressor)"),
                        ("end", "end of the rendered prompt")]:
        cells = []
        for metric in ("pearson", "nrmse"):
            mean, std = aggregate([r[metric] for r in runs[name]])
            cells.append(f"{mean:.3f} ± {std:.3f}")
        table.append(f"| {label} | {cells[0]} | {cells[1]} | {len(runs[name])} |")
    notes = [f"{args.task} on {backbone_slug(backbone)}, max_length={args.max_length}: "
             f"{over.mean():.1%} of the train and test prompts are longer, and cutting "
             f"their end drops the whole second text of {lost.mean():.1%}. "
             f"{len(y_train)} training and {len(y_test)} test rows (seeded subsamples); "
             "default RelishRegressor otherwise."]
    report.write(f"truncation-{backbone_slug(backbone)}-{args.task}-{args.max_length}",
                 results, table, notes)


if __name__ == "__main__":
    main()
