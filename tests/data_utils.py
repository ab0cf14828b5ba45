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
