"""RelishRegressor end to end on the tiny backbone, and the scikit-learn contract."""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, KFold, RandomizedSearchCV, cross_val_score
from sklearn.pipeline import FunctionTransformer, make_pipeline

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish.backbone import load_backbone
from sklearn_relish.fitting import head_net

# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, latent_dim=32, n_heads=4, batch_size=16, random_state=0)


@pytest.fixture(scope="module")
def task():
    return sentiment_task(240, seed=0)


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, task):
    X, y = task
    return RelishRegressor(backbone=tiny_model_dir, max_epochs=25, **FAST).fit(X[:180], y[:180])


def test_the_head_learns(fitted, task):
    X, y = task
    pred = fitted.predict(X[180:])
    baseline = np.full_like(y[180:], y[:180].mean())
    assert r2_score(y[180:], pred) > 0.8 > r2_score(y[180:], baseline)
    # The first epoch's loss depends on the draw (0.025 to 0.18 over
    # random_state 0-9 on one CPU), so the bound leaves room: the last epoch
    # ended at 0.07-0.36 of it, and 0.25 failed for 2 of those 10 seeds.
    assert fitted.loss_curve_[-1] < 0.5 * fitted.loss_curve_[0]


def test_fitted_attributes(fitted, tiny_model_dir):
    assert fitted.n_iter_ == 25 == len(fitted.loss_curve_)
    assert fitted.d_model_ == 32
    assert fitted.n_outputs_ == 1
    assert fitted.n_trainable_params_ == sum(p.numel() for p in fitted.net_.module_.parameters())
    assert fitted.validation_loss_curve_ is None
    assert fitted.prompt_template_.startswith("Input:\n{0}")


def test_prediction_does_not_depend_on_batch_companions(fitted):
    """Masking: a short text's prediction is the same next to much longer ones."""
    short = "good movie"
    alone = fitted.predict([short])
    long_ones = [" ".join(["the awful plot"] * 30), " ".join(["a great film"] * 40)]
    with pytest.warns(UserWarning, match="truncated"):
        together = fitted.predict(long_ones + [short])
    np.testing.assert_allclose(together[-1], alone[0], atol=1e-5)


def test_predictions_independent_of_order_and_batch_size(fitted, task, empty_memory):
    import copy

    X, _ = task
    X = X[180:]
    reference = fitted.predict(X)
    perm = np.random.default_rng(1).permutation(len(X))
    np.testing.assert_allclose(fitted.predict([X[i] for i in perm]), reference[perm], atol=1e-5)
    # The states encoded again in batches of 5, the head run in batches of 3.
    other = copy.copy(fitted).set_params(encode_batch_size=5)
    other.net_ = copy.deepcopy(fitted.net_).set_params(batch_size=3)
    model = load_backbone(fitted.backbone_config_).model
    backbone_batches, head_batches = [], []
    hooks = [model.register_forward_hook(
                 lambda m, a, kw, out: backbone_batches.append(len(kw["input_ids"])),
                 with_kwargs=True),
             other.net_.module_.register_forward_hook(
                 lambda m, args, out: head_batches.append(len(out)))]
    empty_memory.clear()
    try:
        np.testing.assert_allclose(other.predict(X), reference, atol=1e-4)
    finally:
        for hook in hooks:
            hook.remove()
    assert max(backbone_batches) == 5 and max(head_batches) == 3


def test_same_random_state_same_predictions(tiny_model_dir, task):
    X, y = task
    a = RelishRegressor(backbone=tiny_model_dir, max_epochs=2, **FAST).fit(X[:60], y[:60])
    b = RelishRegressor(backbone=tiny_model_dir, max_epochs=2, **FAST).fit(X[:60], y[:60])
    np.testing.assert_array_equal(a.predict(X[60:90]), b.predict(X[60:90]))
    c = RelishRegressor(backbone=tiny_model_dir, max_epochs=2, **{**FAST, "random_state": 1})
    assert not np.allclose(c.fit(X[:60], y[:60]).predict(X[60:90]), a.predict(X[60:90]))


def test_clone_shares_the_loaded_backbone(tiny_model_dir, fitted, task):
    config = fitted.backbone_config_
    before = load_backbone(config)
    twin = clone(fitted)
    assert not hasattr(twin, "net_")
    assert twin.get_params() == fitted.get_params()
    assert load_backbone(config) is before
    # Fitting the clone reuses the loaded backbone and the cached states.
    X, y = task
    fitted.token_states(X[:180])            # cached (another test may have emptied the cache)
    encoded = before.n_texts_encoded
    twin.fit(X[:180], y[:180])
    assert load_backbone(twin.backbone_config_) is before
    assert before.n_texts_encoded == encoded
    # The same cached states and seed: the same predictions.
    np.testing.assert_array_equal(twin.predict(X[:5]),
                                  clone(fitted).fit(X[:180], y[:180]).predict(X[:5]))


def test_init_only_stores(tiny_model_dir):
    reg = RelishRegressor(backbone="no-such/model", latent_dim=-5)
    assert reg.backbone == "no-such/model" and reg.latent_dim == -5
    assert not [k for k in vars(reg) if k.endswith("_")]


def test_pipeline_grid_search_and_cross_val_score(tiny_model_dir, task):
    X, y = task
    X, y = X[:80], y[:80]
    search = GridSearchCV(
        RelishRegressor(backbone=tiny_model_dir, max_epochs=2, **FAST),
        {"n_iterations": [1, 2], "latent_dim": [16, 32]},
        cv=2,
    ).fit(X, y)
    assert set(search.cv_results_["param_n_iterations"]) == {1, 2}
    refit = RelishRegressor(backbone=tiny_model_dir, max_epochs=2,
                            **{**FAST, **search.best_params_}).fit(X, y)
    np.testing.assert_array_equal(search.predict(X[:3]), refit.predict(X[:3]))

    pipe = make_pipeline(FunctionTransformer(lambda s: [t.lower() for t in s]),
                         RelishRegressor(backbone=tiny_model_dir, max_epochs=2, **FAST))
    scores = cross_val_score(pipe, X, y, cv=KFold(3))
    # The lower-casing step ran: the texts are lower case already, so each
    # fold scores as the bare regressor does.
    bare = cross_val_score(RelishRegressor(backbone=tiny_model_dir, max_epochs=2, **FAST),
                           X, y, cv=KFold(3))
    np.testing.assert_allclose(scores, bare)

    rand = RandomizedSearchCV(RelishRegressor(backbone=tiny_model_dir, max_epochs=1, **FAST),
                              {"lr": [1e-3, 3e-3], "share_weights": [True, False]},
                              n_iter=2, cv=2, random_state=0).fit(X, y)
    assert set(rand.best_params_) == {"lr", "share_weights"}
    assert len(rand.cv_results_["params"]) == 2
    assert np.isfinite(rand.cv_results_["mean_test_score"]).all()


def test_transformed_target_regressor(tiny_model_dir, task):
    X, y = task
    ttr = TransformedTargetRegressor(
        RelishRegressor(backbone=tiny_model_dir, max_epochs=1, **FAST),
        func=np.arcsinh, inverse_func=np.sinh).fit(X[:40], y[:40])
    inner = RelishRegressor(backbone=tiny_model_dir, max_epochs=1, **FAST).fit(
        X[:40], np.arcsinh(y[:40]))
    np.testing.assert_allclose(ttr.predict(X[40:45]), np.sinh(inner.predict(X[40:45])),
                               rtol=1e-6)


def test_text_pairs_array_and_dataframe(tiny_model_dir):
    a = ["a good film", "the bad plot", "great", "awful movie"] * 5
    b = ["a great film", "the awful plot", "good", "fine movie"] * 5
    y = np.arange(20, dtype=float)
    pairs = np.column_stack([a, b])
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=1,
                          prompt_template="A: {0}\nB: {1}\nSimilarity:", **FAST)
    assert reg.fit(pairs, y).predict(pairs[:4]).shape == (4,)
    assert reg.fit(list(zip(a, b)), y).n_features_in_ == 2
    frame = pd.DataFrame({"source": a, "target": b})
    named = RelishRegressor(backbone=tiny_model_dir, max_epochs=1,
                            prompt_template="{source} => {target}", **FAST).fit(frame, y)
    np.testing.assert_array_equal(named.feature_names_in_, ["source", "target"])
    # Columns are matched by name at predict time, whatever their order.
    np.testing.assert_allclose(named.predict(frame[["target", "source"]]), named.predict(frame))


def test_default_template_labels_dataframe_columns(tiny_model_dir):
    frame = pd.DataFrame({"title": ["a", "b", "c"], "body": ["x", "y", "z"]})
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=1, **FAST).fit(frame, [1.0, 2.0, 3.0])
    assert reg.prompt_template_ == "Input:\ntitle: {0}\nbody: {1}\n\nPredict a score:"


def test_multi_output_targets(tiny_model_dir, task):
    X, y = task
    Y = np.column_stack([y, -2 * y + 1])
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=2, **FAST).fit(X[:50], Y[:50])
    assert reg.predict(X[:5]).shape == (5, 2)
    assert reg.net_.module_.regressor.out_features == 2


def test_column_vector_y_gives_2d_predictions(tiny_model_dir, task):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=1, **FAST).fit(X[:30], y[:30, None])
    assert reg.predict(X[:4]).shape == (4, 1)


def test_early_stopping(tiny_model_dir, task):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=200, early_stopping=True,
                          n_iter_no_change=2, tol=10.0, **FAST).fit(X[:60], y[:60])
    # With an absurd tolerance no epoch counts as an improvement.
    assert reg.n_iter_ == 3
    assert len(reg.validation_loss_curve_) == 3
    assert reg.best_validation_loss_ == min(reg.validation_loss_curve_)


def test_standardize_states_uses_training_token_statistics(tiny_model_dir, task, tmp_path):
    import torch

    from sklearn_relish.cache import cached_states

    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, standardize_states=True, max_epochs=3,
                          **FAST).fit(X[:100], y[:100])
    head = reg.net_.module_
    backbone = load_backbone(reg.backbone_config_)
    states, _ = cached_states(backbone, [reg.prompt_template_.format(t) for t in X[:100]])
    tokens = torch.cat([s.float() for s in states])
    # The head lives where it trained (CUDA when there is one); the cache on the CPU.
    torch.testing.assert_close(head.state_mean.cpu(), tokens.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(head.state_std.cpu(), tokens.std(0, unbiased=False),
                               atol=1e-4, rtol=1e-4)
    # Fixed statistics, not trained: the parameter count is the paper's.
    plain = RelishRegressor(backbone=tiny_model_dir, standardize_states=False, max_epochs=3,
                            **FAST).fit(X[:100], y[:100])
    assert reg.n_trainable_params_ == plain.n_trainable_params_
    assert torch.all(plain.net_.module_.state_mean == 0)
    assert not np.allclose(reg.predict(X[100:120]), plain.predict(X[100:120]))
    # The statistics travel with both persistence formats.
    reg.save(tmp_path / "model")
    np.testing.assert_array_equal(RelishRegressor.load(tmp_path / "model").predict(X[100:120]),
                                  reg.predict(X[100:120]))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(reg)).predict(X[100:120]),
                                  reg.predict(X[100:120]))


def test_staged_predict_ends_with_predict(fitted, task):
    X, _ = task
    stages = list(fitted.staged_predict(X[:7]))
    assert len(stages) == fitted.n_iterations
    np.testing.assert_allclose(stages[-1], fitted.predict(X[:7]), atol=1e-5)


def test_pickle_holds_no_backbone(fitted):
    """No object of the backbone (model, tokenizer, Backbone wrapper) is in
    the pickle: the names of every class it would rebuild say so."""
    import pickletools

    blob = pickle.dumps(fitted)
    names = {str(arg) for op, arg, _ in pickletools.genops(blob)
             if op.name in ("GLOBAL", "SHORT_BINUNICODE", "BINUNICODE", "UNICODE")}
    assert not [n for n in names if n.startswith(("transformers", "tokenizers"))]
    assert "Backbone" not in names and "LlamaModel" not in names
    assert "RelishHead" in names      # the scan does see the classes that are there
    # Nor its weights as bare tensors (a state_dict has no backbone class):
    # the pickled bytes are the head's tensors, plus torch's framing of each
    # (about 450 bytes here), a slack smaller than the tiny backbone itself.
    state = fitted.net_.module_.state_dict()
    head_bytes = sum(t.numel() * t.element_size() for t in state.values())
    payload = sum(len(arg) for op, arg, _ in pickletools.genops(blob)
                  if op.name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "BYTEARRAY8"))
    slack = 1024 * len(state)
    assert head_bytes <= payload < head_bytes + slack
    backbone = load_backbone(fitted.backbone_config_).model
    assert sum(t.numel() * t.element_size() for t in backbone.state_dict().values()) > slack


def test_tags_declare_string_input():
    tags = RelishRegressor().__sklearn_tags__()
    assert tags.input_tags.string and not tags.input_tags.two_d_array
    assert tags.estimator_type == "regressor"


def test_load_warns_when_backbone_changed(tiny_model_dir, task, tmp_path):
    """The backbone directory was rewritten after the head was trained."""
    import os
    import shutil

    from sklearn_relish.backbone import clear_backbones

    X, y = task
    backbone = shutil.copytree(tiny_model_dir, tmp_path / "backbone")
    reg = RelishRegressor(backbone=backbone, max_epochs=1, **FAST).fit(X[:40], y[:40])
    path = reg.save(tmp_path / "model")
    weights = next(backbone.glob("*.safetensors"))
    os.utime(weights, (1e9, 1e9))
    clear_backbones()
    restored = RelishRegressor.load(path)
    with pytest.warns(UserWarning, match="differs from the one this regressor was trained on"):
        restored.predict(X[:2])


def test_load_rejects_what_is_not_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved sklearn-relish model"):
        RelishRegressor.load(tmp_path)


def test_predict_streams_large_inputs_in_chunks(fitted, task, monkeypatch):
    import sklearn_relish.estimator as estimator_module

    X, _ = task
    whole = fitted.predict(X)
    whole_stages = list(fitted.staged_predict(X))
    seen = []
    token_states = fitted._token_states

    def spy(prompts, config, source):
        seen.append(len(prompts))
        assert len(source[0]) == len(prompts)  # each chunk's own text fields
        return token_states(prompts, config, source)

    trims = []
    monkeypatch.setattr(estimator_module, "_PREDICT_CHUNK", 50)
    monkeypatch.setattr(fitted, "_token_states", spy)
    # Freed heap memory goes back to the OS after every chunk: without it,
    # RSS grew by 1.7 GB over 100,000 predicted texts (benchmarks/studies/memory.py).
    monkeypatch.setattr(estimator_module, "release_freed_memory",
                        lambda: trims.append(len(seen)))
    np.testing.assert_allclose(fitted.predict(X), whole, atol=1e-6)
    assert seen == [50, 50, 50, 50, 40]
    assert trims == [1, 2, 3, 4, 5]
    for a, b in zip(fitted.staged_predict(X), whole_stages):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_lr_schedule_sets_the_learning_rate_of_each_epoch(schedule):
    # The estimator's net, trained on random token states (the fitted
    # estimator trims its net's history, so the net is driven here).
    import torch

    from sklearn_relish.training import TokenStateDataset

    model = RelishRegressor(max_epochs=4, lr=1e-3, lr_schedule=schedule, **FAST)
    net = head_net(model, d_model=8, n_outputs=1, device="cpu")
    rng = torch.Generator().manual_seed(0)
    states = [torch.randn(int(n), 8, generator=rng) for n in torch.randint(1, 6, (32,))]
    seen = []
    net.set_params(callbacks__print_log=None)
    net.initialize()
    step = net.train_step

    def spy(batch, **kwargs):
        seen.append(net.optimizer_.param_groups[0]["lr"])
        return step(batch, **kwargs)

    net.train_step = spy
    net.partial_fit(TokenStateDataset(states, np.zeros((32, 1))), y=None)
    per_epoch = seen[::2]  # 32 rows / batch 16 = 2 steps per epoch
    expected = ([1e-3] * 4 if schedule == "constant" else
                [1e-3 * (1 + np.cos(np.pi * e / 4)) / 2 for e in range(4)])
    assert seen[1::2] == per_epoch
    np.testing.assert_allclose(per_epoch, expected, rtol=1e-6)


@pytest.mark.parametrize("max_grad_norm", [None, 0.01])
def test_max_grad_norm_clips_every_step(max_grad_norm):
    import torch

    from sklearn_relish.training import TokenStateDataset

    model = RelishRegressor(max_epochs=2, max_grad_norm=max_grad_norm, **FAST)
    net = head_net(model, d_model=8, n_outputs=1, device="cpu")
    net.set_params(callbacks__print_log=None)
    net.initialize()
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads])).item())

    net.optimizer_.register_step_post_hook(record)  # skorch computes the gradient in step()
    rng = torch.Generator().manual_seed(0)
    states = [torch.randn(4, 8, generator=rng) for _ in range(32)]
    y = np.random.default_rng(0).normal(size=(32, 1)) * 10
    net.partial_fit(TokenStateDataset(states, y), y=None)
    assert len(norms) == 4
    if max_grad_norm is None:
        assert max(norms) > 0.1
    else:
        assert max(norms) <= max_grad_norm * (1 + 1e-4)


def test_lr_schedule_is_validated(tiny_model_dir, task):
    X, y = task
    with pytest.raises(ValueError, match="lr_schedule"):
        RelishRegressor(backbone=tiny_model_dir, lr_schedule="linear").fit(X[:10], y[:10])
