"""LoRA + a linear head on the last token: the paper's LoRA-based alternative.

The same backbone as RELISH, loaded as ``AutoModelForSequenceClassification``
with one output (for a decoder such as SmolLM2: a bias-free linear layer,
``score``, on the hidden state of the last non-padding token), with LoRA
adapters (``peft``, ``task_type="SEQ_CLS"``: the score layer trains in full,
the backbone through its adapters). Everything else is
``RelishRegressor(backbone_tuning="lora", anchor=None)``'s, so that the two
differ by their head only:

- the same prompts and token ids (the task's template, over-long text fields
  shortened, ``max_length``), from the shared backbone's tokenizer;
- the same adapters (:class:`sklearn_relish.lora.LoraSettings` defaults:
  rank 8, alpha 16, dropout 0.05, ``peft``'s default target modules), drawn
  from the fit's own generator as in the estimator;
- the same training loop (:func:`sklearn_relish.training.build_net` with the
  estimator's default settings: AdamW lr 3e-4 and weight decay 0.01, a
  per-epoch cosine decay, batch 16, at most 10 epochs, Huber with delta 1 on
  standardised targets; with at least 191 rows, 10 % held out, early stopping
  with patience 3 and the best epoch kept), the same held-out rows for a
  given seed;
- the adapters merged into the weights for prediction.

It has no shrinkage towards the mean: that is part of RELISH's estimator.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from sklearn_relish import RelishRegressor
from sklearn_relish.backbone import BackboneConfig, quiet_loading, load_backbone
from sklearn_relish.bundled import resolve_backbone
from sklearn_relish.lora import (LoraSettings, TokenIdDataset, AdaptedModule, adapt,
                                 init_adapters, lora_net, merge, pad_ids)
from sklearn_relish.fitting import fit_seed, holdout_split, n_validation_rows
from sklearn_relish.training import build_net, length_order

__all__ = ["LoraLinearRegressor", "SequenceRegression"]


class SequenceRegression(AdaptedModule):
    """A ``peft`` sequence-classification model as a skorch module:
    ``forward(input_ids, attention_mask)`` returns its logits."""

    @classmethod
    def build(cls, *, adapted, generator=None):
        """Adapters and the score layer drawn from ``generator``: the score
        as ``transformers`` initialises it (normal, the model's
        ``initializer_range``), the adapters as the estimator draws them."""
        from peft.utils import ModulesToSaveWrapper

        std = getattr(adapted.config, "initializer_range", 0.02)
        with torch.no_grad():
            for module in adapted.modules():
                if isinstance(module, ModulesToSaveWrapper):
                    for linear in module.modules_to_save.values():
                        weight = torch.empty(linear.weight.shape)
                        weight.normal_(0.0, std, generator=generator)
                        linear.weight.copy_(weight)
                        if linear.bias is not None:
                            linear.bias.zero_()
        dropouts = init_adapters(adapted, generator)
        module = cls(adapted, dropouts)
        module.seed_dropouts(adapted, generator)
        return module

    @property
    def generator(self):
        return None

    @generator.setter
    def generator(self, value):
        if value is None:
            self._set_dropout_generator(None)

    def forward(self, input_ids, attention_mask):
        return self.adapted(input_ids=input_ids,
                            attention_mask=attention_mask.long()).logits


class LoraLinearRegressor:
    """LoRA-adapted backbone + one-output linear head on the last token.

    Parameters
    ----------
    backbone : str
        What ``RelishRegressor(backbone=...)`` takes.
    max_length : int
        Token limit of the prompts.
    settings : LoraSettings, optional
        The adapters (the estimator's defaults when None).
    random_state : int
    **training
        ``RelishRegressor`` training parameters to change (``max_epochs``,
        ``lr``, ``batch_size``, ``early_stopping``...); the others are its
        defaults.

    Attributes
    ----------
    n_trainable_params_ : int
        Adapters plus the score layer.
    n_iter_ : int
        Epochs run.
    """

    def __init__(self, backbone, *, max_length=256, settings=None, random_state=0,
                 **training):
        self.backbone = backbone
        self.max_length = max_length
        self.settings = settings or LoraSettings()
        self.random_state = random_state
        self.training = training

    def _backbone(self):
        return load_backbone(BackboneConfig(name_or_path=self.backbone,
                                            max_length=self.max_length))

    def _model(self, backbone):
        from transformers import AutoModelForSequenceClassification

        from transformers.utils import logging

        source = resolve_backbone(self.backbone)[0]
        verbosity = logging.get_verbosity()
        # Its report that the score layer is new is expected: it is trained.
        logging.set_verbosity_error()
        try:
            with quiet_loading(0):
                model = AutoModelForSequenceClassification.from_pretrained(
                    source, num_labels=1, problem_type="regression", dtype=backbone.dtype)
        finally:
            logging.set_verbosity(verbosity)
        # The last token is the last one that is not padding: the same pad
        # id as the estimator's batches.
        model.config.pad_token_id = backbone.pad_id
        return model.to(backbone.device).eval().requires_grad_(False)

    def fit(self, prompts, y):
        """Fit on rendered prompts (as ``Context.prompts`` gives them)."""
        from skorch.helper import predefined_split

        estimator = RelishRegressor(**self.training)
        backbone = self._backbone()
        ids, _ = backbone.tokenize(list(prompts))
        y = np.asarray(y, dtype=np.float64).reshape(len(ids), 1)
        self.y_mean_, self.y_scale_ = y.mean(), y.std() or 1.0
        target = ((y - self.y_mean_) / self.y_scale_).astype(np.float32)
        # The estimator's split: the same held-out rows for the same seed.
        seed = fit_seed(self.random_state)
        n_valid = n_validation_rows(estimator, len(ids))
        valid_rows, train_rows = holdout_split(len(ids), n_valid, seed)

        def dataset(rows):
            return TokenIdDataset([ids[i] for i in rows], target[rows])

        params = estimator.get_params()
        net = build_net({}, lr=params["lr"], lr_schedule=params["lr_schedule"],
                        max_grad_norm=params["max_grad_norm"],
                        weight_decay=params["weight_decay"],
                        batch_size=params["batch_size"], max_epochs=params["max_epochs"],
                        huber_delta=params["huber_delta"],
                        valid_dataset=dataset(valid_rows) if n_valid else None,
                        n_iter_no_change=params["n_iter_no_change"], tol=params["tol"],
                        device=backbone.device, verbose=int(params["verbose"]))
        adapted = adapt(self._model(backbone), self.settings, task_type="SEQ_CLS")
        trainer = lora_net(net, functools.partial(SequenceRegression.build, adapted=adapted),
                           predefined_split(dataset(valid_rows)) if n_valid else None)
        collate = functools.partial(pad_ids, pad_id=backbone.pad_id)
        trainer.set_params(iterator_train__collate_fn=collate,
                           iterator_valid__collate_fn=collate)
        trainer.generator_ = torch.Generator().manual_seed(seed)
        try:
            trainer.fit(dataset(train_rows), y=None)
        finally:
            trainer.forget_generator()
        if trainer.interrupted_:
            raise KeyboardInterrupt
        self.n_iter_ = len(trainer.history)
        self.n_trainable_params_ = sum(p.numel() for p in trainer.module_.parameters()
                                       if p.requires_grad)
        self.pad_id_ = backbone.pad_id
        self.batch_size_ = params["batch_size"]
        self.model_ = merge(adapted)
        return self

    @torch.inference_mode()
    def predict(self, prompts):
        backbone = self._backbone()
        ids, _ = backbone.tokenize(list(prompts))
        order = length_order(ids)
        out = np.empty(len(ids))
        device = next(self.model_.parameters()).device
        for start in range(0, len(ids), self.batch_size_):
            rows = order[start:start + self.batch_size_]
            batch, _ = pad_ids([(torch.as_tensor(ids[i]), torch.zeros(1)) for i in rows],
                               self.pad_id_)
            logits = self.model_(input_ids=batch["input_ids"].to(device),
                                 attention_mask=batch["attention_mask"].long().to(device)).logits
            out[rows] = logits[:, 0].float().cpu().numpy()
        return out * self.y_scale_ + self.y_mean_

