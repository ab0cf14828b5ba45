"""A small learnable text-regression task for the tiny backbone."""

import numpy as np

VALUES = {"good": 1.0, "bad": -1.0, "great": 2.0, "awful": -2.0}
WORDS = list(VALUES) + ["fine", "the", "movie", "plot", "a", "film"]


def sentiment_task(n, seed=0):
    """Texts of 2-8 words; the target is the sum of the words' values."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 9))) for _ in range(n)]
    y = np.array([sum(VALUES.get(w, 0.0) for w in t.split()) for t in texts])
    return texts, y


def benchmark_task(n_train, n_test, seed):
    """:func:`sentiment_task` split as a ``benchmarks.tasks.Task`` (the
    attributes the benchmarks read), for the studies' tests."""
    from types import SimpleNamespace

    X, y = sentiment_task(n_train + n_test, seed=seed)
    X = np.asarray(X, dtype=object)
    return SimpleNamespace(name="toy", template="Input:\n{0}\n\nScore:",
                           X_train=X[:n_train], y_train=y[:n_train],
                           X_test=X[n_train:], y_test=y[n_train:])
