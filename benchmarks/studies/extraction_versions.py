"""Extraction throughput of this checkout against another one, on the CPU.

Answers "did a change make extraction slower?": the package's own path
(``cached_states`` on an empty in-memory cache, batches of ``--batch-size``
texts) runs on the same STS-B prompts in two checkouts of the package, each
in a process of its own that imports only that checkout, the two taking
turns for ``--rounds`` rounds, each first in every other round (so that a
machine whose load drifts slows both alike); medians of real tokens per second, and of the CPU time the
process used (``time.process_time``), which another job's load on a shared
machine disturbs much less than the wall-clock time.

    git archive main | tar -x -C /tmp/main-snapshot
    python -m benchmarks.studies.extraction_versions --baseline /tmp/main-snapshot
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .. import cli, report
from ..datasets import load_stsb
from .extraction import TEMPLATE

HERE = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter whose only sklearn_relish is the checkout's.
_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[4]))
import sklearn_relish
from sklearn_relish.backbone import BackboneConfig, load_backbone
from sklearn_relish.cache import MEMORY_CACHE, cached_states
assert sklearn_relish.__file__.startswith(sys.argv[1]), sklearn_relish.__file__
prompts = json.load(open(sys.argv[2]))
backbone = load_backbone(BackboneConfig(sys.argv[3], max_length=256))
cached_states(backbone, prompts[:8], batch_size=int(sys.argv[5]))   # warm-up
MEMORY_CACHE.clear()
start, start_cpu = time.perf_counter(), time.process_time()
states, _ = cached_states(backbone, prompts, batch_size=int(sys.argv[5]))
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds,
                  "tokens": sum(len(s) for s in states), "file": sklearn_relish.__file__}))
"""


def time_checkout(checkout, prompts_file, backbone, threads, batch_size):
    """Seconds of one extraction in a process that imports ``checkout``."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(checkout), prompts_file, backbone, str(threads),
         str(batch_size)], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    parser = cli.parser("benchmarks.studies.extraction_versions", __doc__)
    cli.add_backbone(parser)
    parser.add_argument("--baseline", required=True,
                        help="a checkout of the package to compare with (the directory "
                             "that holds sklearn_relish/)")
    parser.add_argument("--n-pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    cli.add_data_dir(parser)
    cli.add_threads(parser)
    args = parser.parse_args(argv)
    threads = args.threads or 1
    backbone = cli.resolve_backbone_name(args.backbone)

    from sklearn_relish import RelishRegressor

    X, _ = load_stsb("train", data_dir=args.data_dir)
    rows = np.random.default_rng(0).permutation(len(X))[: args.n_pairs]
    prompts = RelishRegressor(prompt_template=TEMPLATE).prompts(X[rows])
    checkouts = {"baseline": Path(args.baseline).resolve(), "this checkout": HERE}
    times, tokens = {name: [] for name in checkouts}, {}
    cpu_times = {name: [] for name in checkouts}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(list(prompts), handle)
    try:
        for round_ in range(args.rounds):
            # Each goes first in every other round, so that neither gains
            # from its place (a warmer file cache, a load that drifts).
            for name, checkout in list(checkouts.items())[::(-1) ** round_]:
                got = time_checkout(checkout, handle.name, backbone, threads, args.batch_size)
                times[name].append(got["seconds"])
                cpu_times[name].append(got["cpu_seconds"])
                tokens[name] = got["tokens"]
                print(f"{name}: {got['seconds']:.1f} s, CPU {got['cpu_seconds']:.1f} s "
                      f"({got['file']})", flush=True)
    finally:
        os.unlink(handle.name)
    medians = {name: statistics.median(t) for name, t in times.items()}
    cpu_medians = {name: statistics.median(t) for name, t in cpu_times.items()}
    rates = {name: tokens[name] / medians[name] for name in checkouts}
    cpu_rates = {name: tokens[name] / cpu_medians[name] for name in checkouts}
    results = {"n_pairs": len(prompts), "batch_size": args.batch_size, "threads": threads,
               "rounds": args.rounds, "backbone": backbone,
               "checkouts": {k: str(v) for k, v in checkouts.items()},
               "times_s": times, "median_s": medians, "cpu_times_s": cpu_times,
               "median_cpu_s": cpu_medians, "real_tokens": tokens,
               "real_tokens_per_s": rates, "real_tokens_per_cpu_s": cpu_rates,
               "this_vs_baseline": rates["this checkout"] / rates["baseline"],
               "this_vs_baseline_cpu": cpu_rates["this checkout"] / cpu_rates["baseline"]}
    table = ["| checkout | median time | real tokens/s | relative | median CPU time | "
             "real tokens/CPU s | relative |", "|---|---|---|---|---|---|---|"]
    for name in checkouts:
        table.append(f"| {name} | {medians[name]:.1f} s | {rates[name]:.0f} | "
                     f"{rates[name] / rates['baseline']:.2f} | {cpu_medians[name]:.1f} s | "
                     f"{cpu_rates[name]:.0f} | {cpu_rates[name] / cpu_rates['baseline']:.2f} |")
    notes = [f"{len(prompts)} STS-B train pairs ({tokens['this checkout']} real tokens), "
             f"batch {args.batch_size}, {threads} thread(s), {args.rounds} rounds taking "
             "turns (each first in every other round), medians; each timing in a fresh "
             "process after a warm-up."]
    report.write("extraction-versions", results, table, notes)


if __name__ == "__main__":
    main()
