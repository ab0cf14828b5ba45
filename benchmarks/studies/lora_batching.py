"""LoRA training on length-grouped batches against random batches.

In the LoRA regime every padded token costs a forward and a backward pass
through the whole backbone. ``LoraNet`` draws its training batches from
:class:`sklearn_relish.training.LengthGroupedBatchSampler`; this study fits
the same ``RelishRegressor(backbone_tuning="lora", anchor=None)`` (the
settings of ``benchmarks.run``'s ``relish_lora``) on the same rows with both
samplers, interleaved in one process, and reports the training time per
epoch (skorch's ``dur``: the training and held-out passes), the tokens run
per real token, and the test Pearson of each fit.

::

    python -m benchmarks.studies.lora_batching [--task stsb] [--train-size 400]
        [--max-epochs 2] [--rounds 2] [--test-size 300] [--threads 1]
"""

from __future__ import annotations

import contextlib
import statistics
import time
from unittest import mock

import numpy as np
import torch

from sklearn_relish.lora import LoraNet
from sklearn_relish.training import LengthGroupedBatchSampler, RelishNet

from .. import cli, report

SAMPLERS = ("random", "grouped")


def tokens_per_real_token(lengths, batch_size, grouped, seed=0, epochs=5):
    """Tokens a training epoch runs (each batch padded to its longest row)
    per real token, averaged over ``epochs`` epochs."""
    lengths = np.asarray(lengths)
    generator = torch.Generator().manual_seed(seed)
    run = 0
    for _ in range(epochs):
        if grouped:
            batches = list(LengthGroupedBatchSampler(lengths, batch_size, generator))
        else:
            order = torch.randperm(len(lengths), generator=generator).numpy()
            batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        run += sum(len(b) * lengths[list(b)].max() for b in batches)
    return run / (epochs * lengths.sum())


def _keeping_durations(durations):
    """``RelishNet.trim_for_prediction`` that first copies the epochs'
    durations (skorch's ``dur``) into ``durations``: the fitted estimator
    keeps no history."""
    trim = RelishNet.trim_for_prediction

    def trim_for_prediction(self):
        durations.extend(float(v) for v in self.history[:, "dur"])
        return trim(self)
    return trim_for_prediction


def _fmt(value):
    return "-" if value is None else f"{value:.3f}"


def main(argv=None):
    from ..baselines import Context, _relish
    from ..tasks import load_task
    from ..metrics import score

    parser = cli.parser("benchmarks.studies.lora_batching", __doc__)
    cli.add_backbone(parser)
    parser.add_argument("--task", default="stsb")
    parser.add_argument("--train-size", type=int, default=400)
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--test-size", type=int, default=300,
                        help="test rows scored (the first ones; a sanity check of each fit)")
    parser.add_argument("--name", default="lora-batching")
    cli.add_data_dir(parser)
    cli.add_cache_dir(parser)
    cli.add_threads(parser)
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)

    backbone = cli.resolve_backbone_name(args.backbone)
    ctx = Context(backbone, args.cache_dir, quick=False)
    task = load_task(args.task, data_dir=args.data_dir, train_size=args.train_size)
    # LoRA runs the backbone in every epoch: no frozen states to cache first.
    # The samplers' padding, on the training rows' token ids.
    lengths = [len(row) for row in ctx.load_backbone().tokenize(ctx.prompts(task, task.X_train))[0]]
    rows = {s: {"epoch_s": [], "fit_s": [], "pearson": []} for s in SAMPLERS}
    for round_ in range(args.rounds):
        for sampler in SAMPLERS:
            # "random": RelishNet's iterator, the frozen head's random batches.
            patch = (mock.patch.object(LoraNet, "get_iterator", RelishNet.get_iterator)
                     if sampler == "random" else contextlib.nullcontext())
            model = _relish(ctx, task, 0, backbone_tuning="lora", anchor=None,
                            max_epochs=args.max_epochs)
            epochs = []
            with patch, mock.patch.object(RelishNet, "trim_for_prediction",
                                          _keeping_durations(epochs)):
                start = time.perf_counter()
                model.fit(task.X_train, task.y_train)
                fit_s = time.perf_counter() - start
            test = slice(0, args.test_size)
            pearson = score(task.y_test[test], model.predict(task.X_test[test]))["pearson"]
            rows[sampler]["epoch_s"] += epochs
            rows[sampler]["fit_s"].append(fit_s)
            rows[sampler]["pearson"].append(pearson)
            print(f"round {round_} {sampler}: epochs {[round(e, 1) for e in epochs]} s, "
                  f"fit {fit_s:.1f} s, Pearson {_fmt(pearson)}", flush=True)
    summary = {}
    for sampler in SAMPLERS:
        summary[sampler] = {
            "median_epoch_s": statistics.median(rows[sampler]["epoch_s"]),
            "median_fit_s": statistics.median(rows[sampler]["fit_s"]),
            "pearson": rows[sampler]["pearson"],
            "tokens_per_real_token": tokens_per_real_token(
                lengths, model.batch_size, sampler == "grouped")}
    speedup = summary["random"]["median_epoch_s"] / summary["grouped"]["median_epoch_s"]
    table = ["| batches | median epoch | relative | median fit | tokens run per real token "
             "| test Pearson |", "|---|---|---|---|---|---|"]
    for sampler in SAMPLERS:
        s = summary[sampler]
        ratio = summary["random"]["median_epoch_s"] / s["median_epoch_s"]
        padding = f"{s['tokens_per_real_token']:.2f}"
        table.append(f"| {sampler} | {s['median_epoch_s']:.1f} s | {ratio:.2f} | "
                     f"{s['median_fit_s']:.1f} s | {padding} | "
                     + ", ".join(_fmt(p) for p in s["pearson"]) + " |")
    notes = [f"{task.name}: {len(task.y_train)} training rows (seed-0 subsample), Pearson "
             f"on the first {min(args.test_size, len(task.y_test))} test rows; backbone {backbone}; "
             f"{args.max_epochs} epochs a fit, {args.rounds} interleaved rounds, medians; "
             f"batch {model.batch_size}; epoch = skorch's dur (training and held-out passes). "
             f"Grouped is {speedup:.2f}x faster per epoch."]
    report.write(args.name, {"task": task.name, "backbone": backbone, "rows": rows,
                             "summary": summary, "speedup": speedup}, table, notes)


if __name__ == "__main__":
    main()
