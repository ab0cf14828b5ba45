"""Tabular workflows: any column type in a prompt, the transformer face,
sample weights, scikit-learn's column contract and warm starts.

All on the tiny backbone, through the same loading path as a real model.
"""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn
import torch
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import KFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data_utils import sentiment_task
from sklearn_relish import RelishRegressor
from sklearn_relish.inputs import check_fields, render_prompts, validate_table

# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, max_epochs=2, latent_dim=16, n_heads=2, batch_size=8, random_state=0)


def make(model_dir, **params):
    return RelishRegressor(backbone=model_dir, **{**FAST, **params})


@pytest.fixture(scope="module")
def table():
    """A small table: text, a price, a flag, a date, a category and the target."""
    texts, y = sentiment_task(24, seed=3)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "review": texts,
        "price": rng.uniform(1, 100, size=24).round(3),
        "in_stock": rng.integers(0, 2, size=24).astype(bool),
        "day": pd.date_range("2024-01-01", periods=24, freq="D"),
        "brand": pd.Categorical(rng.choice(["acme", "zenith"], size=24)),
    })
    return frame, y


TEMPLATE = ("Review: {review}\nPrice: {price:.2f}\nIn stock: {in_stock}\n"
            "Date: {day:%Y-%m-%d}\nBrand: {brand}\nScore:")


# -- any column type in a prompt ----------------------------------------------

def test_mixed_columns_render_with_format_specs(table):
    frame, _ = table
    values, columns = validate_table(frame)
    prompts = render_prompts(check_fields(values, columns), TEMPLATE, columns)
    row = frame.iloc[0]
    assert prompts[0] == (f"Review: {row.review}\nPrice: {row.price:.2f}\n"
                          f"In stock: {row.in_stock}\nDate: {row.day:%Y-%m-%d}\n"
                          f"Brand: {row.brand}\nScore:")


def test_mixed_columns_fit_predict_and_ignore_unused_columns(tiny_model_dir, table):
    frame, y = table
    reg = make(tiny_model_dir, prompt_template=TEMPLATE).fit(frame, y)
    pred = reg.predict(frame)
    # Exactly the regressor fitted on the prompts written out as text.
    values, columns = validate_table(frame)
    written = render_prompts(check_fields(values, columns), TEMPLATE, columns)
    np.testing.assert_array_equal(make(tiny_model_dir, prompt_template="{0}")
                                  .fit(written, y).predict(written), pred)
    # A column the template does not read: ignored in fit and predict alike,
    # whatever it holds (here the target, left in by mistake, and junk).
    with_extra = frame.assign(target=y, junk=[{"x": 1}] * 24)
    np.testing.assert_allclose(make(tiny_model_dir, prompt_template=TEMPLATE)
                               .fit(with_extra, y).predict(frame), pred, rtol=1e-5)
    np.testing.assert_allclose(reg.predict(with_extra), pred)
    np.testing.assert_allclose(reg.predict(with_extra[with_extra.columns[::-1]]), pred)
    assert reg.n_features_in_ == 5
    np.testing.assert_array_equal(reg.feature_names_in_, frame.columns)


def test_default_template_writes_column_value_lines(tiny_model_dir, table):
    frame, y = table
    reg = make(tiny_model_dir).fit(frame[["review", "price"]], y)
    assert reg.prompt_template_ == "Input:\nreview: {0}\nprice: {1}\n\nPredict a score:"
    values, columns = validate_table(frame[["review", "price"]])
    prompt = render_prompts(check_fields(values, columns), reg.prompt_template_, columns)[0]
    assert f"price: {frame.price[0]}" in prompt


def test_mixed_object_column(tiny_model_dir):
    X = pd.DataFrame({"note": ["good", 3.5, True, pd.Timestamp("2024-05-01"), 7]})
    values, columns = validate_table(X)
    prompts = render_prompts(check_fields(values, columns), "{note}", columns)
    assert prompts == ["good", "3.5", "True", "2024-05-01 00:00:00", "7"]
    reg = make(tiny_model_dir, prompt_template="Note: {note}").fit(X, np.arange(5.0))
    written = [f"Note: {p}" for p in prompts]
    np.testing.assert_array_equal(
        reg.predict(X), make(tiny_model_dir, prompt_template="{0}").fit(written, np.arange(5.0))
        .predict(written))


def test_template_column_that_X_lacks(tiny_model_dir, table):
    frame, y = table
    with pytest.raises(ValueError, match=r"field\(s\) \{colour\} that X does not have"):
        make(tiny_model_dir, prompt_template="{review} {colour}").fit(frame, y)
    reg = make(tiny_model_dir, prompt_template="{review} costs {price:.1f}").fit(frame, y)
    with pytest.raises(ValueError, match=r"missing the column\(s\) \['price'\].*read by the "
                                         r"prompt template"):
        reg.predict(frame.drop(columns="price"))
    # Only the columns the template reads are needed at predict.
    np.testing.assert_array_equal(reg.predict(frame[["price", "review"]]), reg.predict(frame))


@pytest.mark.parametrize("template, match", [
    ("{review} {price:.2q}", r"Unknown format code 'q'.*field \{price\} holds float"),
    ("{review:.2f}", r"Unknown format code 'f'.*field \{review\} holds str"),
    ("{day:%Y-%m-%d} {price:>>>}", r"Unknown format code '>'.*field \{price\} holds float"),
])
def test_unparseable_format_spec(tiny_model_dir, table, template, match):
    frame, y = table
    with pytest.raises(ValueError, match=match):
        make(tiny_model_dir, prompt_template=template).fit(frame, y)


@pytest.mark.parametrize("gap", [None, np.nan, pd.NA, pd.NaT])
def test_missing_values_under_each_rule(tiny_model_dir, table, gap):
    frame, y = table
    frame = frame.astype({"price": object, "day": object})
    frame.loc[3, "price"] = gap
    frame.loc[5, "day"] = gap
    template = "{review} | {price:.2f} | {day:%Y-%m-%d}"
    with pytest.raises(ValueError, match=r"2 missing value\(s\).*row 3, column 'price'"
                                         r".*missing='unknown'"):
        make(tiny_model_dir, prompt_template=template).fit(frame, y)
    values, columns = validate_table(frame)
    filled = check_fields(values, columns, missing="unknown")
    prompts = render_prompts(filled, template, columns)
    assert prompts[3].endswith(f"| unknown | {frame.day[3]:%Y-%m-%d}")
    assert prompts[5] == f"{frame.review[5]} | {frame.price[5]:.2f} | unknown"
    reg = make(tiny_model_dir, prompt_template=template, missing="unknown").fit(frame, y)
    np.testing.assert_array_equal(reg.predict(frame), make(tiny_model_dir, prompt_template="{0}")
                                  .fit(prompts, y).predict(prompts))
    # A missing value in a column the template does not read is no error.
    make(tiny_model_dir, prompt_template="{review}").fit(frame, y)


def test_missing_text_is_a_chosen_word(tiny_model_dir):
    X = pd.DataFrame({"a": ["x", None, "z"], "b": [1.0, 2.0, np.nan]})
    values, columns = validate_table(X)
    prompts = render_prompts(check_fields(values, columns, missing="n/a"), "{a}/{b:.1f}",
                             columns)
    assert prompts == ["x/1.0", "n/a/2.0", "z/n/a"]


@pytest.mark.filterwarnings("ignore:.*longer than max_length:UserWarning")
def test_non_text_fields_are_never_cut(tiny_model_dir, table):
    frame, y = table
    frame = frame.copy()
    frame.loc[0, "review"] = "word " * 200
    template = "{review} costs {price:.2f}"
    with pytest.warns(UserWarning, match="longer than max_length"):
        reg = make(tiny_model_dir, prompt_template=template, max_length=40).fit(frame, y)
    states = reg.token_states(frame.iloc[:1])
    assert len(states[0]) <= 40
    # The price stays whole at the end of the prompt; only the review was cut.
    values, columns = validate_table(frame.iloc[:1])
    from sklearn_relish.inputs import shorten_fields
    from sklearn_relish.backbone import load_backbone
    tokenizer = load_backbone(reg.backbone_config_).tokenizer
    prompt = render_prompts(values, template, columns)
    short, rows = shorten_fields(prompt, values, template, tokenizer, 40, columns)
    assert rows == [0] and short[0].endswith(f" costs {frame.price[0]:.2f}")
    assert short[0].startswith("word word")


# -- the transformer face -------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(tiny_model_dir):
    X, y = sentiment_task(60, seed=4)
    return make(tiny_model_dir, anchor=None, shrinkage=None, max_epochs=3).fit(X, y), X, y


def test_transform_is_the_latent_the_regressor_reads(fitted):
    reg, X, _ = fitted
    latent = reg.transform(X)
    assert latent.shape == (len(X), 16) and latent.dtype == np.float32
    module = reg.net_.module_
    with torch.no_grad():
        head = module.regressor(torch.as_tensor(latent)).double().numpy().ravel()
    np.testing.assert_allclose(head * reg.target_scale_[0] + reg.target_mean_[0], reg.predict(X),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(reg.get_feature_names_out(),
                                  [f"relishregressor{i}" for i in range(16)])


def test_transform_before_fit_raises(tiny_model_dir):
    with pytest.raises(sklearn.exceptions.NotFittedError):
        make(tiny_model_dir).transform(["a"])
    with pytest.raises(sklearn.exceptions.NotFittedError):
        make(tiny_model_dir).get_feature_names_out()


def test_set_output_pandas(fitted):
    reg, X, _ = fitted
    reg = pickle.loads(pickle.dumps(reg)).set_output(transform="pandas")
    index = pd.RangeIndex(100, 100 + len(X))
    out = reg.transform(pd.Series(X, index=index))
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(reg.get_feature_names_out())
    assert out.index.equals(index)


def test_column_transformer_into_gradient_boosting(tiny_model_dir, table):
    frame, y = table
    model = make_pipeline(
        ColumnTransformer([
            ("text", make(tiny_model_dir, prompt_template="{review}"), ["review"]),
            ("numbers", StandardScaler(), ["price"]),
        ]),
        HistGradientBoostingRegressor(max_iter=20, min_samples_leaf=3),
    ).set_output(transform="pandas")
    scores = cross_validate(model, frame, y, cv=KFold(3), scoring="r2")
    assert np.isfinite(scores["test_score"]).all()
    model.fit(frame, y)
    # The text block is the regressor's latent state, the numbers beside it.
    features = model[0].transform(frame)
    text = make(tiny_model_dir, prompt_template="{review}").fit(frame[["review"]], y)
    np.testing.assert_allclose(features.iloc[:, :-1].to_numpy(), text.transform(frame[["review"]]),
                               rtol=1e-5, atol=1e-6)
    names = model[0].get_feature_names_out()
    assert list(names[:2]) == ["text__relishregressor0", "text__relishregressor1"]
    assert names[-1] == "numbers__price" and len(names) == 17


def test_frozen_states_are_public(tiny_model_dir, fitted):
    reg, X, _ = fitted
    states = reg.token_states(X[:3])
    assert len(states) == 3 and all(s.ndim == 2 and s.shape[1] == reg.d_model_ for s in states)
    mean = reg.pooled_states(X[:3])
    np.testing.assert_allclose(mean, np.stack([s.double().mean(0).numpy() for s in states]))
    last = reg.pooled_states(X[:3], pooling="last")
    np.testing.assert_allclose(last, np.stack([s[-1].double().numpy() for s in states]))
    assert reg.pooled_states(X[:3], pooling="mean+last").shape == (3, 2 * reg.d_model_)
    # Before fit, with the parameters' template: the same prompts here.
    fresh = make(tiny_model_dir)
    np.testing.assert_allclose(fresh.pooled_states(X[:3]), mean)
    with pytest.raises(ValueError, match="pooling='max' is not one of"):
        reg.pooled_states(X[:3], pooling="max")


# -- sample weights -----------------------------------------------------------------

@pytest.fixture(scope="module")
def weighted_task():
    return sentiment_task(40, seed=5)


def test_equal_weights_give_exactly_the_unweighted_fit(tiny_model_dir, weighted_task):
    X, y = weighted_task
    reference = make(tiny_model_dir).fit(X, y).predict(X)
    for weight in (np.ones(len(X)), np.full(len(X), 3.0)):
        np.testing.assert_array_equal(
            make(tiny_model_dir).fit(X, y, sample_weight=weight).predict(X), reference)


@pytest.mark.parametrize("anchor", ["ridge", None])
def test_zero_weights_remove_rows(tiny_model_dir, weighted_task, anchor):
    X, y = weighted_task
    weight = np.ones(len(X))
    weight[::4] = 0.0
    keep = weight > 0
    # One batch per epoch: the batch order cannot matter, so the weighted fit
    # and the fit without the rows take the same steps.
    params = dict(batch_size=64, anchor=anchor, max_epochs=3)
    dropped = make(tiny_model_dir, **params).fit([x for x, k in zip(X, keep) if k], y[keep])
    weighted = make(tiny_model_dir, **params).fit(X, y, sample_weight=weight)
    np.testing.assert_allclose(weighted.predict(X), dropped.predict(X), rtol=1e-4, atol=1e-4)
    # ... and the weights matter: the unweighted fit differs.
    plain = make(tiny_model_dir, **params).fit(X, y)
    assert np.abs(plain.predict(X) - dropped.predict(X)).max() > 1e-3


def test_weights_pull_the_fit(tiny_model_dir, weighted_task):
    X, y = weighted_task
    weight = np.where(y > np.median(y), 10.0, 0.1)
    plain = make(tiny_model_dir, anchor=None, max_epochs=1).fit(X, y)
    weighted = make(tiny_model_dir, anchor=None, max_epochs=1).fit(X, y, sample_weight=weight)
    assert weighted.target_mean_[0] > plain.target_mean_[0]
    np.testing.assert_allclose(weighted.target_mean_[0], np.average(y, weights=weight))


@pytest.mark.parametrize("weight, match", [
    (lambda n: -np.ones(n), "Negative values in data passed to sample_weight"),
    (lambda n: np.ones(n - 1), r"sample_weight.shape == \(39,\), expected \(40,\)"),
    (lambda n: np.ones((n, 1)), "Sample weights must be 1D"),
    # scikit-learn >= 1.7 has its own message for this.
    (lambda n: np.zeros(n), "sums to 0|at least one non-zero"),
    (lambda n: np.r_[np.nan, np.ones(n - 1)], "sample_weight contains NaN"),
    (lambda n: np.r_[np.inf, np.ones(n - 1)], "sample_weight contains infinity"),
])
def test_bad_weights(tiny_model_dir, weighted_task, weight, match):
    X, y = weighted_task
    with pytest.raises(ValueError, match=match):
        make(tiny_model_dir).fit(X, y, sample_weight=weight(len(X)))


def test_metadata_routing(tiny_model_dir, weighted_task):
    X, y = weighted_task
    weight = np.linspace(0.5, 2.0, len(X))
    with sklearn.config_context(enable_metadata_routing=True):
        reg = (make(tiny_model_dir, max_epochs=1).set_fit_request(sample_weight=True)
               .set_score_request(sample_weight=False))
        result = cross_validate(reg, X, y, cv=KFold(2), params={"sample_weight": weight},
                                return_estimator=True)
        fold_weight = weight[KFold(2).split(X).__next__()[0]]
        assert np.isclose(result["estimator"][0].target_mean_[0],
                          np.average(y[KFold(2).split(X).__next__()[0]], weights=fold_weight))
        # Through a pipeline too.
        pipe = make_pipeline(make(tiny_model_dir, max_epochs=1).set_fit_request(sample_weight=True))
        pipe.fit(X, y, sample_weight=weight)


# -- scikit-learn's column contract ---------------------------------------------

def test_feature_names_contract(tiny_model_dir, table):
    frame, y = table
    pairs = frame[["review", "brand"]]
    named = make(tiny_model_dir).fit(pairs, y)
    assert named.n_features_in_ == 2
    with pytest.warns(UserWarning, match="X does not have valid feature names, but "
                                         "RelishRegressor was fitted with feature names"):
        named.predict(pairs.to_numpy())
    unnamed = make(tiny_model_dir).fit(pairs.to_numpy(), y)
    assert not hasattr(unnamed, "feature_names_in_") and unnamed.n_features_in_ == 2
    with pytest.warns(UserWarning, match="X has feature names, but RelishRegressor was "
                                         "fitted without feature names"):
        unnamed.predict(pairs)
    with pytest.raises(ValueError, match="X has 3 features.*expecting 2 features"):
        unnamed.predict(frame[["review", "brand", "price"]].to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        named.predict(pairs)
        unnamed.predict(pairs.to_numpy())


def test_column_names_that_are_not_strings(tiny_model_dir, table):
    frame, y = table
    numbered = frame[["review", "brand"]].set_axis([0, 1], axis=1)
    reg = make(tiny_model_dir, prompt_template="{0} by {1}").fit(numbered, y)
    assert not hasattr(reg, "feature_names_in_")
    mixed = frame[["review", "brand"]].set_axis(["review", 1], axis=1)
    with pytest.raises(TypeError, match="mix str with int.*astype\\(str\\)"):
        make(tiny_model_dir).fit(mixed, y)


def test_warm_start_continues_training(tiny_model_dir, weighted_task):
    X, y = weighted_task
    params = dict(max_epochs=2, early_stopping=False, anchor=None, shrinkage=None, lr=1e-3)
    reg = make(tiny_model_dir, warm_start=True, **params).fit(X, y)
    first = list(reg.loss_curve_)
    weights = reg.net_.module_.projection.weight.detach().clone()
    reg.fit(X, y)
    assert reg.n_iter_ == 4 and reg.loss_curve_[:2] == first
    # It went on from the trained head: its first new epoch is better than
    # a fresh head's first, and the weights moved from where they were.
    assert reg.loss_curve_[2] < first[0]
    moved = (reg.net_.module_.projection.weight - weights).abs().max()
    assert 0 < moved < weights.abs().max()
    cold = make(tiny_model_dir, **params).fit(X, y)
    assert cold.n_iter_ == 2 and cold.loss_curve_ == first
    assert not np.allclose(cold.predict(X), reg.predict(X))


def test_warm_start_refuses_another_shape(tiny_model_dir, weighted_task):
    X, y = weighted_task
    reg = make(tiny_model_dir, warm_start=True, max_epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="warm_start=True.*head's shape.*warm_start=False"):
        reg.set_params(latent_dim=32, n_heads=2).fit(X, y)
    with pytest.raises(ValueError, match=r"number of targets \(1 -> 2\)"):
        reg.set_params(latent_dim=16).fit(X, np.c_[y, y])
    assert reg.n_iter_ == 1  # the failed fits kept the fitted state
