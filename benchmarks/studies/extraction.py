"""Token-state extraction throughput on STS-B pairs.

Three ways to get the last layer's token states of the same prompts, run
interleaved in one process (``--rounds`` times, medians reported):

- ``relish``: this package's path (``cached_states`` on an empty cache):
  length-sorted batches, per-batch padding, only the needed layer, states
  moved to the CPU in float16 and stored in the cache;
- ``padded_256``: the authors' released procedure: every input padded to 256
  tokens, batches in input order;
- ``plain_sorted``: a bare length-sorted ``model(**batch)`` loop that keeps
  nothing (the floor for any extraction).

Throughput counts real (non-padding) tokens per second.

    python -m benchmarks.studies.extraction --n-pairs 256
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from sklearn_relish import RelishRegressor
from sklearn_relish.backbone import load_backbone
from sklearn_relish.cache import MEMORY_CACHE, cached_states

from .. import cli, report
from ..datasets import load_stsb

TEMPLATE = "Rate the similarity of the two sentences from 0 to 5.\nA: {0}\nB: {1}\nScore:"


def relish(backbone, prompts, batch_size):
    MEMORY_CACHE.clear()
    cached_states(backbone, prompts, batch_size=batch_size)


def padded_256(backbone, prompts, batch_size):
    tok, model = backbone.tokenizer, backbone.model
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = tok(prompts[start:start + batch_size], padding="max_length",
                        max_length=256, truncation=True, return_tensors="pt")
            model(input_ids=batch["input_ids"],
                  attention_mask=batch["attention_mask"]).last_hidden_state


def plain_sorted(backbone, prompts, batch_size):
    tok, model = backbone.tokenizer, backbone.model
    lengths = [len(ids) for ids in tok(prompts)["input_ids"]]
    order = np.argsort(lengths)[::-1]
    ordered = [prompts[i] for i in order]
    with torch.inference_mode():
        for start in range(0, len(ordered), batch_size):
            batch = tok(ordered[start:start + batch_size], padding=True, return_tensors="pt")
            model(input_ids=batch["input_ids"],
                  attention_mask=batch["attention_mask"]).last_hidden_state


METHODS = {"relish": relish, "padded_256": padded_256, "plain_sorted": plain_sorted}


def main(argv=None):
    parser = cli.parser("benchmarks.studies.extraction", __doc__)
    cli.add_backbone(parser)
    parser.add_argument("--n-pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    cli.add_data_dir(parser)
    cli.add_threads(parser)
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)
    backbone_name = cli.resolve_backbone_name(args.backbone)

    X, _ = load_stsb("train", data_dir=args.data_dir)
    rows = np.random.default_rng(0).permutation(len(X))[: args.n_pairs]
    reg = RelishRegressor(backbone=backbone_name, prompt_template=TEMPLATE)
    backbone = load_backbone(reg._backbone_config())
    if backbone.tokenizer.pad_token is None:
        backbone.tokenizer.pad_token = backbone.tokenizer.eos_token
    backbone.tokenizer.padding_side = "right"
    prompts, *_ = reg._prompts(X[rows], reset=True)
    n_tokens = sum(len(ids) for ids in backbone.tokenize(prompts)[0])
    relish(backbone, prompts[:8], args.batch_size)   # warm-up

    times = {name: [] for name in METHODS}
    for _ in range(args.rounds):
        for name, method in METHODS.items():
            start = time.perf_counter()
            method(backbone, prompts, args.batch_size)
            times[name].append(time.perf_counter() - start)
            print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    tps = {name: n_tokens / t for name, t in medians.items()}
    results = {"n_pairs": len(prompts), "real_tokens": n_tokens,
               "batch_size": args.batch_size, "rounds": args.rounds,
               "backbone": backbone_name, "times_s": times, "median_s": medians,
               "real_tokens_per_s": tps,
               "relish_vs_padded_256": tps["relish"] / tps["padded_256"],
               "relish_vs_plain_sorted": tps["relish"] / tps["plain_sorted"]}
    table = ["| method | median time | real tokens/s | relative to relish |", "|---|---|---|---|"]
    for name in METHODS:
        table.append(f"| {name} | {medians[name]:.1f} s | {tps[name]:.0f} | "
                     f"{tps[name] / tps['relish']:.2f} |")
    notes = [f"{len(prompts)} STS-B train pairs ({n_tokens} real tokens, mean "
             f"{n_tokens / len(prompts):.0f} per prompt), batch {args.batch_size}, "
             f"{args.rounds} interleaved rounds, medians.",
             f"relish / padded_256 = {results['relish_vs_padded_256']:.2f}x (goal >= 2); "
             f"relish / plain_sorted = {results['relish_vs_plain_sorted']:.2f}x (goal >= 0.95)."]
    report.write("extraction", results, table, notes)


if __name__ == "__main__":
    main()
