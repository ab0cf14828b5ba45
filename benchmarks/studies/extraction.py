"""Token-state extraction throughput on STS-B pairs.

Ways to get the last layer's token states of the same prompts, run
interleaved in one process (``--rounds`` times, medians reported):

- ``relish``: this package's path (``cached_states`` on an empty cache):
  length-sorted batches of ``--batch-size`` texts, per-batch padding, only
  the needed layer, states moved to the CPU in float16 and stored in the
  cache;
- ``relish_tokens_<N>`` (one per ``--batch-tokens N``): the same, with
  batches formed by a budget of N padded tokens
  (``RelishRegressor(encode_batch_tokens=N)``);
- ``relish_eager`` (``--eager``): the same as ``relish`` with the model's
  plain ("eager") attention instead of PyTorch's SDPA, which the package
  asks for;
- ``padded_256``: the authors' released procedure: every input padded to 256
  tokens, batches in input order;
- ``plain_sorted``: a bare length-sorted ``model(**batch)`` loop that keeps
  nothing (the floor for any extraction).

Throughput counts real (non-padding) tokens per second of wall-clock time
and of the CPU time the process used (``time.process_time``; on a machine
shared with other jobs, their load disturbs it much less). With
``--batch-tokens`` or ``--eager``, the report also says how far each
variant's stored states are from ``relish``'s, next to how far ``relish``'s
own states move when each text runs alone (batch 1): the rounding that a
change of batch already brings.

    python -m benchmarks.studies.extraction --n-pairs 256
    python -m benchmarks.studies.extraction --methods relish plain_sorted \
        --batch-tokens 1024 2048 4096 8192 --eager --name extraction-batching
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from sklearn_relish import RelishRegressor
from sklearn_relish.backbone import load_backbone, plan_batches
from sklearn_relish.cache import MEMORY_CACHE, cached_states

from .. import cli, report
from ..datasets import load_stsb

TEMPLATE = "Rate the similarity of the two sentences from 0 to 5.\nA: {0}\nB: {1}\nScore:"


def relish(backbone, prompts, batch_size, batch_tokens=None):
    MEMORY_CACHE.clear()
    states, _ = cached_states(backbone, prompts, batch_size=batch_size,
                              batch_tokens=batch_tokens)
    MEMORY_CACHE.clear()
    return states


def relish_tokens(batch_tokens):
    def method(backbone, prompts, batch_size):
        return relish(backbone, prompts, batch_size, batch_tokens)
    return method


def eager_twin(backbone):
    """The backbone with the model loaded again with eager attention."""
    import copy

    from transformers import AutoModel

    from sklearn_relish.bundled import resolve_backbone

    source = resolve_backbone(backbone.config.name_or_path)[0]
    twin = copy.copy(backbone)
    twin.model = AutoModel.from_pretrained(source, dtype=backbone.dtype,
                                           attn_implementation="eager")
    twin.model.eval().requires_grad_(False)
    twin.model.config.use_cache = False
    twin.attn_implementation = twin.model.config._attn_implementation
    return twin


def relish_eager(twin):
    def method(backbone, prompts, batch_size):
        return relish(twin, prompts, batch_size)
    return method


def padded_tokens(backbone, prompts, batch_size, batch_tokens=None):
    """Tokens the forward passes of ``relish`` run, padding included."""
    lengths = [len(ids) for ids in backbone.tokenize(prompts)[0]]
    return sum(len(b) * lengths[b[0]]
               for b in plan_batches(lengths, batch_size=batch_size, batch_tokens=batch_tokens))


def agreement(reference, states):
    """How far ``states`` are from ``reference`` (both float16, per text)."""
    a = torch.cat([s.float().flatten() for s in reference])
    b = torch.cat([s.float().flatten() for s in states])
    return {"max_abs_difference": float((a - b).abs().max()),
            "max_abs_value": float(a.abs().max()),
            "share_of_values_differing": float((a != b).float().mean()),
            "mean_token_cosine": float(torch.nn.functional.cosine_similarity(
                torch.cat([s.float() for s in reference]),
                torch.cat([s.float() for s in states]), dim=-1).mean())}


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
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--batch-tokens", nargs="+", type=int, default=[],
                        help="add relish with batches of this many padded tokens")
    parser.add_argument("--eager", action="store_true",
                        help="add relish with eager attention instead of SDPA")
    parser.add_argument("--name", default="extraction",
                        help="results file name (default: extraction)")
    cli.add_data_dir(parser)
    cli.add_threads(parser)
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)
    backbone_name = cli.resolve_backbone_name(args.backbone)
    if "relish" not in args.methods:
        args.methods.insert(0, "relish")    # the reference of every ratio

    X, _ = load_stsb("train", data_dir=args.data_dir)
    rows = np.random.default_rng(0).permutation(len(X))[: args.n_pairs]
    reg = RelishRegressor(backbone=backbone_name, prompt_template=TEMPLATE)
    backbone = load_backbone(reg.get_backbone_config())
    if backbone.tokenizer.pad_token is None:
        backbone.tokenizer.pad_token = backbone.tokenizer.eos_token
    backbone.tokenizer.padding_side = "right"
    prompts = reg.prompts(X[rows])
    n_tokens = sum(len(ids) for ids in backbone.tokenize(prompts)[0])
    methods = {name: METHODS[name] for name in args.methods}
    padded = {"relish": padded_tokens(backbone, prompts, args.batch_size)}
    for budget in args.batch_tokens:
        methods[f"relish_tokens_{budget}"] = relish_tokens(budget)
        padded[f"relish_tokens_{budget}"] = padded_tokens(backbone, prompts, args.batch_size,
                                                          budget)
    if args.eager:
        twin = eager_twin(backbone)
        methods["relish_eager"] = relish_eager(twin)
        padded["relish_eager"] = padded["relish"]
    for method in methods.values():                   # warm-up
        method(backbone, prompts[:8], args.batch_size)

    times = {name: [] for name in methods}
    cpu_times = {name: [] for name in methods}
    states = {}
    for round_ in range(args.rounds):
        for name, method in methods.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            states[name] = method(backbone, prompts, args.batch_size)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - start_cpu)
            print(f"{name}: {times[name][-1]:.1f} s, CPU {cpu_times[name][-1]:.1f} s",
                  flush=True)
        # Written after every round: a run cut short keeps its rounds.
        write(args, backbone, prompts, n_tokens, padded, times, cpu_times, round_ + 1)
    variants = [name for name in methods if name.startswith("relish_")]
    if variants:
        alone = relish(backbone, prompts, 1)
        compared = {"relish, batch 1": agreement(states["relish"], alone),
                    **{name: agreement(states["relish"], states[name]) for name in variants}}
        write(args, backbone, prompts, n_tokens, padded, times, cpu_times, args.rounds,
              compared)


def write(args, backbone, prompts, n_tokens, padded, times, cpu_times, rounds,
          compared=None):
    """The report of the rounds done so far (and, at the end, the states'
    agreement)."""
    medians = {name: statistics.median(t) for name, t in times.items()}
    cpu_medians = {name: statistics.median(t) for name, t in cpu_times.items()}
    tps = {name: n_tokens / t for name, t in medians.items()}
    cpu_tps = {name: n_tokens / t for name, t in cpu_medians.items()}
    results = {"n_pairs": len(prompts), "real_tokens": n_tokens,
               "batch_size": args.batch_size, "batch_tokens": args.batch_tokens,
               "rounds": rounds, "backbone": backbone.config.name_or_path,
               "attn_implementation": backbone.attn_implementation,
               "times_s": times, "median_s": medians, "real_tokens_per_s": tps,
               "cpu_times_s": cpu_times, "median_cpu_s": cpu_medians,
               "real_tokens_per_cpu_s": cpu_tps, "padded_tokens": padded}
    for name in ("padded_256", "plain_sorted"):
        if name in tps:
            results[f"relish_vs_{name}"] = tps["relish"] / tps[name]
    table = ["| method | median time | real tokens/s | relative to relish | "
             "median CPU time | real tokens/CPU s | relative | tokens run (with padding) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in times:
        table.append(f"| {name} | {medians[name]:.1f} s | {tps[name]:.0f} | "
                     f"{tps[name] / tps['relish']:.2f} | {cpu_medians[name]:.1f} s | "
                     f"{cpu_tps[name]:.0f} | {cpu_tps[name] / cpu_tps['relish']:.2f} | "
                     f"{padded.get(name, '')} |")
    notes = [f"{len(prompts)} STS-B train pairs ({n_tokens} real tokens, mean "
             f"{n_tokens / len(prompts):.0f} per prompt), batch {args.batch_size}, "
             f"{rounds} interleaved rounds, medians; the package's attention: "
             f"{backbone.attn_implementation}."]
    if "padded_256" in tps:
        notes.append(f"relish / padded_256 = {results['relish_vs_padded_256']:.2f}x "
                     "(goal >= 2).")
    if "plain_sorted" in tps:
        notes.append(f"relish / plain_sorted = {results['relish_vs_plain_sorted']:.2f}x "
                     "(goal >= 0.95).")
    if compared:
        results["agreement_with_relish"] = compared
        table += ["", "Stored float16 states against relish's (batch "
                  f"{args.batch_size}, SDPA):", "",
                  "| variant | max abs. difference | largest value | values differing | "
                  "mean token cosine |", "|---|---|---|---|---|"]
        for name, a in compared.items():
            table.append(f"| {name} | {a['max_abs_difference']:.3g} | "
                         f"{a['max_abs_value']:.3g} | {a['share_of_values_differing']:.2%} | "
                         f"{a['mean_token_cosine']:.6f} |")
    report.write(args.name, results, table, notes, echo=compared is not None or
                 rounds == args.rounds)


if __name__ == "__main__":
    main()
