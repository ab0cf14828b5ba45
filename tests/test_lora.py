"""The LoRA regime (backbone_tuning="lora") on the tiny backbone.

What it protects: the adapters train and are used by predict; the shared
backbone is never modified; clones, seeds, pickles and saved models behave
as in the frozen regime; mistakes get clear errors.
"""

import pickle
import pickletools
import sys

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV

from data_utils import sentiment_task
from sklearn_relish import RelishHead, RelishRegressor
from sklearn_relish.backbone import load_backbone

pytest.importorskip("peft")

LORA = dict(backbone_tuning="lora", anchor=None, latent_dim=16, n_heads=2, batch_size=8,
            lora_rank=4, random_state=0)


@pytest.fixture(scope="module")
def task():
    return sentiment_task(80, seed=3)


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, task):
    X, y = task
    return RelishRegressor(backbone=tiny_model_dir, max_epochs=3, lr=3e-3,
                           **LORA).fit(X[:60], y[:60])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _lora_modules(model):
    return [name for name, _ in model.named_modules() if "lora_" in name]


def test_adapters_train_and_are_counted(fitted):
    adapters = fitted.lora_adapters_
    a = [v for k, v in adapters.tensors.items() if "lora_A" in k]
    b = [v for k, v in adapters.tensors.items() if "lora_B" in k]
    # peft's default for Llama: q_proj and v_proj of both layers.
    assert len(a) == len(b) == 4
    # B starts at zero: after training it is not, so the backbone changed.
    assert all(t.abs().max() > 0 for t in b)
    head = sum(p.numel() for p in fitted.net_.module_.parameters())
    assert adapters.n_params == sum(t.numel() for t in a + b) == 2 * 4 * (32 + 32 + 32 + 16)
    assert fitted.n_trainable_params_ == head + adapters.n_params
    assert len(fitted.loss_curve_) == fitted.n_iter_ == 3


def test_shared_backbone_is_never_modified(tiny_model_dir, task):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=2, lr=3e-3, **LORA)
    backbone = load_backbone(reg.get_backbone_config())
    before = _state(backbone.model)
    frozen_states = backbone.encode(X[:5])[0]
    reg.fit(X[:40], y[:40])
    reg.predict(X[40:])
    assert load_backbone(reg.backbone_config_) is backbone
    assert not _lora_modules(backbone.model)
    for name, tensor in backbone.model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert not any(p.requires_grad for p in backbone.model.parameters())
    for a, b in zip(backbone.encode(X[:5])[0], frozen_states):
        assert torch.equal(a, b)


def test_predict_reads_the_merged_adapted_backbone(fitted, task):
    """predict runs a copy with the adapters merged into its weights, and
    gives what the unmerged adapters and the head give."""
    from sklearn_relish.lora import adapt, load_adapter_state

    X, _ = task
    base = load_backbone(fitted.backbone_config_)
    view = fitted.lora_adapters_.backbone(base)
    assert view.model is not base.model and not _lora_modules(view.model)
    q = "layers.0.self_attn.q_proj.weight"
    assert not torch.equal(view.model.state_dict()[q], base.model.state_dict()[q])
    assert view.fingerprint == fitted.backbone_fingerprint_ != base.fingerprint

    adapted = adapt(base.model, fitted.lora_adapters_.settings)
    load_adapter_state(adapted, fitted.lora_adapters_.tensors)
    adapted.eval()
    ids, _ = base.tokenize(fitted._prompts(X[60:], reset=False)[0])
    head = fitted.net_.module_
    expected = []
    with torch.no_grad():
        for row in ids:
            # The default layer="all": the mean of every transformer layer's states.
            layers = adapted(input_ids=torch.tensor([row]), output_hidden_states=True)
            hidden = torch.stack(layers.hidden_states[1:]).float().mean(0)
            expected.append(head(hidden, torch.ones(1, len(row), dtype=torch.bool))[0, 0])
    expected = fitted._unscale(torch.stack(expected).double().numpy()[:, None])
    # float16 storage of the states and the merge's rounding only.
    np.testing.assert_allclose(fitted.predict(X[60:]), expected, atol=2e-2)
    frozen = RelishRegressor(**{**fitted.get_params(), "backbone_tuning": "frozen"})
    assert not np.allclose(frozen.fit(X[:60], task[1][:60]).predict(X[60:]),
                           fitted.predict(X[60:]), atol=1e-3)


def test_same_random_state_same_fit_and_the_global_rng_untouched(tiny_model_dir, task):
    X, y = task
    params = dict(backbone=tiny_model_dir, max_epochs=2, lr=3e-3, **LORA)
    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    a = RelishRegressor(**params).fit(X[:40], y[:40])
    assert torch.rand(1) == expected    # dropout and initialisation drew from the fit's own
    b = RelishRegressor(**params).fit(X[:40], y[:40])
    np.testing.assert_array_equal(a.predict(X[40:]), b.predict(X[40:]))
    assert a.backbone_fingerprint_ == b.backbone_fingerprint_
    c = RelishRegressor(**{**params, "random_state": 1}).fit(X[:40], y[:40])
    assert c.backbone_fingerprint_ != a.backbone_fingerprint_


def test_early_stopping_and_shrinkage_on_held_out_rows(tiny_model_dir, task):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=3, early_stopping=True,
                          validation_fraction=0.25, lr=3e-3, **LORA).fit(X, y)
    assert len(reg.validation_loss_curve_) == reg.n_iter_
    assert reg.best_validation_loss_ == min(reg.validation_loss_curve_)
    assert 0.0 <= reg.shrinkage_[0] <= 1.0
    assert reg.predict(X[:3]).shape == (3,)


def test_a_pickle_holds_adapters_and_head_but_no_backbone(fitted, task):
    X, _ = task
    expected = fitted.predict(X[60:])
    blob = pickle.dumps(fitted)
    names = {str(arg) for op, arg, _ in pickletools.genops(blob)
             if op.name in ("GLOBAL", "SHORT_BINUNICODE", "BINUNICODE", "UNICODE")}
    assert not [n for n in names if n.startswith(("transformers", "tokenizers", "peft"))]
    assert "Backbone" not in names and "LlamaModel" not in names
    assert "LoraAdapters" in names and "RelishHead" in names
    # Adapters and head only: far below the tiny backbone's own size.
    size = sum(t.numel() * t.element_size()
               for t in load_backbone(fitted.backbone_config_).model.state_dict().values())
    assert len(blob) < size
    restored = pickle.loads(blob)
    assert restored.lora_adapters_._merged is None          # rebuilt on first use
    np.testing.assert_array_equal(restored.predict(X[60:]), expected)
    assert restored.backbone_fingerprint_ == fitted.backbone_fingerprint_
    assert restored.n_trainable_params_ == fitted.n_trainable_params_


def test_saved_adapters_that_were_changed_are_refused(fitted, tmp_path):
    from safetensors.torch import load_file, save_file

    path = fitted.save(tmp_path / "model")
    tensors = load_file(str(path / "adapters.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(path / "adapters.safetensors"))
    with pytest.raises(ValueError, match="adapters.safetensors.*does not match the digest"):
        RelishRegressor.load(path)


def test_clone_and_grid_search(tiny_model_dir, fitted, task):
    X, y = task
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params()
    assert not hasattr(twin, "lora_adapters_")
    search = GridSearchCV(
        RelishRegressor(backbone=tiny_model_dir, max_epochs=1, **LORA),
        {"lora_rank": [2, 4], "lora_target_modules": [None, ["o_proj"]]}, cv=2,
    ).fit(X[:40], y[:40])
    assert len(search.cv_results_["mean_test_score"]) == 4
    best = search.best_estimator_
    assert best.lora_adapters_.settings.rank == search.best_params_["lora_rank"]
    assert not _lora_modules(load_backbone(best.backbone_config_).model)


def test_the_head_and_adapters_learn(tiny_model_dir):
    X, y = sentiment_task(120, seed=4)
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=8, lr=3e-3,
                          **LORA).fit(X[:80], y[:80])
    assert reg.loss_curve_[-1] < 0.25 * reg.loss_curve_[0]
    # 0.93-0.97 seen over seeds; an untrained head: about 0.
    assert np.corrcoef(reg.predict(X[80:]), y[80:])[0, 1] > 0.85


def test_staged_predict_transform_and_explain_read_the_adapted_states(fitted, task):
    X, _ = task
    stages = list(fitted.staged_predict(X[:4]))
    np.testing.assert_allclose(stages[-1], fitted.predict(X[:4]), atol=1e-5)
    assert fitted.transform(X[:4]).shape == (4, 16)
    explained = fitted.explain(X[:1])[0]
    np.testing.assert_allclose(explained.staged_predictions[-1], fitted.predict(X[:1])[0],
                               atol=1e-5)
    adapted = fitted.token_states(X[:2])
    frozen = load_backbone(fitted.backbone_config_).encode(fitted._prompts(X[:2], False)[0])[0]
    assert [a.shape for a in adapted] == [f.shape for f in frozen]
    assert not any(torch.equal(a, f) for a, f in zip(adapted, frozen))


def test_warm_start_continues_the_adapters(tiny_model_dir, task):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=2, warm_start=True, lr=3e-3,
                          **LORA).fit(X[:40], y[:40])
    first = reg.lora_adapters_
    reg.fit(X[:40], y[:40])
    assert reg.n_iter_ == 4 and reg.lora_adapters_ is not first
    reg.set_params(lora_rank=2)
    with pytest.raises(ValueError, match="LoRA settings"):
        reg.fit(X[:40], y[:40])
    reg.set_params(lora_rank=4, backbone_tuning="frozen", anchor=None)
    with pytest.raises(ValueError, match="backbone_tuning"):
        reg.fit(X[:40], y[:40])


def test_interrupted_fit_keeps_the_previous_one(fitted, task, monkeypatch):
    X, y = task
    reg = pickle.loads(pickle.dumps(fitted))
    before, adapters = reg.predict(X[60:]), reg.lora_adapters_
    backbone = load_backbone(reg.backbone_config_)
    weights = _state(backbone.model)
    calls = []
    forward = RelishHead.forward

    def flaky(self, states, mask):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return forward(self, states, mask)

    monkeypatch.setattr(RelishHead, "forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        reg.fit(X[:40], -y[:40])
    monkeypatch.undo()
    assert reg.lora_adapters_ is adapters
    np.testing.assert_array_equal(reg.predict(X[60:]), before)
    for name, tensor in backbone.model.state_dict().items():
        assert torch.equal(tensor, weights[name])

    fresh = RelishRegressor(**fitted.get_params())
    calls.clear()
    monkeypatch.setattr(RelishHead, "forward", flaky)
    with pytest.raises(KeyboardInterrupt):
        fresh.fit(X[:40], y[:40])
    monkeypatch.undo()
    with pytest.raises(NotFittedError):
        fresh.predict(X[:2])


def test_the_anchor_needs_the_frozen_states(tiny_model_dir, task):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, **{**LORA, "anchor": "stack"})
    with pytest.raises(ValueError, match="anchor='auto' or None"):
        reg.fit(X[:20], y[:20])


def test_lora_runs_with_every_other_parameter_at_its_default(tiny_model_dir, task,
                                                             monkeypatch):
    """The default anchor adapts to the regime; without peft, its absence is
    the first and only error."""
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, backbone_tuning="lora", max_epochs=1,
                          latent_dim=16, n_heads=2, random_state=0).fit(X[:24], y[:24])
    assert reg.anchor == "auto" and reg.anchor_alpha_ is None
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match="pip install"):
        RelishRegressor(backbone=tiny_model_dir, backbone_tuning="lora",
                        anchor="stack").fit(X[:24], y[:24])


def test_layers_lora_cannot_adapt_are_named(tiny_model_dir, task):
    X, y = task
    for targets, message in [(["no_such_layer"], "not found"),
                             (["input_layernorm"], "not supported")]:
        reg = RelishRegressor(backbone=tiny_model_dir, lora_target_modules=targets, **LORA)
        with pytest.raises(ValueError, match=message) as info:
            reg.fit(X[:20], y[:20])
        assert "q_proj" in str(info.value)      # the layers it could adapt


def test_an_architecture_without_default_targets_asks_for_them(tiny_model_dir, task,
                                                              monkeypatch):
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    X, y = task
    monkeypatch.delitem(defaults, "llama")
    with pytest.raises(ValueError, match="no default LoRA target modules.*lora_target_modules"):
        RelishRegressor(backbone=tiny_model_dir, **LORA).fit(X[:20], y[:20])
    # Naming them works.
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=1,
                          lora_target_modules="all-linear", **LORA).fit(X[:20], y[:20])
    assert len(reg.lora_adapters_.tensors) == 2 * 2 * 7     # 7 linear layers per block


def test_without_peft_the_error_says_how_to_install_it(tiny_model_dir, task, monkeypatch):
    X, y = task
    monkeypatch.setitem(sys.modules, "peft", None)
    reg = RelishRegressor(backbone=tiny_model_dir, **LORA)
    with pytest.raises(ImportError, match=r"sklearn-relish\[lora\]"):
        reg.fit(X[:20], y[:20])
    assert not hasattr(reg, "net_")


def test_the_frozen_regime_is_unchanged(tiny_model_dir, task):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=1, latent_dim=16, n_heads=2,
                          random_state=0).fit(X[:20], y[:20])
    assert reg.lora_adapters_ is None
    assert reg.backbone_fingerprint_ == load_backbone(reg.backbone_config_).fingerprint
    assert reg.n_trainable_params_ == sum(p.numel() for p in reg.net_.module_.parameters())


def test_training_rows_pooled_features_are_what_predict_reads(tiny_model_dir, task,
                                                              monkeypatch):
    """What a model fitted beside the head (the uncertainty's difficulty
    ridge) must read at fit: the adapted states, as pooled_states gives
    them after the fit, not the frozen ones the fit began with."""
    from sklearn_relish.lora import LoraTraining

    X, y = task
    captured = {}
    init = LoraTraining.__init__

    def keep(self, estimator):
        init(self, estimator)
        captured["lora"] = self

    monkeypatch.setattr(LoraTraining, "__init__", keep)
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=1, **LORA).fit(X[:30], y[:30])
    features = captured["lora"].pooled_features()
    np.testing.assert_allclose(features, reg.pooled_states(X[:30], "mean+last"), atol=1e-6)
    frozen = RelishRegressor(**{**reg.get_params(), "backbone_tuning": "frozen"})
    assert not np.allclose(features, frozen.pooled_states(X[:30], "mean+last"), atol=1e-4)


def test_uncertainty_is_calibrated_on_the_adapted_states(tiny_model_dir, task, monkeypatch,
                                                         tmp_path):
    """The difficulty model of predict_interval is fitted on the states
    predict reads: after a LoRA fit, the adapted ones."""
    import sklearn_relish.fitting as fitting_module

    X, y = task
    captured = {}
    fit_calibration = fitting_module.fit_calibration

    def keep(features, *args, **kwargs):
        captured["features"] = features
        return fit_calibration(features, *args, **kwargs)

    monkeypatch.setattr(fitting_module, "fit_calibration", keep)
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=1, early_stopping=True,
                          validation_fraction=0.5, **LORA).fit(X[:40], y[:40])
    np.testing.assert_allclose(captured["features"], reg.pooled_states(X[:40], "mean+last"),
                               atol=1e-6)
    mean, std = reg.predict(X[40:], return_std=True)
    np.testing.assert_array_equal(mean, reg.predict(X[40:]))
    assert std.shape == mean.shape and (std > 0).all()
    interval = reg.predict_interval(X[40:], alpha=[0.2, 0.05])
    assert interval.shape == (len(X) - 40, 2, 2)
    assert (interval[:, 1, 1] - interval[:, 0, 1] > interval[:, 1, 0] - interval[:, 0, 0]).all()
    restored = RelishRegressor.load(reg.save(tmp_path / "model"))
    np.testing.assert_array_equal(restored.predict_interval(X[40:]), reg.predict_interval(X[40:]))


def test_training_batches_group_rows_of_similar_length():
    from sklearn_relish.training import LengthGroupedBatchSampler

    # Long-tailed lengths, as prompts are: most short, a few long.
    lengths = np.random.default_rng(0).lognormal(3.5, 0.5, size=203).astype(int) + 1

    def epochs(seed, n=3, **kwargs):
        sampler = LengthGroupedBatchSampler(lengths, 8, torch.Generator().manual_seed(seed),
                                            **kwargs)
        return sampler, [list(sampler) for _ in range(n)]

    sampler, runs = epochs(0, group_size=5)
    for batches in runs:
        assert len(batches) == len(sampler)
        rows = sorted(i for batch in batches for i in batch)
        assert rows == list(range(len(lengths)))      # every row once an epoch
        assert all(0 < len(batch) <= 8 for batch in batches)
    assert runs[0] != runs[1]                         # a new order every epoch
    assert epochs(0, group_size=5)[1] == runs          # and the same for the same seed

    def tokens_run(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [order[i:i + 8] for i in range(0, len(order), 8)]
    # Grouping pads far less than random batches of the same size.
    assert tokens_run(runs[0]) < 0.8 * tokens_run(random_batches)
    # Groups of 5 batches: the batches are not one global sort by length
    # (each epoch's company of a row is random beyond its group).
    first = runs[0]
    assert first != sorted(first, key=lambda b: -max(lengths[i] for i in b))


def test_a_lora_fit_trains_on_length_grouped_batches(tiny_model_dir, task, monkeypatch):
    from sklearn_relish import lora
    from sklearn_relish.lora import LoraNet, TokenIdDataset

    ids = [[1] * n for n in (3, 9, 4, 8, 2, 7)]
    dataset = TokenIdDataset(ids, np.zeros((6, 1), dtype=np.float32))
    assert dataset.lengths == [3, 9, 4, 8, 2, 7]
    net = LoraNet(torch.nn.Linear(1, 1), batch_size=2, iterator_train__shuffle=True)
    net.generator_ = torch.Generator().manual_seed(0)
    train = net.get_iterator(dataset, training=True)
    assert isinstance(train.batch_sampler, lora.LengthGroupedBatchSampler)
    pairs = {tuple(sorted(dataset.lengths[i] for i in batch)) for batch in train.batch_sampler}
    assert pairs == {(8, 9), (4, 7), (2, 3)}          # neighbours by length
    # Prediction and validation keep the rows' order.
    valid = net.get_iterator(dataset, training=False)
    assert [i for batch in valid.batch_sampler for i in batch] == list(range(6))

    # A real fit draws its training batches from it, once an epoch.
    epochs = []

    class Recording(lora.LengthGroupedBatchSampler):
        def __iter__(self):
            epochs.append(len(self.lengths))
            return super().__iter__()

    monkeypatch.setattr(lora, "LengthGroupedBatchSampler", Recording)
    X, y = task
    RelishRegressor(backbone=tiny_model_dir, max_epochs=2, lr=3e-3, **LORA).fit(X[:40], y[:40])
    assert epochs == [40, 40]
