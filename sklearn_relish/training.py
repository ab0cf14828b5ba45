"""Training glue: the cached token states as a dataset, and the skorch net.

skorch iterates over a light dataset that holds references to the cached,
ragged states; :func:`pad_collate` pads each batch to its own longest text.
No padded tensor of the whole data set is ever built.
"""

from __future__ import annotations

import numpy as np
import torch
from skorch import NeuralNetRegressor
from skorch.callbacks import EarlyStopping, GradientNormClipping, LRScheduler
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, Sampler

from .head import RelishHead
from .streaming import take, token_lengths

__all__ = ["EpochSeededSampler", "LengthGroupedBatchSampler", "RelishNet", "TokenStateDataset",
           "WeightedHuberLoss", "build_net", "head_outputs", "pad_collate"]


class TokenStateDataset(Dataset):
    """Ragged token states (and targets) addressed by row.

    Parameters
    ----------
    states : list of Tensor of shape (n_tokens_i, d_model)
    y : ndarray of shape (n, n_outputs), optional
    sample_weight : ndarray of shape (n,), optional
        Appended to each target as a last column, which
        :class:`WeightedHuberLoss` splits off again (skorch passes only
        ``y`` to the loss).
    """

    def __init__(self, states, y=None, sample_weight=None):
        self.states = states
        self.y = None if y is None else torch.as_tensor(y, dtype=torch.float32)
        if sample_weight is not None and self.y is not None:
            weight = torch.as_tensor(sample_weight, dtype=torch.float32).reshape(-1, 1)
            self.y = torch.cat([self.y.reshape(len(self.y), -1), weight], dim=1)

    def __len__(self):
        return len(self.states)

    def __getitem__(self, index):
        target = self.y[index] if self.y is not None else torch.zeros(1)
        return self.states[index], target


def pad_collate(batch):
    """Pad one batch of ragged states; return skorch's ``(X, y)``.

    ``X`` is a dict, which skorch passes to ``RelishHead.forward`` as
    keyword arguments: ``states`` (float32, zero-padded) and ``mask`` (True
    on real tokens).
    """
    states, targets = zip(*batch)
    lengths = torch.tensor([len(s) for s in states])
    # Rows may be float16 or bfloat16 (see backbone.STORAGE_DTYPE): widened
    # one by one, as pad_sequence needs one dtype.
    padded = pad_sequence([s.float() for s in states], batch_first=True)
    mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
    return {"states": padded, "mask": mask}, torch.stack(targets)


class WeightedHuberLoss(torch.nn.Module):
    """The Huber loss of each row, weighted, averaged over the batch.

    The target's last column is the row's weight (see
    :class:`TokenStateDataset`). Weights are scaled by the caller to a mean
    of 1 over the training rows, so the loss is on the scale of the
    unweighted one, and a row of weight 0 adds nothing: the same gradient as
    without the row.
    """

    def __init__(self, delta=1.0):
        super().__init__()
        self.delta = delta

    def forward(self, prediction, target):
        target, weight = target[:, :-1], target[:, -1]
        loss = torch.nn.functional.huber_loss(prediction, target, reduction="none",
                                              delta=self.delta).mean(dim=1)
        return (weight * loss).sum() / len(weight)


class EpochSeededSampler(Sampler):
    """A random order of the rows per epoch, drawn from one generator.

    The same draws as ``torch.utils.data.RandomSampler`` without a
    generator (a seed per epoch, then a permutation), except that the seed
    comes from ``generator`` rather than torch's global one: a fit seeded
    the same way shuffles the same way whatever runs beside it.
    """

    def __init__(self, data_source, generator):
        self.data_source = data_source
        self.generator = generator

    def __len__(self):
        return len(self.data_source)

    def __iter__(self):
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        epoch = torch.Generator().manual_seed(seed)
        yield from torch.randperm(len(self.data_source), generator=epoch).tolist()


class LengthGroupedBatchSampler(Sampler):
    """Batches of rows of similar length, in a new random order each epoch.

    ``transformers``' ``group_by_length`` for skorch: each epoch draws a
    permutation of the rows (its seed from ``generator``, as
    :class:`EpochSeededSampler`), cuts it into groups of
    ``group_size * batch_size`` rows, sorts each group by length and cuts it
    into batches, then shuffles the batches. A batch is padded to its own
    longest row, so this cuts the padding that random batches carry (200
    STS-B prompts on SmolLM2, batches of 16: 1.83 tokens run per real token
    at random, 1.11 grouped; ``benchmarks/results/lora-batching.md``) while
    each epoch still sees the rows in a random order and in random company
    within a group.

    Parameters
    ----------
    lengths : sequence of int
        The rows' lengths (tokens).
    batch_size : int
    generator : torch.Generator
    group_size : int, default=50
        Batches per group (``transformers`` uses 50).
    """

    def __init__(self, lengths, batch_size, generator, group_size=50):
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        self.batch_size = int(batch_size)
        self.generator = generator
        self.group_size = int(group_size)

    def _groups(self):
        n, group = len(self.lengths), self.batch_size * self.group_size
        return [min(group, n - start) for start in range(0, n, group)]

    def __len__(self):
        return sum(-(-size // self.batch_size) for size in self._groups())

    def __iter__(self):
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator))
        epoch = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.lengths), generator=epoch)
        batches, start = [], 0
        for size in self._groups():
            rows = order[start:start + size]
            start += size
            rows = rows[torch.argsort(self.lengths[rows], descending=True, stable=True)]
            batches += [rows[i:i + self.batch_size].tolist()
                        for i in range(0, size, self.batch_size)]
        for index in torch.randperm(len(batches), generator=epoch).tolist():
            yield batches[index]


class RelishNet(NeuralNetRegressor):
    """skorch's regressor, with its own random generator and a memory of
    interrupts.

    ``generator_``, when set (a CPU ``torch.Generator``), is the only source
    of randomness of training: the head's initial weights, the order of the
    rows in each epoch and dropout's masks. Nothing is drawn from torch's
    global generator, so fits running at the same time in threads (joblib's
    threading backend, ``StackingRegressor(n_jobs=...)``) stay repeatable.

    skorch swallows ``KeyboardInterrupt`` and returns a half-trained net;
    the estimator checks ``interrupted_`` so that it can keep its previous
    fitted state instead.
    """

    interrupted_ = False
    generator_ = None

    def initialize_module(self):
        kwargs = self.get_params_for("module")
        self.module_ = self.module(**kwargs, generator=self.generator_)
        if self.generator_ is not None and kwargs.get("dropout", 0) > 0:
            # Dropout runs where the head runs: its own generator there,
            # seeded from this one (drawn only when there is dropout, so that
            # the shuffling of a head without it is as before).
            seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator_))
            self.module_.generator = torch.Generator(
                device=torch.device(self.device or "cpu")).manual_seed(seed)
        return self

    def get_iterator(self, dataset, training=False):
        if self.generator_ is None and training:
            return super().get_iterator(dataset, training)
        # A DataLoader draws a seed for its workers each time it is
        # iterated, from its ``generator``: ours in training; in prediction,
        # where it is unused (no workers), a throwaway one rather than
        # torch's global one.
        generator = self.generator_ if self.generator_ is not None else torch.Generator()
        prefix = "iterator_train" if training else "iterator_valid"
        kwargs = self.get_params_for(prefix)
        if kwargs.pop("shuffle", False):
            kwargs["sampler"] = EpochSeededSampler(dataset, generator)
        if kwargs.get("batch_size", self.batch_size) == -1:
            kwargs["batch_size"] = len(dataset)
        kwargs.setdefault("batch_size", self.batch_size)
        return getattr(self, prefix)(dataset, generator=generator, **kwargs)

    def forget_generator(self):
        """Drop the generators once training is done (a fitted net holds
        no random state)."""
        self.generator_ = None
        if hasattr(self, "module_"):
            self.module_.generator = None

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except KeyboardInterrupt:
            # skorch's EarlyStopping stops training by raising
            # KeyboardInterrupt too; only a real interrupt counts.
            self.interrupted_ = not self._stopped_early()
            raise

    def _stopped_early(self):
        return any(isinstance(cb, EarlyStopping) and cb.misses_ >= cb.patience
                   for _, cb in self.callbacks_)


#: The optimisers ``RelishRegressor(optimizer=...)`` names.
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop}


def build_net(module_kwargs, *, lr, lr_schedule="constant", max_grad_norm=None, weight_decay, batch_size, max_epochs,
              huber_delta, valid_dataset=None, n_iter_no_change=3, tol=1e-4,
              device, verbose, weighted=False, user_callbacks=None, optimizer="adamw",
              optimizer_kwargs=None):
    """A skorch ``NeuralNetRegressor`` that trains a :class:`RelishHead`.

    AdamW and the Huber loss, as the authors' earlier project.
    ``lr_schedule="cosine"`` anneals the learning rate per epoch from ``lr``
    towards 0 at ``max_epochs``. With a ``valid_dataset`` (rows held out by
    the caller), training stops when its loss has not improved by ``tol``
    for ``n_iter_no_change`` epochs and keeps the best epoch's weights.
    ``weighted``: the datasets carry sample weights
    (:class:`WeightedHuberLoss`). ``user_callbacks`` (skorch callbacks, or
    ``(name, callback)`` pairs) are added after these, as skorch adds a
    user's callbacks to its defaults; ``optimizer`` names one of
    :data:`OPTIMIZERS`, ``optimizer_kwargs`` go to it (``weight_decay`` is
    passed unless they set it).
    """
    from skorch.helper import predefined_split

    callbacks = []
    if max_grad_norm is not None:
        callbacks.append(("gradient_clipping", GradientNormClipping(max_grad_norm)))
    if lr_schedule == "cosine":
        callbacks.append(("lr_schedule", LRScheduler(
            policy=torch.optim.lr_scheduler.CosineAnnealingLR, T_max=max_epochs,
            step_every="epoch")))
    train_split = None
    if valid_dataset is not None:
        train_split = predefined_split(valid_dataset)
        callbacks.append(("early_stopping", EarlyStopping(
            monitor="valid_loss", patience=n_iter_no_change, threshold=tol,
            threshold_mode="abs", load_best=True)))
    for k, callback in enumerate(user_callbacks or []):
        callbacks.append(callback if isinstance(callback, tuple)
                         else (f"user_{k}_{type(callback).__name__}", callback))
    params = {f"module__{k}": v for k, v in module_kwargs.items()}
    params.update({f"optimizer__{k}": v
                   for k, v in {"weight_decay": weight_decay, **(optimizer_kwargs or {})}.items()})
    return RelishNet(
        RelishHead,
        criterion=WeightedHuberLoss if weighted else torch.nn.HuberLoss,
        criterion__delta=huber_delta,
        optimizer=OPTIMIZERS[optimizer],
        lr=lr,
        batch_size=batch_size,
        max_epochs=max_epochs,
        train_split=train_split,
        callbacks=callbacks,
        iterator_train__shuffle=True,
        iterator_train__collate_fn=pad_collate,
        iterator_valid__collate_fn=pad_collate,
        device=device,
        verbose=verbose,
        **params,
    )


def length_order(states):
    """Row order that puts texts of similar length in the same batch."""
    return np.argsort(token_lengths(states), kind="stable")


def head_outputs(net, states):
    """The net's outputs on ragged ``states``, batched by length."""
    order = length_order(states)
    out = np.empty((len(states), net.module_.regressor.out_features))
    out[order] = net.predict(TokenStateDataset(take(states, order)))
    return out
