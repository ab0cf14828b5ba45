"""Benchmark tasks built on the loaders of ``benchmarks.datasets``.

Every task gives raw texts (one field, or two for pairs), targets, a prompt
template shared by every method, and the numeric answer range the generative
baselines are asked for. The splits are fixed and identical for all methods:

- STS-B (pairs): official train/test, target ``similarity_score`` 0..5.
- MLQE-PE en-de, ro-en, si-en (pairs): official train/test, target
  ``z_mean`` (the WMT20 target). Prompted methods answer on 0..100; their
  answers are mapped to the ``z_mean`` scale by the least-squares line
  ``z_mean ~ a * mean + b`` fitted on the *training* split's two label
  columns (no model output is used), and few-shot examples show ``mean``.
- VADER tweets and movieReviewSnippets (single texts): no official split, so a
  seeded 80/20 split (:data:`SPLIT_SEED`), target mean sentiment -4..4.

``quick=True`` subsamples each split (:data:`QUICK_TRAIN` / :data:`QUICK_TEST`
rows, seed :data:`QUICK_SEED`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import train_test_split

from .datasets import load_mlqe, load_stsb, load_vader

__all__ = ["TASKS", "Task", "load_task", "SPLIT_SEED", "QUICK_SEED",
           "QUICK_TRAIN", "QUICK_TEST"]

#: Seed of the 80/20 train/test split of the VADER corpora.
SPLIT_SEED = 0
#: Seed of the quick-mode subsample.
QUICK_SEED = 0
QUICK_TRAIN = 400
QUICK_TEST = 200

PAIR_TEMPLATE = ("Rate the similarity of the two sentences from 0 to 5.\n"
                 "A: {0}\nB: {1}\nScore:")
QE_TEMPLATE = ("Rate the quality of this translation from 0 to 100.\n"
               "Source: {0}\nTranslation: {1}\nScore:")
SENTIMENT_TEMPLATE = ("Rate the sentiment of this text from -4 (very negative) "
                      "to 4 (very positive).\nText: {0}\nScore:")


@dataclass
class Task:
    """One regression task with fixed splits.

    Attributes
    ----------
    name : str
    X_train, X_test : ndarray of object, shape (n,) or (n, 2)
    y_train, y_test : ndarray of float64
    template : str
        Prompt template (``{0}``, ``{1}``) used by every method.
    answer_range : (float, float)
        The range the prompt asks for; generative answers are clipped to it.
    target : str
        Name of the target column.
    answer_train : ndarray
        Training targets on the prompt's scale (shown in few-shot examples).
    answer_format : str
        How a few-shot answer is written (``"{:.1f}"``).
    to_target : (float, float)
        ``(a, b)``: a prompt-scale answer ``v`` means ``a * v + b`` on the
        target scale (identity unless the scales differ, as for MLQE).
    info : dict
        Split and subsampling facts, written to the results.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    template: str
    answer_range: tuple
    target: str
    answer_train: np.ndarray
    answer_format: str = "{:.1f}"
    to_target: tuple = (1.0, 0.0)
    info: dict = field(default_factory=dict)

    @property
    def is_pair(self):
        return self.X_train.ndim == 2

    def describe(self):
        return {
            "n_train": int(len(self.y_train)),
            "n_test": int(len(self.y_test)),
            "fields": 2 if self.is_pair else 1,
            "target": self.target,
            "template": self.template,
            "answer_range": list(self.answer_range),
            "to_target": [round(float(v), 6) for v in self.to_target],
            "y_test_std": float(np.std(self.y_test)),
            **self.info,
        }


def _subsample(n, size, seed):
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.RandomState(seed).choice(n, size, replace=False))


def _stsb(data_dir):
    X_train, y_train = load_stsb("train", data_dir=data_dir)
    X_test, y_test = load_stsb("test", data_dir=data_dir)
    return dict(X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
                template=PAIR_TEMPLATE, answer_range=(0.0, 5.0),
                target="similarity_score", answer_train=y_train,
                info={"split": "official train/test"})


def _mlqe(pair):
    def load(data_dir):
        X_train, y_train = load_mlqe(pair, "train", target="z_mean", data_dir=data_dir)
        _, mean_train = load_mlqe(pair, "train", target="mean", data_dir=data_dir)
        X_test, y_test = load_mlqe(pair, "test", target="z_mean", data_dir=data_dir)
        return dict(X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
                    template=QE_TEMPLATE, answer_range=(0.0, 100.0),
                    target="z_mean", answer_train=mean_train,
                    answer_format="{:.0f}",
                    info={"split": "official train/test"})
    return load


def _vader(corpus):
    def load(data_dir):
        X, y = load_vader(corpus, data_dir=data_dir)
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=0.2, random_state=SPLIT_SEED)
        return dict(X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
                    template=SENTIMENT_TEMPLATE, answer_range=(-4.0, 4.0),
                    target="sentiment", answer_train=y_train,
                    info={"split": f"train_test_split(test_size=0.2, "
                                   f"random_state={SPLIT_SEED})"})
    return load


#: Task name -> loader of its full splits.
TASKS = {
    "stsb": _stsb,
    "mlqe-en-de": _mlqe("en-de"),
    "mlqe-ro-en": _mlqe("ro-en"),
    "mlqe-si-en": _mlqe("si-en"),
    "vader-tweets": _vader("tweets"),
    "vader-movies": _vader("movieReviewSnippets"),
}


def load_task(name, data_dir=None, quick=False, train_size=None):
    """Build one :class:`Task`; ``quick`` subsamples both splits (seeded),
    ``train_size`` the training split only (the same rows for every method
    and seed; the test split stays whole)."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; choose from {sorted(TASKS)}.")
    parts = TASKS[name](data_dir)
    n_train_full, n_test_full = len(parts["y_train"]), len(parts["y_test"])
    if quick:
        train = _subsample(n_train_full, QUICK_TRAIN, QUICK_SEED)
        test = _subsample(n_test_full, QUICK_TEST, QUICK_SEED + 1)
        for key in ("X_train", "y_train", "answer_train"):
            parts[key] = parts[key][train]
        for key in ("X_test", "y_test"):
            parts[key] = parts[key][test]
        parts["info"]["quick_subsample"] = (
            f"{len(train)} of {n_train_full} train rows (seed {QUICK_SEED}), "
            f"{len(test)} of {n_test_full} test rows (seed {QUICK_SEED + 1})")
    elif train_size is not None:
        train = _subsample(n_train_full, train_size, QUICK_SEED)
        for key in ("X_train", "y_train", "answer_train"):
            parts[key] = parts[key][train]
        parts["info"]["train_subsample"] = (
            f"{len(train)} of {n_train_full} train rows (seed {QUICK_SEED})")
    answer_train = np.asarray(parts["answer_train"], dtype=np.float64)
    y_train = parts["y_train"]
    if answer_train is y_train or np.array_equal(answer_train, y_train):
        to_target = (1.0, 0.0)
    else:
        a, b = np.polyfit(answer_train, y_train, 1)
        to_target = (float(a), float(b))
        parts["info"]["answer_to_target"] = (
            f"prompt-scale answer v -> {a:.5f} * v + {b:.5f} (least squares of "
            f"{'z_mean'} on mean, training split)")
    parts["answer_train"] = answer_train
    return Task(name=name, to_target=to_target, **parts)
