"""Fitting tables larger than memory: peak RSS and time of ``fit``, in memory
and streamed from the disk cache (``max_state_memory``), as the rows grow.

The tables are built from real sentences: every distinct sentence of the
shared sets (VADER tweets and movie snippets, both sides of STS-B and of the
three MLQE pairs) is pooled, and each row joins two of them drawn at random
(seeded; repeated pairs dropped), so that there are enough distinct rows of
about two sentences each. The target is the row's log length in characters:
the states carry it, and accuracy is not what is measured here. Each size is
a prefix of the next, and the backbone encodes the largest table once, into
the cache directory, before any fit.

Each fit runs in a fresh process: the backbone is loaded and a 40-row fit
warms torch up, the peak RSS (``VmHWM``) is reset, then ``fit`` runs with
one epoch of a 10 % hold-out (``cv=None``). Reported: the process's RSS
before the fit and its peak during it, the fit's time and its epoch's time
(a skorch callback), and for a size fitted both ways, the largest
difference between the two fits' predictions on 500 of the rows. The
in-memory fit runs only where its states fit comfortably
(``--in-memory-limit-gb`` of float16 states).

    python -m benchmarks.studies.streaming --backbone minilm --sizes 25000 50000 100000 --threads 1
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .. import cli, report
from ..datasets import load_mlqe, load_stsb, load_vader

RESULT = "streaming"


def sentences(data_dir=None):
    """Every distinct sentence of the shared sets, in a fixed order."""
    pool = []
    for corpus in ("tweets", "movieReviewSnippets"):
        pool += list(load_vader(corpus, data_dir=data_dir)[0])
    for split in ("train", "dev", "test"):
        pool += list(load_stsb(split, data_dir=data_dir)[0].ravel())
        for pair in ("en-de", "ro-en", "si-en"):
            pool += list(load_mlqe(pair, split, data_dir=data_dir)[0].ravel())
    return list(dict.fromkeys(str(s).strip() for s in pool if str(s).strip()))


#: Pairs drawn at a time: a fixed number, so that every table is the start
#: of every larger one (the fits of each size read rows the cache holds).
_DRAW = 200_016


def table(n, data_dir=None, seed=0):
    """``n`` distinct rows of two real sentences each, and their targets;
    ``table(m)`` is the first ``m`` rows of ``table(n)`` for ``m < n``."""
    pool = sentences(data_dir)
    rng = np.random.default_rng(seed)
    rows = {}
    while len(rows) < n:
        a, b = rng.integers(len(pool), size=(2, _DRAW))
        for i, j in zip(a, b):
            if i != j:
                rows.setdefault(f"{pool[i]} {pool[j]}", None)
                if len(rows) == n:
                    break
    texts = list(rows)
    return texts, np.log([len(t) for t in texts])


# -- one fit, in a process of its own ----------------------------------------

_EPOCHS = []


def _child(args):
    from skorch.callbacks import Callback

    from sklearn_relish import RelishRegressor
    from sklearn_relish.backbone import load_backbone
    from sklearn_relish.cache import MEMORY_CACHE

    class EpochTimer(Callback):
        def on_epoch_begin(self, net, **kwargs):
            self.start = time.perf_counter()

        def on_epoch_end(self, net, **kwargs):
            _EPOCHS.append(time.perf_counter() - self.start)

    def status(field):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle
                        if line.startswith(field + ":"))

    cli.set_threads(args.threads)
    texts, y = table(args.child_n, args.data_dir)
    budget = None if args.child_budget == "none" else args.child_budget
    reg = RelishRegressor(backbone=cli.resolve_backbone_name(args.backbone),
                          cache_dir=args.cache_dir, cv=None, max_epochs=1, random_state=0,
                          callbacks=[EpochTimer()])
    load_backbone(reg.get_backbone_config())
    reg.set_params(max_state_memory=None).fit(texts[:40], y[:40])
    MEMORY_CACHE.clear()
    _EPOCHS.clear()
    reg.set_params(max_state_memory=budget)
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = status("VmRSS")
    start = time.perf_counter()
    reg.fit(texts, y)
    fit_s = time.perf_counter() - start
    peak = status("VmHWM")
    MEMORY_CACHE.clear()
    rows = np.random.default_rng(1).choice(len(texts), size=500, replace=False)
    prediction = reg.predict([texts[i] for i in rows])
    print(json.dumps({"rss_before_mb": before / 2**20, "peak_rss_mb": peak / 2**20,
                      "growth_mb": (peak - before) / 2**20, "fit_s": fit_s,
                      "epoch_s": _EPOCHS[-1], "prediction": prediction.tolist(),
                      "head_weight": float(reg.shrinkage_[0])}))


def _fit_in_child(args, n, budget):
    command = [sys.executable, "-m", "benchmarks.studies.streaming", "--child-n", str(n),
               "--child-budget", budget, "--backbone", args.backbone or "",
               "--cache-dir", args.cache_dir]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    out = subprocess.run(command, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    if out.returncode:
        raise RuntimeError(f"the fit of {n} rows ({budget}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = cli.parser("benchmarks.studies.streaming", __doc__)
    cli.add_backbone(parser, default="minilm")
    cli.add_data_dir(parser)
    cli.add_threads(parser)
    parser.add_argument("--cache-dir", default=str(cli.CACHE_DIR / "streaming"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 50_000, 100_000])
    parser.add_argument("--budget", default="256MB",
                        help="max_state_memory of the streamed fits (default: 256MB)")
    parser.add_argument("--in-memory-limit-gb", type=float, default=3.0,
                        help="fit in memory too while the float16 states take at most this")
    parser.add_argument("--child-n", type=int, help=argparse_hidden())
    parser.add_argument("--child-budget", help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.child_n:
        return _child(args)
    cli.set_threads(args.threads)

    from sklearn_relish import RelishRegressor

    path = report.RESULTS / f"{RESULT}.json"
    done = json.loads(path.read_text())["results"] if path.exists() else {"sizes": {}}
    texts, _ = table(max(args.sizes), args.data_dir)
    reg = RelishRegressor(backbone=cli.resolve_backbone_name(args.backbone),
                          cache_dir=args.cache_dir)
    start = time.perf_counter()
    n_encoded = reg.cache_states(texts)
    print(f"[{time.strftime('%H:%M:%S')}] {len(texts)} rows cached ({n_encoded} encoded in "
          f"{time.perf_counter() - start:.0f} s)", flush=True)
    for n in sorted(args.sizes):
        key = str(n)
        if key in done["sizes"] and done["sizes"][key].get("budget") == args.budget:
            continue
        n_tokens, width = _read_cached(reg, texts[:n])
        states_gb = n_tokens * width * 2 / 1e9
        entry = {"n": n, "budget": args.budget, "states_gb": states_gb,
                 "tokens_per_row": n_tokens / n}
        if states_gb <= args.in_memory_limit_gb:
            entry["in_memory"] = _fit_in_child(args, n, "none")
            print(f"[{time.strftime('%H:%M:%S')}] {n} in memory: {_line(entry['in_memory'])}",
                  flush=True)
        entry["streamed"] = _fit_in_child(args, n, args.budget)
        print(f"[{time.strftime('%H:%M:%S')}] {n} streamed: {_line(entry['streamed'])}",
              flush=True)
        if "in_memory" in entry:
            entry["max_prediction_difference"] = float(np.max(np.abs(
                np.subtract(entry["in_memory"]["prediction"], entry["streamed"]["prediction"]))))
        for fit in ("in_memory", "streamed"):
            if fit in entry:
                entry[fit].pop("prediction")
        done["sizes"][key] = entry
        done.update(backbone=args.backbone, threads=args.threads)
        _write(done)


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


def _read_cached(reg, texts):
    """Read every row's cache file once, so that both fits find the states
    in the operating system's page cache (as the goal assumes); return the
    rows' tokens, from the entries' headers, and the states' width."""
    from sklearn_relish.backbone import load_backbone
    from sklearn_relish.cache import DiskCache, text_key
    from sklearn_relish.storage import storage_fingerprint

    backbone = load_backbone(reg.get_backbone_config())
    fingerprint = storage_fingerprint(backbone.fingerprint, reg.state_storage)
    disk = DiskCache(reg.cache_dir, fingerprint)
    prompts, source = reg._prompts(texts, reset=True)      # what fit renders,
    prompts, _ = reg._shortened(prompts, source, backbone)  # shortens and caches
    n_tokens = 0
    for prompt in prompts:
        key = text_key(fingerprint, prompt)
        n_tokens += disk.peek(key)
        with open(disk.path(key), "rb") as handle:
            while handle.read(1 << 20):
                pass
    return n_tokens, backbone.state_width


def _line(fit):
    return (f"RSS {fit['rss_before_mb']:.0f} -> peak {fit['peak_rss_mb']:.0f} MB, fit "
            f"{fit['fit_s']:.0f} s, epoch {fit['epoch_s']:.0f} s")


def _write(results):
    rows = ["| rows | tokens/row | states (float16) | fit | RSS before | peak RSS | growth "
            "| fit s | epoch s | epoch vs in memory |", "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for key in sorted(results["sizes"], key=int):
        entry = results["sizes"][key]
        memory = entry.get("in_memory")
        for fit in ("in_memory", "streamed"):
            if fit not in entry:
                continue
            r = entry[fit]
            ratio = (f"{r['epoch_s'] / memory['epoch_s']:.2f}x"
                     if fit == "streamed" and memory else "")
            label = "in memory" if fit == "in_memory" else f"streamed ({entry['budget']})"
            rows.append(f"| {entry['n']:,} | {entry['tokens_per_row']:.0f} | "
                        f"{entry['states_gb']:.2f} GB | {label} | {r['rss_before_mb']:.0f} MB | "
                        f"{r['peak_rss_mb']:.0f} MB | {r['growth_mb']:+.0f} MB | "
                        f"{r['fit_s']:.0f} | {r['epoch_s']:.0f} | {ratio} |")
        if "max_prediction_difference" in entry:
            notes.append(f"{entry['n']:,} rows: the two fits' predictions differ by at most "
                         f"{entry['max_prediction_difference']:.1e} on 500 rows.")
    notes.append(
        "Each fit in a fresh process, one epoch, cv=None (a 10 % hold-out), after the "
        "backbone was loaded and a 40-row fit warmed torch up; the peak is VmHWM, reset just "
        "before fit. The states were in the cache (and the operating system's page cache) "
        "before every fit (each size's files are read once first). Rows: two real "
        "sentences of the shared sets joined, the target their log length in characters.")
    report.write(RESULT, results, rows, notes)


if __name__ == "__main__":
    main()
