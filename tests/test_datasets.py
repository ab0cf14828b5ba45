"""Tests for sklearn_relish.datasets: the VADER tweets shipped with the package.

The loaders of the shared data directory (STS-B, MLQE-PE, VADER) belong to
the benchmarks and are tested in ``benchmarks/tests/test_datasets.py``.
"""

import numpy as np
import pandas as pd
import pytest
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_relish.datasets import load_vader_tweets


def _all_str(values):
    return all(isinstance(v, str) for v in np.asarray(values, dtype=object).ravel())


# --- load_vader_tweets: the data shipped with the package ------------------


def test_vader_tweets_bunch():
    bunch = load_vader_tweets()
    assert bunch.data.shape == (4200,)
    assert bunch.data.dtype == object
    assert _all_str(bunch.data)
    assert bunch.target.shape == (4200,)
    assert bunch.target.dtype == np.float64
    assert not np.isnan(bunch.target).any()
    assert bunch.target.min() >= -4 and bunch.target.max() <= 4
    assert bunch.ids.dtype.kind == "i"
    np.testing.assert_array_equal(bunch.ids, np.arange(1, 4201))
    assert bunch.frame is None
    assert bunch.feature_names == ["text"]
    assert bunch.target_names == ["sentiment"]
    for needle in ("MIT", "Hutto", "ICWSM", "&amp;"):
        assert needle in bunch.DESCR


def test_vader_tweets_rows_are_parsed_exactly():
    bunch = load_vader_tweets()
    assert bunch.data[1] == "Yay. Another good phone interview."
    assert bunch.target[1] == 1.443298969
    # No line end survives parsing, and texts are not stripped or unescaped.
    assert not any(("\r" in t) or ("\n" in t) for t in bunch.data)
    assert bunch.data[bunch.ids == 1370][0].startswith(" Life is what happens")
    assert sum("&amp;" in t for t in bunch.data) > 100


def test_vader_tweets_as_frame():
    bunch = load_vader_tweets(as_frame=True)
    assert isinstance(bunch.frame, pd.DataFrame)
    assert list(bunch.frame.columns) == ["text", "sentiment"]
    assert bunch.frame.shape == (4200, 2)
    assert isinstance(bunch.data, pd.Series) and bunch.data.name == "text"
    assert isinstance(bunch.target, pd.Series) and bunch.target.name == "sentiment"
    assert bunch.target.dtype == np.float64
    np.testing.assert_array_equal(
        bunch.data.to_numpy(dtype=object), load_vader_tweets().data
    )


@pytest.mark.parametrize("as_frame", [False, True])
def test_vader_tweets_return_X_y(as_frame):
    X, y = load_vader_tweets(return_X_y=True, as_frame=as_frame)
    bunch = load_vader_tweets(as_frame=as_frame)
    assert type(X) is type(bunch.data) and type(y) is type(bunch.target)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(bunch.target))
    assert len(X) == 4200


@pytest.mark.parametrize("kwargs, name", [
    ({"return_X_y": "yes"}, "return_X_y"),
    ({"return_X_y": 1}, "return_X_y"),
    ({"as_frame": None}, "as_frame"),
    ({"as_frame": "False"}, "as_frame"),
])
def test_vader_tweets_rejects_non_boolean_flags(kwargs, name):
    # "False" is truthy: without the check it would silently return a frame.
    with pytest.raises(InvalidParameterError,
                       match=f"'{name}' parameter of load_vader_tweets must be an "
                             "instance of 'bool'"):
        load_vader_tweets(**kwargs)


def test_vader_tweets_accepts_numpy_booleans():
    X, y = load_vader_tweets(return_X_y=np.True_, as_frame=np.False_)
    assert isinstance(X, np.ndarray) and len(y) == 4200


def test_vader_tweets_flags_are_keyword_only():
    with pytest.raises(TypeError):
        load_vader_tweets(True)
