"""Memory of the token-state cache and of large predictions.

1. Extract the token states of ``--n-extract`` distinct real texts (VADER
   movie-review snippets, then tweets) into the cache: bytes per cached token
   (in memory and on disk) and the peak RSS while extracting.
2. Fit a head on 500 tweets, then predict ``--n-predict`` distinct short texts
   (pairs of real snippets joined, so none repeats): throughput, and the RSS
   sampled every half second, to show that predict streams in chunks and its
   memory stays bounded by the in-memory cache limit (``--memory-cache-mb``)
   instead of growing with the input.

    python -m benchmarks.studies.memory --backbone minilm --n-extract 10000 --n-predict 100000
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from sklearn_relish import DEFAULT_BACKBONE, RelishRegressor
from sklearn_relish.backbone import load_backbone
from sklearn_relish.cache import MEMORY_CACHE, DiskCache, cached_states
from sklearn_relish.datasets import load_vader_tweets

from .. import cli, report
from ..datasets import load_vader


def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    def __init__(self, every=0.5):
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        start = time.perf_counter()
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - start, rss_mb()))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak(self):
        return max(r for _, r in self.samples)


def main(argv=None):
    parser = cli.parser("benchmarks.studies.memory", __doc__)
    cli.add_backbone(parser)
    parser.add_argument("--n-extract", type=int, default=10_000)
    parser.add_argument("--n-predict", type=int, default=100_000)
    parser.add_argument("--memory-cache-mb", type=float, default=512)
    cli.add_data_dir(parser)
    cli.add_threads(parser)
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)
    backbone_name = cli.resolve_backbone_name(args.backbone)
    # The results are named after --backbone as given: memory-minilm.
    label = (args.backbone or DEFAULT_BACKBONE).split("/")[-1].lower()

    movies, _ = load_vader("movieReviewSnippets", data_dir=args.data_dir)
    tweets, tweet_y = load_vader_tweets(return_X_y=True)
    pool = list(dict.fromkeys(list(movies) + list(tweets)))
    texts = pool[: args.n_extract]

    reg = RelishRegressor(backbone=backbone_name, prompt_template="{0}", random_state=0)
    backbone = load_backbone(reg.get_backbone_config())
    rss_loaded = rss_mb()

    # 1. Extraction into the cache (memory and disk).
    MEMORY_CACHE.clear()
    MEMORY_CACHE.max_bytes = 64 * 2**30   # keep everything for the count
    with tempfile.TemporaryDirectory() as tmp, RssSampler() as sampler:
        disk = DiskCache(tmp, backbone.fingerprint)
        disk.check_writable()
        start = time.perf_counter()
        states, _ = cached_states(backbone, texts, disk=disk)
        t_extract = time.perf_counter() - start
        n_tokens = sum(len(s) for s in states)
        disk_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*.states"))
    memory_bytes = MEMORY_CACHE.nbytes
    del states

    # 2. Streaming prediction of many distinct texts under a bounded cache.
    MEMORY_CACHE.clear()
    MEMORY_CACHE.max_bytes = int(args.memory_cache_mb * 2**20)
    reg.set_params(max_epochs=3).fit(tweets[:500], tweet_y[:500])
    rng = np.random.default_rng(0)
    a, b = rng.integers(len(pool), size=(2, args.n_predict))
    queries = [f"{pool[i]} {pool[j]}" for i, j in zip(a, b)]
    queries = list(dict.fromkeys(queries))
    rss_before = rss_mb()
    with RssSampler() as predict_sampler:
        start = time.perf_counter()
        pred = reg.predict(queries)
        t_predict = time.perf_counter() - start
    assert np.isfinite(pred).all()
    samples = predict_sampler.samples
    half = [r for t, r in samples if t > samples[-1][0] / 2]
    first = [r for t, r in samples if t <= samples[-1][0] / 2]

    results = {
        "backbone": args.backbone or DEFAULT_BACKBONE, "d_model": backbone.d_model,
        "n_extract": len(texts), "cached_tokens": n_tokens,
        "t_extract_s": t_extract, "texts_per_s_extract": len(texts) / t_extract,
        "bytes_per_token_memory": memory_bytes / n_tokens,
        "bytes_per_token_disk": disk_bytes / n_tokens,
        "rss_after_load_mb": rss_loaded, "peak_rss_extract_mb": sampler.peak,
        "n_predict": len(queries), "t_predict_s": t_predict,
        "texts_per_s_predict": len(queries) / t_predict,
        "memory_cache_limit_mb": args.memory_cache_mb,
        "rss_before_predict_mb": rss_before, "peak_rss_predict_mb": predict_sampler.peak,
        "peak_rss_predict_first_half_mb": max(first) if first else None,
        "peak_rss_predict_second_half_mb": max(half) if half else None,
        # Bounded memory: the second half of the run peaks no higher than the
        # first (the cache fills in the first half, then stays at its limit).
        "rss_growth_second_half_mb": (max(half) - max(first)) if half and first else None,
        "rss_samples_predict": samples[:: max(1, len(samples) // 200)],
    }
    r = results
    table = [
        "| measure | value |", "|---|---|",
        f"| cached tokens ({r['n_extract']} texts) | {r['cached_tokens']:,} |",
        f"| bytes per cached token, memory (float16, d_model {r['d_model']}) | {r['bytes_per_token_memory']:.0f} |",
        f"| bytes per cached token, disk (with the per-entry header) | {r['bytes_per_token_disk']:.0f} |",
        f"| extraction | {r['t_extract_s']:.0f} s, {r['texts_per_s_extract']:.0f} texts/s |",
        f"| RSS after loading the backbone / peak while extracting | {r['rss_after_load_mb']:.0f} MB / {r['peak_rss_extract_mb']:.0f} MB |",
        f"| predict {r['n_predict']:,} distinct texts | {r['t_predict_s']:.0f} s, {r['texts_per_s_predict']:.0f} texts/s |",
        f"| RSS before predict / peak in first half / peak in second half | {r['rss_before_predict_mb']:.0f} / {r['peak_rss_predict_first_half_mb']:.0f} / {r['peak_rss_predict_second_half_mb']:.0f} MB |",
        f"| RSS growth from the first half's peak to the second's | {r['rss_growth_second_half_mb']:+.0f} MB |",
    ]
    notes = [f"In-memory cache limited to {args.memory_cache_mb:.0f} MB during predict; "
             "predict works in chunks of 2,048 rows, so its memory is the cache limit plus "
             "one chunk, whatever the number of rows."]
    report.write(f"memory-{label}", results, table, notes)


if __name__ == "__main__":
    main()
