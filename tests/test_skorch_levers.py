"""The skorch user's levers: callbacks and the optimiser, through parameters."""

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish.training import RelishNet

# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, latent_dim=32, n_heads=4, batch_size=16, random_state=0, cache_dir=None,
            max_epochs=3, early_stopping=False)


EPOCHS = []


class CountEpochs(Callback):
    """Records each epoch it sees in :data:`EPOCHS` (a module global: the
    fit works on deep copies of its callbacks)."""

    def __init__(self, tag="counter"):
        self.tag = tag

    def on_epoch_end(self, net, **kwargs):
        EPOCHS.append(self.tag)


@pytest.fixture(scope="module")
def task():
    return sentiment_task(80, seed=31)


def test_callbacks_run_after_the_heads_own_on_fresh_copies(tiny_model_dir, task, tmp_path,
                                                           monkeypatch):
    X, y = task
    names = []
    fit = RelishNet.fit

    def spy(self, *args, **kwargs):
        result = fit(self, *args, **kwargs)
        names.extend(name for name, _ in self.callbacks_)
        return result

    monkeypatch.setattr(RelishNet, "fit", spy)
    counter = CountEpochs("first")
    EPOCHS.clear()
    reg = RelishRegressor(backbone=tiny_model_dir,
                          callbacks=[counter, ("named", CountEpochs("second"))],
                          **FAST).fit(X, y)
    assert names.index("lr_schedule") < names.index("user_0_CountEpochs") < names.index("named")
    assert EPOCHS == ["first", "second"] * 3
    assert reg.callbacks[0] is counter             # the parameter itself is untouched
    with pytest.warns(UserWarning, match="callbacks are not saved"):
        path = reg.save(tmp_path / "model")
    assert RelishRegressor.load(path).callbacks is None


@pytest.mark.parametrize("name, kwargs, expected, check", [
    ("adamw", None, torch.optim.AdamW, {"weight_decay": 0.01}),
    ("sgd", {"momentum": 0.9}, torch.optim.SGD, {"momentum": 0.9, "weight_decay": 0.01}),
    ("adam", {"betas": (0.8, 0.9), "weight_decay": 0.0}, torch.optim.Adam,
     {"betas": (0.8, 0.9), "weight_decay": 0.0}),
])
def test_the_optimizer_is_reachable_through_parameters(tiny_model_dir, task, monkeypatch,
                                                       name, kwargs, expected, check):
    X, y = task
    seen = []
    initialize = RelishNet.initialize_optimizer

    def spy(self, *args, **kw):
        result = initialize(self, *args, **kw)
        seen.append(self.optimizer_)
        return result

    monkeypatch.setattr(RelishNet, "initialize_optimizer", spy)
    RelishRegressor(backbone=tiny_model_dir, optimizer=name, optimizer_kwargs=kwargs,
                    **FAST).fit(X, y)
    optimizer = seen[-1]
    assert type(optimizer) is expected
    for key, value in check.items():
        assert optimizer.defaults[key] == value


def test_an_unknown_optimizer_is_refused(tiny_model_dir, task):
    X, y = task
    with pytest.raises(ValueError, match="'optimizer' parameter"):
        RelishRegressor(backbone=tiny_model_dir, optimizer="lbfgs", **FAST).fit(X, y)


def test_a_search_can_tune_the_optimizer(tiny_model_dir, task):
    from sklearn.model_selection import GridSearchCV

    X, y = task
    search = GridSearchCV(RelishRegressor(backbone=tiny_model_dir, **FAST),
                          {"optimizer": ["adamw", "sgd"]}, cv=2).fit(X, y)
    assert search.best_params_["optimizer"] in ("adamw", "sgd")
    assert np.isfinite(search.best_score_)
