"""The head's factored attention against the direct computation.

``RelishHead`` never projects the token states to keys and values; it moves
those projections onto the latent side (see ``sklearn_relish.head``).
``refine(..., factored=False)`` runs the direct computation with the same
weights. This benchmark compares the two, interleaved in one process:

1. one training step (forward, backward, AdamW) and one inference batch of
   the head alone on random states of the given widths and token counts;
2. a whole ``RelishRegressor.fit`` on a real task's cached token states (the
   splits and prompts of ``benchmarks.run``), once per path, with the test
   Pearson and the largest difference between the two paths' predictions.

::

    python -m benchmarks.studies.head_speed [--widths 384 576 4096] [--tokens 64 256]
        [--backbone minilm] [--task stsb] [--full] [--threads 1]
"""

from __future__ import annotations

import statistics
import time
from unittest import mock

import numpy as np
import torch

from sklearn_relish.head import RelishHead, count_trainable_parameters

from .. import cli, report
from ..report import device_name

PATHS = ("factored", "direct")


def _step_timer(head, states, mask, factored, train):
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4)
    cuda = states.device.type == "cuda"

    def run():
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        if train:
            head.train()
            out = head.refine(states, mask, factored=factored)[0][-1]
            out.square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        else:
            head.eval()
            with torch.inference_mode():
                head.refine(states, mask, factored=factored)
        if cuda:  # kernels run asynchronously: wait for them
            torch.cuda.synchronize()
        return time.perf_counter() - start
    return run


def micro(widths, tokens, batch_size, rounds, device="cpu"):
    rows = []
    for d_model in widths:
        for n_tokens in tokens:
            torch.manual_seed(0)
            head = RelishHead(d_model).to(device)
            states = torch.randn(batch_size, n_tokens, d_model, device=device)
            mask = torch.ones(batch_size, n_tokens, dtype=torch.bool, device=device)
            mask[batch_size // 2:, n_tokens * 3 // 4:] = False  # some padding
            for train in (True, False):
                timers = {p: _step_timer(head, states, mask, p == "factored", train)
                          for p in PATHS}
                for p in PATHS:  # warm-up
                    timers[p]()
                times = {p: [] for p in PATHS}
                for _ in range(rounds):
                    for p in PATHS:
                        times[p].append(timers[p]())
                med = {p: statistics.median(times[p]) for p in PATHS}
                rows.append({"d_model": d_model, "tokens": n_tokens, "batch": batch_size,
                             "kind": "train step" if train else "inference",
                             "params": count_trainable_parameters(head),
                             **{f"{p}_ms": 1e3 * med[p] for p in PATHS},
                             "speedup": med["direct"] / med["factored"]})
                r = rows[-1]
                print(f"d={d_model:5d} T={n_tokens:4d} {r['kind']:10s}: factored "
                      f"{r['factored_ms']:8.2f} ms, direct {r['direct_ms']:8.2f} ms, "
                      f"{r['speedup']:.2f}x", flush=True)
    return rows


def end_to_end(backbone_name, task_name, full, cache_dir, seed=0, data_dir=None):
    from ..baselines import DEFAULT_LAYER, Context, _relish
    from ..cli import resolve_backbone_name
    from ..tasks import load_task
    from ..metrics import score

    backbone = resolve_backbone_name(backbone_name)
    ctx = Context(backbone, cache_dir, quick=not full)
    task = load_task(task_name, data_dir=data_dir, quick=not full)
    # The backbone's time is not what is compared here: cache the layers the
    # default regressor reads before the timed fits.
    ctx.encode_task(task, [DEFAULT_LAYER])
    direct = lambda self, states, mask: self.refine(states, mask, factored=False)[0][-1]  # noqa: E731
    results, predictions = {}, {}
    for path in PATHS:
        patch = (mock.patch.object(RelishHead, "forward", direct) if path == "direct"
                 else mock.patch.object(RelishHead, "forward", RelishHead.forward))
        with patch:
            model = _relish(ctx, task, seed)
            start = time.perf_counter()
            model.fit(task.X_train, task.y_train)
            fit_s = time.perf_counter() - start
            start = time.perf_counter()
            predictions[path] = model.predict(task.X_test)
            predict_s = time.perf_counter() - start
        if path == "factored":  # the same fitted head through the direct path
            with mock.patch.object(RelishHead, "forward", direct):
                same_head = model.predict(task.X_test)
        results[path] = {"fit_s": fit_s, "predict_s": predict_s,
                         "pearson": score(task.y_test, predictions[path])["pearson"]}
        print(f"{task_name} ({len(task.y_train)} train rows) {path}: fit {fit_s:.1f} s, "
              f"predict {predict_s:.2f} s, Pearson {results[path]['pearson']:.4f}", flush=True)
    return {"backbone": backbone, "task": task_name, "n_train": len(task.y_train),
            "n_test": len(task.y_test), "seed": seed, **results,
            "fit_speedup": results["direct"]["fit_s"] / results["factored"]["fit_s"],
            "same_head_max_abs_difference": float(
                np.max(np.abs(predictions["factored"] - same_head))),
            "two_fits_median_abs_difference": float(
                np.median(np.abs(predictions["factored"] - predictions["direct"])))}


def main(argv=None):
    parser = cli.parser("benchmarks.studies.head_speed", __doc__)
    parser.add_argument("--widths", nargs="+", type=int, default=[384, 576, 4096],
                        help="d_model: MiniLM 384, SmolLM2-135M 576, a 7B LLM 4096")
    parser.add_argument("--tokens", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    cli.add_backbone(parser, default="minilm")
    parser.add_argument("--task", default="stsb", help="'none' skips the end-to-end fit")
    parser.add_argument("--full", action="store_true", help="the task's full splits")
    cli.add_data_dir(parser)
    cli.add_cache_dir(parser)
    cli.add_threads(parser)
    parser.add_argument("--device", default="cpu",
                        help="where the micro-benchmark runs ('cuda' for a GPU); the "
                             "end-to-end fit uses RelishRegressor's device='auto'")
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)

    device = torch.device(args.device)
    rows = micro(args.widths, args.tokens, args.batch_size, args.rounds, device)
    fit = (None if args.task == "none" else
           end_to_end(args.backbone, args.task, args.full, args.cache_dir,
                      data_dir=args.data_dir))

    lines = ["| d_model | tokens | batch | step | factored ms | direct ms | speedup |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['d_model']} | {r['tokens']} | {r['batch']} | {r['kind']} | "
              f"{r['factored_ms']:.2f} | {r['direct_ms']:.2f} | {r['speedup']:.2f}x |"
              for r in rows]
    if fit:
        lines += ["", f"`RelishRegressor().fit` on {fit['task']} ({fit['n_train']} train / "
                  f"{fit['n_test']} test rows, cached states of `{fit['backbone']}`, seed "
                  f"{fit['seed']}):", "",
                  "| path | fit s | predict s | test Pearson |", "|---|---|---|---|"]
        lines += [f"| {p} | {fit[p]['fit_s']:.1f} | {fit[p]['predict_s']:.2f} | "
                  f"{fit[p]['pearson']:.4f} |" for p in PATHS]
        lines += ["", f"Fit speedup {fit['fit_speedup']:.2f}x. The same fitted head predicts "
                  "the test set through both paths with a largest difference of "
                  f"{fit['same_head_max_abs_difference']:.1e}; the two fits themselves "
                  "drift apart over their optimiser steps from float rounding alone "
                  "(median difference of their test predictions "
                  f"{fit['two_fits_median_abs_difference']:.2f}), as two seeds do."]
    notes = [f"Device: {device_name(device)}.",
             f"Medians of {args.rounds} interleaved rounds after one warm-up; paper head "
             "(latent 256, L=3, 8 heads, separate blocks), a quarter of the tokens padded in "
             "half the rows. 'direct' projects every token and runs nn.MultiheadAttention "
             "(`refine(..., factored=False)`); 'factored' is the default path."]
    name = "head_speed" if device.type == "cpu" else f"head_speed-{device.type}"
    report.write(name, {"micro": rows, "fit": fit, "device": device_name(device)},
                 lines, notes)


if __name__ == "__main__":
    main()
