"""benchmarks/studies/calibration.py without the real data: it reads the state cache
without writing to it, and reports coverage misses honestly."""

import os

import numpy as np

from benchmarks.studies import calibration
from benchmarks.baselines import Context
from sklearn_relish.cache import MEMORY_CACHE, DiskCache, cached_states


def _snapshot(root):
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(root) for f in files}


def test_states_are_read_from_the_cache_without_writing_to_it(tiny_model_dir, tmp_path):
    ctx = Context(tiny_model_dir, tmp_path / "cache", max_length=64)
    backbone = ctx.load_backbone()
    disk = DiskCache(ctx.cache_dir, backbone.fingerprint)
    disk.check_writable()
    cached_states(backbone, ["a good film", "an awful plot"], disk=disk, memory=None)
    before = _snapshot(tmp_path / "cache")
    MEMORY_CACHE.clear()
    n_encoded = backbone.n_texts_encoded
    missing = calibration.load_states_read_only(ctx, ["a good film", "an awful plot",
                                                      "never encoded"])
    assert missing == 1
    assert len(MEMORY_CACHE) == 0      # an incomplete task is not loaded at all
    assert calibration.load_states_read_only(ctx, ["a good film", "an awful plot"]) == 0
    assert len(MEMORY_CACHE) == 2
    assert backbone.n_texts_encoded == n_encoded
    assert _snapshot(tmp_path / "cache") == before
    MEMORY_CACHE.clear()


def test_the_defaults_layers_are_read_too_so_its_fit_encodes_nothing(tiny_model_dir, tmp_path):
    """RELISH's default reads other layers than the ridges' last one: the
    study loads both views, so the default's fit finds every state in memory."""
    from sklearn_relish import RelishRegressor

    ctx = Context(tiny_model_dir, tmp_path / "cache", max_length=64)
    texts = ["Text: a good film", "Text: an awful plot"]     # the rendered prompts
    RelishRegressor(backbone=tiny_model_dir, max_length=64, cache_dir=ctx.cache_dir,
                    prompt_template="Text: {0}").cache_states(
        ["a good film", "an awful plot"], layers=[-1, RelishRegressor().layer])
    MEMORY_CACHE.clear()
    view = calibration.default_view(ctx)
    assert view.fingerprint != ctx.load_backbone().fingerprint
    assert calibration.load_states_read_only(ctx, texts) == 0
    assert len(MEMORY_CACHE) == 2          # the last layer only
    assert calibration.load_states_read_only(ctx, texts, [ctx.load_backbone(), view]) == 0
    assert len(MEMORY_CACHE) == 4
    n_encoded = view.n_texts_encoded
    cached_states(view, texts, disk=None, memory=MEMORY_CACHE)
    assert view.n_texts_encoded == n_encoded
    MEMORY_CACHE.clear()


def _record(rng, y, shift):
    y_pred = y + rng.normal(size=len(y))
    # Gaussian errors of std 1: half-widths z * shift cover as nominal at shift 1.
    z = calibration.stats.norm.ppf(0.5 + calibration.LEVELS / 2)
    half = np.broadcast_to(shift * z, (len(y), len(z)))
    bounds = np.stack([y_pred[:, None] - half, y_pred[:, None] + half], axis=1)
    return calibration.interval_metrics(y, y_pred, bounds)


def test_report_lists_the_misses_and_draws_the_diagram(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.normal(size=2000)
    good, narrow = _record(rng, y, 1.0), _record(rng, y, 0.5)
    assert abs(good["coverage"]["0.80"] - 0.8) < 0.03
    assert narrow["coverage"]["0.95"] < 0.8
    relish = {**good, "gaussian_coverage": good["coverage"], "rms_error_over_std": 1.0,
              "n_calibration_rows": 100, "n_epochs": 3, "shrinkage": [0.5],
              "difficulty_alpha": [10.0], "difficulty_pooling": ["mean"], "fit_time": 1.0}
    results = {"meta": {"backbone": "tiny", "slug": "tiny", "runs": [{
        "command": "python -m benchmarks.studies.calibration", "date": "today",
        "machine": {"cpu_count": 2, "torch_threads": 1, "torch": "x",
                    "scikit-learn": "y", "mapie": "z"}}]},
        "tasks": {"stsb": {"n_train": 10, "n_test": 2000, "relish": relish,
                           "ridge_split": narrow, "ridge_normalized": narrow,
                           "ridge_split_random": good},
                  "mlqe-si-en": {"skipped": "states missing"}}}
    done = calibration.write_report(results, tmp_path, "tiny")
    calibration.write_plot(results, tmp_path, "tiny", done)
    text = (tmp_path / "calibration-tiny.md").read_text()
    assert done == ["stsb"]
    assert "| stsb | 100 | relish |" in text
    assert "stsb ridge_normalized: nominal 95%" in text
    assert "stsb relish: nominal" not in text
    # The control row: official split (narrow) against the random re-split.
    control = text.split("## Control")[1]
    assert f"| stsb | {narrow['coverage']['0.80']:.3f} |" in control
    assert f"{good['coverage']['0.80']:.3f} | {good['coverage']['0.95']:.3f} |" in control
    # With several re-splits: their mean ± sd.
    results["tasks"]["stsb"]["ridge_split_random"] = {
        **good, "coverage_mean": {"0.80": 0.799, "0.95": 0.951},
        "coverage_sd": {"0.80": 0.021, "0.95": 0.011}}
    calibration.write_report(results, tmp_path, "tiny")
    text = (tmp_path / "calibration-tiny.md").read_text()
    assert "0.799 ± 0.021" in text.split("## Control")[1]
    assert "mlqe-si-en (states missing)" in text
    assert (tmp_path / "calibration-tiny-reliability.png").stat().st_size > 1000
