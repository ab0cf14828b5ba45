"""The default's safeguards: the ridge anchor, early stopping and shrinkage.

A default must not lose to a ridge on the head's own states when the target
is weak. These tests pin down each piece on the tiny backbone: the closed-form
ridge and its leave-one-out predictions, the head's fixed anchor and scale,
the held-out selection of epochs and of the shrinkage, and that the whole is
repeatable, persistent and still encodes each text once in a grid search.
"""


import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data_utils import sentiment_task
from sklearn_relish import RelishHead, RelishRegressor
from sklearn_relish.anchor import ALPHAS, fit_anchor, fit_ridge_loo, pool_states, pooled_features
from sklearn_relish.backbone import load_backbone
from sklearn_relish.cache import MEMORY_CACHE, cached_states

FAST = dict(latent_dim=32, n_heads=4, batch_size=16, random_state=0)
PAPER = dict(anchor=None, early_stopping=False, shrinkage=None, cv=None)


@pytest.fixture(scope="module")
def task():
    return sentiment_task(400, seed=1)


@pytest.fixture(scope="module")
def noise(task):
    """The same texts with a target that no text can predict."""
    X, _ = task
    return X, np.random.default_rng(7).normal(size=len(X))


def _nrmse(y, pred):
    return float(np.sqrt(np.mean((y - pred) ** 2)) / np.std(y))


# -- the closed-form ridge -------------------------------------------------------


@pytest.mark.parametrize("n, p", [(90, 12), (25, 40)])
def test_ridge_matches_scikit_learn_and_brute_force_leave_one_out(n, p):
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, p)) * rng.uniform(0.1, 10, p) + 3.0
    Y = np.column_stack([X[:, 0] - 2 * X[:, 1] + rng.normal(size=n) * 2,
                         rng.normal(size=n)])  # a signal and pure noise
    fit = fit_ridge_loo(X, Y)
    for j in range(2):
        reference = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(X, Y[:, j])
        assert fit.alpha[j] == pytest.approx(reference[-1].alpha_)
        np.testing.assert_allclose(fit.predict(X)[:, j], reference.predict(X), atol=1e-9)
    # The noise target gets a larger penalty than the signal: chosen per target.
    assert fit.alpha[1] > fit.alpha[0]
    Xs = StandardScaler().fit_transform(X)
    for j in range(2):
        loo = [Ridge(alpha=fit.alpha[j]).fit(np.delete(Xs, i, 0), np.delete(Y[:, j], i))
               .predict(Xs[i:i + 1])[0] for i in range(n)]
        np.testing.assert_allclose(fit.loo_predictions[:, j], loo, atol=1e-9)


def test_ridge_of_one_row_is_its_mean():
    fit = fit_ridge_loo(np.ones((1, 3)), [4.0])
    np.testing.assert_array_equal(fit.predict(np.zeros((2, 3))), [[4.0], [4.0]])


def test_anchor_reads_the_pooling_with_the_lowest_leave_one_out_error():
    rng = np.random.default_rng(0)
    # d_model = 30: the mean's 30 columns, then the last token's 30.
    features = rng.normal(size=(80, 2 * 30))
    noise = rng.normal(size=80) * 0.5
    Y = np.column_stack([features[:, 1] + noise,                     # the mean's
                         features[:, 37] + noise,                    # the last token's
                         features[:, 0] + features[:, 59] + noise])  # both
    fit = fit_anchor(features, Y)
    assert fit.pooling == ["mean", "last", "mean+last"]
    for j, name in enumerate(fit.pooling):
        alone = fit_ridge_loo(features[:, {"mean": slice(0, 30), "last": slice(30, 60),
                                           "mean+last": slice(0, 60)}[name]], Y[:, j])
        assert fit.loo_mse[j] == pytest.approx(alone.loo_mse[0])
    assert not fit.coef[0, 30:].any() and not fit.coef[1, :30].any()


def test_shrinkage_is_the_clipped_least_squares_factor():
    from sklearn_relish.anchor import fit_shrinkage

    rng = np.random.default_rng(0)
    head = rng.normal(size=(500, 3))
    residual = np.column_stack([0.3 * head[:, 0] + 0.1 * rng.normal(size=500),
                                rng.normal(size=500),          # the head is useless
                                2.0 * head[:, 2]])             # under-confident
    factor = fit_shrinkage(head, residual)
    assert factor[0] == pytest.approx(0.3, abs=0.02)
    assert factor[1] < 0.1
    assert factor[2] == 1.0
    assert fit_shrinkage(np.zeros((4, 1)), np.ones((4, 1))) == 0.0


def test_pooled_features_match_the_heads_pooling_of_a_padded_batch():
    rng = torch.Generator().manual_seed(0)
    states = [torch.randn(n, 6, generator=rng) for n in (3, 7, 1)]
    padded = torch.zeros(3, 7, 6)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for i, s in enumerate(states):
        padded[i, :len(s)], mask[i, :len(s)] = s, True
    np.testing.assert_allclose(pool_states(padded, mask).numpy(), pooled_features(states),
                               atol=1e-6)


# -- the head's fixed anchor and scale -------------------------------------------


def test_head_adds_its_scaled_output_to_the_anchor():
    torch.manual_seed(0)
    head = RelishHead(d_model=6, latent_dim=16, n_heads=4, n_outputs=2).eval()
    states, mask = torch.randn(4, 5, 6), torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    plain = head(states, mask)
    weight, bias = torch.randn(2, 12, dtype=torch.float64), torch.tensor([1.0, -2.0])
    head.set_anchor(weight, bias, torch.tensor([0.5, 0.0]))
    expected = (pool_states(states, mask) @ weight.T + bias).float() + plain * torch.tensor([0.5, 0.0])
    torch.testing.assert_close(head(states, mask), expected)
    # They are buffers: fixed, saved, not counted as trainable.
    assert {"anchor_weight", "anchor_bias", "output_scale"} <= set(head.state_dict())
    assert all(p.requires_grad for p in head.parameters())
    with pytest.raises(ValueError, match="shape"):
        head.set_anchor(weight=torch.zeros(3))


# -- the estimator ---------------------------------------------------------------


def _states(reg, X):
    backbone = load_backbone(reg.backbone_config_)
    return cached_states(backbone, [reg.prompt_template_.format(t) for t in X])[0]


def test_zero_shrinkage_predicts_with_the_ridge_on_pooled_states(tiny_model_dir, task):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=2, shrinkage=0.0,
                          **FAST).fit(X[:300], y[:300])
    features = pooled_features(_states(reg, X))
    ridge = fit_anchor(features[:300], (y[:300] - y[:300].mean()) / y[:300].std())
    expected = ridge.predict(features[300:]).ravel() * y[:300].std() + y[:300].mean()
    np.testing.assert_allclose(reg.predict(X[300:]), expected, atol=1e-4)
    np.testing.assert_array_equal(reg.shrinkage_, [0.0])
    assert reg.anchor_alpha_ == pytest.approx(ridge.alpha)
    assert reg.anchor_pooling_ == ridge.pooling
    # Every refinement step predicts the same when the head is switched off.
    for stage in reg.staged_predict(X[300:310]):
        np.testing.assert_allclose(stage, expected[:10], atol=1e-4)


def test_early_stopping_auto_holds_rows_out_from_20_held_out_rows(tiny_model_dir, task):
    X, y = task
    # ceil(0.1 * 190) = 19 rows would be held out: too few; 191 gives 20.
    # cv=None: the hold-out itself (the default cross-fits at these sizes).
    small = RelishRegressor(backbone=tiny_model_dir, max_epochs=2, cv=None,
                            **FAST).fit(X[:190], y[:190])
    assert small.validation_loss_curve_ is None
    np.testing.assert_array_equal(small.shrinkage_, [1.0])
    large = RelishRegressor(backbone=tiny_model_dir, max_epochs=2, cv=None,
                            **FAST).fit(X[:191], y[:191])
    assert len(large.validation_loss_curve_) == large.n_iter_ == 2
    assert 0.0 <= large.shrinkage_[0] <= 1.0


def test_early_stopping_keeps_the_best_epoch(tiny_model_dir, task):
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=40, n_iter_no_change=2,
                          cv=None, **FAST).fit(X[:300], y[:300])
    scores = reg.validation_loss_curve_
    best = int(np.argmin(scores))
    # It stops n_iter_no_change epochs after the best one (or at max_epochs),
    # and keeps the best epoch's weights.
    assert reg.n_iter_ == min(best + 1 + 2, 40)
    assert reg.best_validation_loss_ == scores[best]


def test_the_default_shrinks_a_head_that_does_not_generalise(tiny_model_dir, noise):
    """On a target that no text predicts, the predictions stay near the mean
    (the ridge's penalty is large, the head stops early and is shrunk)."""
    X, y = noise
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=10, lr=3e-3,
                          **FAST).fit(X[:300], y[:300])
    pred = reg.predict(X[300:])
    # Measured against predicting the training mean (NRMSE 1.006 here), not
    # a fixed number: over random_state 0-9 the default scored 0.978-1.021
    # on one CPU (the former bound, 1.02, failed random_state=2), and its
    # predictions spread 0.05-0.23 of y's deviation. A head that fitted the
    # noise would spread about 1 and score about 1.4; the tiny backbone's
    # states let even an unguarded head fit it only mildly (spread 0.39
    # after 40 epochs), so the shrinkage itself is pinned by the exact tests
    # of fit_shrinkage and stack_weights above and below.
    mean = np.full_like(y[300:], y[:300].mean())
    assert _nrmse(y[300:], pred) < _nrmse(y[300:], mean) + 0.05
    assert pred.std() < 0.4 * y[:300].std()


def test_the_default_still_learns_a_target_with_signal(tiny_model_dir, task):
    from sklearn.metrics import r2_score

    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=10, lr=3e-3,
                          **FAST).fit(X[:300], y[:300])
    assert r2_score(y[300:], reg.predict(X[300:])) > 0.8


def test_multi_output_gets_a_penalty_and_a_shrinkage_per_target(tiny_model_dir, task, noise):
    X, y = task
    Y = np.column_stack([y, noise[1]])
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=15, **FAST).fit(X[:300], Y[:300])
    assert reg.predict(X[300:]).shape == (100, 2)
    assert reg.shrinkage_.shape == reg.anchor_alpha_.shape == (2,)
    assert reg.anchor_alpha_[1] > reg.anchor_alpha_[0]


def test_the_default_is_repeatable(tiny_model_dir, task):
    X, y = task
    # Enough training for a head that the gate keeps (b > 0),
    # so that the predictions depend on the head and its seed.
    params = dict(backbone=tiny_model_dir, max_epochs=10, lr=3e-3)
    first = RelishRegressor(**params, **FAST).fit(X[:300], y[:300])
    second = RelishRegressor(**params, **FAST).fit(X[:300], y[:300])
    assert first.shrinkage_[0] > 0
    expected = first.predict(X[300:])
    np.testing.assert_array_equal(second.predict(X[300:]), expected)
    np.testing.assert_array_equal(second.validation_loss_curve_, first.validation_loss_curve_)
    other = RelishRegressor(**params, **{**FAST, "random_state": 1}).fit(X[:300], y[:300])
    assert not np.allclose(other.predict(X[300:]), expected)


def test_grid_search_with_the_default_encodes_each_text_once(tiny_model_dir, task):
    X, y = task
    MEMORY_CACHE.clear()
    reg = RelishRegressor(backbone=tiny_model_dir, max_epochs=2, **FAST)
    backbone = load_backbone(reg.get_backbone_config())
    before = backbone.n_texts_encoded
    search = GridSearchCV(reg, {"n_iterations": [1, 2], "latent_dim": [16, 32]}, cv=2)
    search.fit(X[:400], y[:400])
    assert backbone.n_texts_encoded - before == len(set(X[:400]))
    # Every fit cross-fitted its head (200 and 400 rows: the default's folds),
    # and still read the cache alone.
    assert search.best_estimator_.n_folds_ == 5


def test_stack_weighs_the_ridge_and_the_head_on_held_out_rows(tiny_model_dir, task, tmp_path):
    """anchor="stack": the head learns the target itself and the two
    predictions are added with non-negative weights fitted on the held-out
    rows; with the head's weight set to zero the model is the ridge, scaled."""
    X, y = task
    reg = RelishRegressor(backbone=tiny_model_dir, anchor="stack", max_epochs=4,
                          **FAST).fit(X[:300], y[:300])
    assert reg.anchor_scale_.shape == reg.shrinkage_.shape == (1,)
    assert reg.anchor_scale_[0] >= 0 and reg.shrinkage_[0] >= 0
    features = pooled_features(_states(reg, X))
    z = (y[:300] - y[:300].mean()) / y[:300].std()
    ridge = fit_anchor(features[:300], z)
    head = reg.net_.module_
    head.set_anchor(scale=np.zeros(1))
    expected = (reg.anchor_scale_[0] * ridge.predict(features[300:]).ravel()
                * y[:300].std() + y[:300].mean())
    np.testing.assert_allclose(reg.predict(X[300:]), expected, atol=1e-4)


def test_stack_keeps_the_ridge_unless_the_head_beats_it_by_one_standard_error():
    """The head's weight b is positive only when the held-out squared error
    falls, out of fold, by more than one standard error of that gain; a gain
    carried by a few rows (heavy-tailed departures from the ridge) is not
    enough, even where the shrunk least-squares factor alone would keep some
    of it."""
    from sklearn_relish.anchor import crossfit_gain, fit_shrinkage, stack_weights

    rng = np.random.default_rng(0)
    gated = kept = 0
    for _ in range(300):
        g = rng.normal(size=(40, 1))
        d = rng.standard_t(2, size=(40, 1))
        r = 0.3 * d + rng.normal(size=(40, 1))
        anchor_weight, b = stack_weights(g, g + d, g + r)
        shrunk = fit_shrinkage(d, r)
        gain = crossfit_gain(d, r)
        significant = gain.mean() > gain.std(ddof=1) / np.sqrt(40)
        np.testing.assert_allclose(b, shrunk if significant else 0.0)
        np.testing.assert_allclose(anchor_weight + b, 1.0)
        gated += bool(shrunk[0] > 0 and not significant)
        kept += bool(b[0] > 0)
    assert gated > 10 and kept > 10
    # A clear gain is kept whole.
    g = rng.normal(size=(200, 1))
    h = rng.normal(size=(200, 1))
    np.testing.assert_allclose(stack_weights(g, h, 0.2 * g + 0.8 * h + 0.01 * h ** 2)[1],
                               0.8, atol=0.02)


def test_stack_gate_measures_the_gain_out_of_fold():
    """A head whose departure from the ridge is pure noise still fits a
    positive b on the held-out rows, and in-sample that b lowers their error
    by more than one standard error about one time in eight. Measured on
    folds that b was not fitted on, the gate lets such a head in far less
    often, while a head with a real, modest gain still gets in mostly."""
    from sklearn_relish.anchor import fit_shrinkage, stack_weights

    rng = np.random.default_rng(1)
    in_sample = {0.0: 0, 0.4: 0}
    passed = {0.0: 0, 0.4: 0}
    for _ in range(300):
        for effect in passed:
            g, d = rng.normal(size=(2, 100, 1))
            r = effect * d + rng.normal(size=(100, 1))
            b = fit_shrinkage(d, r)
            gain = r ** 2 - (r - b * d) ** 2
            in_sample[effect] += bool(b[0] > 0 and gain.mean() > gain.std(ddof=1) / 10)
            passed[effect] += bool(stack_weights(g, g + d, g + r)[1][0] > 0)
    assert in_sample[0.0] > 25          # the optimism of an in-sample gate
    assert passed[0.0] < 10             # < 3.3% of null heads get in
    assert passed[0.4] > 200            # a real gain is kept
