"""``benchmarks.studies.tabular``: RELISH and numbers into gradient boosting."""

import numpy as np
import pandas as pd
import pytest

from benchmarks.datasets import get_data_dir
from benchmarks.studies.tabular import MODELS, load_table, run_fold, word_counts


def test_tabular_benchmark_fold(tiny_model_dir, tmp_path):
    """The tabular example's models on synthetic MLQE-like rows: the combined
    ColumnTransformer reads model_scores, so it beats RELISH on a target
    that lives in that column."""
    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame({
        "original": [" ".join(["word"] * k) for k in rng.integers(2, 9, size=n)],
        "translation": rng.choice(["ein Satz", "noch ein langer Satz hier"], size=n),
        "model_scores": rng.normal(size=n),
    })
    frame["z_mean"] = 2 * frame["model_scores"] + 0.1 * rng.normal(size=n)
    np.testing.assert_array_equal(word_counts(frame[["original", "translation"]])[:, 0],
                                  frame["original"].str.split().str.len())
    train, test = np.arange(40), np.arange(40, n)
    entry = run_fold(frame, train, test, tiny_model_dir, None, seed=0)
    assert set(MODELS) <= set(entry)
    # 40 training rows are few for boosting (20 rows per leaf): clearly
    # better than the text alone, not perfect.
    assert entry["relish+numbers"]["pearson"] > 0.7
    assert entry["relish+numbers"]["pearson"] > (entry["relish"]["pearson"] or 0.0) + 0.3


def test_tabular_benchmark_reads_model_scores():
    try:
        get_data_dir()
    except (FileNotFoundError, OSError):
        pytest.skip("no MLQE-PE data here")
    frame = load_table("en-de")
    assert len(frame) == 7000 and frame["model_scores"].dtype == float
    assert list(frame.columns) == ["original", "translation", "model_scores", "z_mean"]
