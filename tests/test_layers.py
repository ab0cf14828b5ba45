"""Reading several hidden layers: selection, mixing, caching, the anchor."""

import json

import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish.anchor import fit_anchor, pooled_features
from sklearn_relish.backbone import load_backbone
from sklearn_relish.cache import MEMORY_CACHE
from sklearn_relish.head import RelishHead
from sklearn_relish.layers import resolve_layers
from sklearn_relish.storage import pack, unpack

# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, latent_dim=32, n_heads=4, batch_size=16, random_state=0, cache_dir=None)
TEXTS = ["a good film", "the plot was awful", "fine", "great great movie"]


@pytest.fixture(scope="module")
def task():
    return sentiment_task(120, seed=3)


def _backbone(tiny_model_dir, **params):
    reg = RelishRegressor(backbone=tiny_model_dir, **params)
    return load_backbone(reg.get_backbone_config())


def _hidden_states(backbone, text):
    """The model's hidden states of one text, run alone (no padding)."""
    ids, _ = backbone.tokenize([text])
    with torch.inference_mode():
        output = backbone.model(input_ids=torch.tensor(ids), output_hidden_states=True)
    return output


@pytest.mark.parametrize("name, n_layers, expected", [
    ("first", 30, (1,)), ("quarter", 30, (8,)), ("middle", 30, (15,)),
    ("three_quarter", 30, (22,)), ("penultimate", 30, (29,)), ("last", 30, (30,)),
    ("last4", 30, (27, 28, 29, 30)), ("middle_half", 30, tuple(range(8, 23))),
    ("all", 6, (1, 2, 3, 4, 5, 6)), ("quarter", 6, (2,)), ("middle_half", 2, (1, 2)),
    (-1, 30, (30,)), (0, 30, (0,)), ([-1, 15, 3], 30, (3, 15, 30)),
])
def test_layer_names_and_indices_resolve_against_the_depth(name, n_layers, expected):
    assert resolve_layers(name, n_layers) == expected


@pytest.mark.parametrize("layer, message", [
    ("midle", "did you mean 'middle'"), ([], "at least one index"), ([1, 1.5], "only integers"),
    ([1, -6], "names the same layer twice"), (7, r"out of range.*\[-7, 6\]"),
    (1.5, "must be an index"),
])
def test_bad_layer_choices_say_what_to_use(layer, message):
    with pytest.raises(ValueError, match=message):
        resolve_layers(layer, 6)


def test_a_bad_layer_is_refused_by_fit_before_any_work(tiny_model_dir, task):
    X, y = task
    with pytest.raises(ValueError, match="did you mean 'middle'"):
        RelishRegressor(backbone=tiny_model_dir, layer="midle").fit(X, y)


def test_one_layer_reads_the_models_states_bit_for_bit(tiny_model_dir, empty_memory):
    """layer=-1, "last" and [-1] are one choice with one fingerprint, and a
    single layer's stored states are the model's own, rounded to float16 (as
    before several layers existed)."""
    last = _backbone(tiny_model_dir, layer=-1)
    assert _backbone(tiny_model_dir, layer="last").fingerprint == last.fingerprint
    assert _backbone(tiny_model_dir, layer=[2]).fingerprint == last.fingerprint
    first = _backbone(tiny_model_dir, layer=1)
    for text in TEXTS:
        output = _hidden_states(last, text)
        (state,), _ = last.encode([text])
        assert torch.equal(state, output.last_hidden_state[0].half())
        (state,), _ = first.encode([text])
        assert torch.equal(state, output.hidden_states[1][0].half())


def test_a_mean_mix_is_the_float32_mean_of_the_layers(tiny_model_dir):
    mixed = _backbone(tiny_model_dir, layer="all", layer_mix="mean")
    assert mixed.state_width == mixed.d_model and mixed.n_mixed == 1
    for text in TEXTS:
        hidden = _hidden_states(mixed, text).hidden_states
        expected = (hidden[1].float() + hidden[2].float()) / 2
        (state,), _ = mixed.encode([text])
        assert torch.equal(state, expected[0].half())
        # Not simply one of the layers.
        assert not torch.equal(state, hidden[2][0].half())


def test_a_learned_mix_keeps_the_layers_side_by_side(tiny_model_dir):
    learned = _backbone(tiny_model_dir, layer=[1, 2], layer_mix="learned")
    assert learned.n_mixed == 2 and learned.state_width == 2 * learned.d_model
    for text in TEXTS:
        hidden = _hidden_states(learned, text).hidden_states
        (state,), _ = learned.encode([text])
        d = learned.d_model
        assert torch.equal(state[:, :d], hidden[1][0].half())
        assert torch.equal(state[:, d:], hidden[2][0].half())


def test_each_layer_choice_has_its_own_cache_keys_and_one_shared_model(tiny_model_dir,
                                                                         tmp_path):
    choices = [dict(layer=-1), dict(layer=1), dict(layer=[1, 2]),
               dict(layer=[1, 2], layer_mix="learned")]
    backbones = [_backbone(tiny_model_dir, **c) for c in choices]
    assert len({b.fingerprint for b in backbones}) == len(choices)
    # For one layer the mix is irrelevant: no new entries.
    assert (_backbone(tiny_model_dir, layer=1, layer_mix="learned").fingerprint
            == backbones[1].fingerprint)
    # A grid search over layer holds one copy of the weights.
    assert len({id(b.model) for b in backbones}) == 1
    for c in choices:
        RelishRegressor(backbone=tiny_model_dir, cache_dir=tmp_path, **c).token_states(TEXTS)
    described = sorted((json.loads(p.read_text())["layer"], json.loads(p.read_text())["layer_mix"])
                       for p in tmp_path.glob("*/backbone.json"))
    assert described == [([1], "mean"), ([1, 2], "learned"), ([1, 2], "mean"), ([2], "mean")]


def test_int8_gives_each_layer_of_a_token_its_own_scale():
    generator = torch.Generator().manual_seed(0)
    quiet = torch.randn(5, 16, generator=generator)          # an early layer
    loud = 300 * torch.randn(5, 16, generator=generator)     # a late one
    states = torch.cat([quiet, loud], dim=1).half()
    entry = pack(states, "int8", groups=2)
    assert entry.shape == (5, 2 * (16 + 2))
    back = unpack(entry, "int8", groups=2).float()
    step = quiet.abs().amax(dim=1, keepdim=True) / 127
    assert ((back[:, :16] - states[:, :16].float()).abs() <= 0.51 * step + 1e-3).all()
    # One scale for the whole token would have wiped the quiet layer out.
    shared = unpack(pack(states, "int8"), "int8").float()
    assert (shared[:, :16] - states[:, :16].float()).abs().max() > 10 * step.max()


def test_a_learned_mix_starts_as_the_mean_and_is_trained(tiny_model_dir, task):
    head = RelishHead(d_model=8, latent_dim=16, n_heads=4, n_mixed_layers=3)
    states = torch.randn(2, 5, 24)
    expected = states.reshape(2, 5, 3, 8).mean(dim=2)
    torch.testing.assert_close(head.mix_layers(states), expected)
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, layer="all", layer_mix="learned",
                          max_epochs=8, lr=3e-3, anchor=None, **FAST).fit(X, y)
    weights = reg.net_.module_.layer_weights().detach()
    assert weights.shape == (2,) and float(weights.sum()) == pytest.approx(1.0)
    assert not torch.allclose(weights, torch.full((2,), 0.5))     # it moved
    plain = RelishRegressor(backbone=tiny_model_dir, layer="all", anchor=None, max_epochs=1,
                            **FAST).fit(X, y)
    assert reg.n_trainable_params_ == plain.n_trainable_params_ + 2


def test_the_anchor_chooses_among_the_mixed_layers():
    rng = np.random.default_rng(0)
    n, d = 300, 6
    layers = rng.normal(size=(n, 2, 3, d))           # (rows, mean/last, layer, d)
    y = layers[:, 0, 1] @ rng.normal(size=d) + 0.05 * rng.normal(size=n)
    features = np.hstack([layers[:, 0].reshape(n, -1), layers[:, 1].reshape(n, -1)])
    fit = fit_anchor(features, y, layers=(4, 8, 12))
    assert fit.pooling == ["mean of layer 8"]
    # Its coefficients read that layer's mean pool alone.
    reads = np.abs(fit.coef[0]).reshape(2, 3, d).sum(axis=-1) > 0
    assert reads.tolist() == [[False, True, False], [False, False, False]]
    np.testing.assert_allclose(fit.predict(features), fit.loo_predictions, atol=0.05)
    # Their mean is one of the candidates, and a target on it picks it.
    y = layers[:, 1].mean(axis=1) @ rng.normal(size=d) + 0.05 * rng.normal(size=n)
    assert fit_anchor(features, y, layers=(4, 8, 12)).pooling == ["last of the layers' mean"]


def test_one_layer_anchor_is_unchanged_by_the_layer_views():
    """With one layer, the choice is among mean, last and both, as before."""
    rng = np.random.default_rng(1)
    features = rng.normal(size=(200, 8))
    y = features[:, :4] @ rng.normal(size=4) + features[:, 4:] @ rng.normal(size=4)
    fit = fit_anchor(features, y)
    assert fit.pooling == ["mean+last"]


def test_cache_states_runs_the_model_once_for_a_grid_over_layers(tiny_model_dir, task,
                                                                  empty_memory):
    X, y = task
    grid = {"layer": [-1, 1, "all"]}
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=1, **FAST)
    model = _backbone(tiny_model_dir).model
    rows = []
    hook = model.register_forward_hook(
        lambda module, args, kwargs, out: rows.append(len(kwargs["input_ids"])),
        with_kwargs=True)
    try:
        assert reg.cache_states(X, layers=grid["layer"]) == len(set(X))
        assert sum(rows) == len(set(X))
        # Each choice's states are those its own extraction gives.
        cached = {str(layer): RelishRegressor(backbone=tiny_model_dir, layer=layer,
                                              cache_dir=None).token_states(X[:5])
                  for layer in grid["layer"]}
        assert sum(rows) == len(set(X))
        empty_memory.clear()
        for layer in grid["layer"]:
            fresh = RelishRegressor(backbone=tiny_model_dir, layer=layer,
                                    cache_dir=None).token_states(X[:5])
            for a, b in zip(cached[str(layer)], fresh):
                assert torch.equal(a, b)
        rows.clear()
        empty_memory.clear()
        reg.cache_states(X, layers=grid["layer"])
        search = GridSearchCV(reg, grid, cv=3).fit(X, y)
        assert sum(rows) == len(set(X))          # refilled once, then searched for free
        assert search.best_params_["layer"] in grid["layer"]
        assert reg.cache_states(X, layers=grid["layer"]) == 0
    finally:
        hook.remove()


def test_several_layers_pool_wider_and_refuse_a_warm_start_on_other_layers(tiny_model_dir,
                                                                           task):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, layer=[1, 2], layer_mix="learned",
                          max_epochs=2, **FAST).fit(X, y)
    assert pooled_features(reg.token_states(X[:3])).shape == (3, 4 * reg.d_model_)
    reg.set_params(warm_start=True, layer=[1, 2], layer_mix="mean")
    with pytest.raises(ValueError, match="layer or layer_mix"):
        reg.fit(X, y)


def test_memory_cache_holds_each_choice(tiny_model_dir, empty_memory):
    RelishRegressor(backbone=tiny_model_dir, layer=1).token_states(TEXTS)
    n = len(MEMORY_CACHE)
    RelishRegressor(backbone=tiny_model_dir, layer=[1, 2]).token_states(TEXTS)
    assert len(MEMORY_CACHE) == n + len(TEXTS)
