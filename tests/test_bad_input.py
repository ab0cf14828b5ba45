"""Bad or unusual input: a clear error that names the problem, or correct handling.

One table of cases. Each case is a callable that gets the tiny backbone's
directory and an expected outcome: either ``Raises(type, regex)`` -- the
error must have that type, a message matching the regex, and be raised by
sklearn-relish or scikit-learn themselves, never from deep inside torch or
a tokenizer -- or ``HANDLED``, where the callable checks the result itself.
"""

import math
import os
import sys
import types
import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from sklearn_relish import RelishRegressor
from sklearn_relish.backbone import BackboneLoadError

# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(cv=None, max_epochs=1, latent_dim=16, n_heads=2, batch_size=4, random_state=0)
TEXTS = ["a good film", "the bad plot", "great", "awful movie"]
Y = [1.0, -1.0, 2.0, -2.0]
PAIRS = pd.DataFrame({"title": ["A film", "A plot", "Great", "Awful"],
                      "body": ["good", "bad", "great fun", "awful movie"]})


class Raises(NamedTuple):
    exception: type
    match: str


HANDLED = "handled"


def make(model_dir, **params):
    return RelishRegressor(backbone=model_dir, **{**FAST, **params})


_FITTED = {}


def fitted(model_dir, kind="texts"):
    """A regressor fitted once per session on TEXTS, or on PAIRS by column name."""
    key = (model_dir, kind)
    if key not in _FITTED:
        if kind == "texts":
            _FITTED[key] = make(model_dir).fit(TEXTS, Y)
        else:
            _FITTED[key] = make(model_dir, prompt_template="{title}: {body}").fit(PAIRS, Y)
    return _FITTED[key]


def long_text(tag):
    """Far beyond max_length; the tag keeps it out of other cases' cache entries."""
    return f"{tag}: " + "the quick brown fox jumps over the lazy dog " * 40


def assert_finite(pred, n):
    assert pred.shape == (n,) and np.isfinite(pred).all(), pred


def truncation_warnings(caught):
    return [w for w in caught if issubclass(w.category, UserWarning)
            and "max_length" in str(w.message)]


# -- cases that must be handled ----------------------------------------------

def single_row(d):
    reg = make(d).fit(["only one text"], [3.5])
    assert_finite(reg.predict(["another text", "and one more"]), 2)
    assert reg.n_iter_ == 1 and reg.n_features_in_ == 1


def unicode_emoji_rtl(d):
    texts = ["😀🎉 café crème", "مرحبا بالعالم، فيلم رائع", "שלום עולם, סרט גרוע",
             "\u202eRTL override\u202c mixed עברית and English", "日本語のテキスト", "a\x00b"]
    reg = make(d).fit(texts, np.arange(len(texts), dtype=float))
    assert_finite(reg.predict(texts + ["👍🏽", "ﷺ"]), len(texts) + 2)


def empty_and_whitespace(d):
    # "{0}" adds nothing around the text, so "" may tokenise to zero tokens.
    texts = ["", " ", "   ", "\n\t\r", "\u200b", "text"]
    reg = make(d, prompt_template="{0}").fit(texts, np.arange(len(texts), dtype=float))
    assert_finite(reg.predict(["", "  ", "\t"]), 3)


def long_text_warns_once(d):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = make(d, max_length=24).fit([long_text("warn")] + TEXTS, [0.0] + Y)
    hits = truncation_warnings(caught)
    assert len(hits) == 1, [str(w.message) for w in caught]
    assert "truncat" in str(hits[0].message) and "max_length=24" in str(hits[0].message)
    assert_finite(reg.predict([long_text("warn-predict")]), 1)


def long_text_warns_again_when_cached(d):
    """The warning must not depend on whether the states were cached."""
    text = long_text("cached-warn")
    make(d, max_length=26).fit([text] + TEXTS, [0.0] + Y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make(d, max_length=26).fit([text] + TEXTS, [0.0] + Y)
    assert len(truncation_warnings(caught)) == 1


def long_text_cached_then_truncation_false(d):
    """truncation=False must refuse a long text even when its states are cached."""
    text = long_text("cached-raise")
    make(d, max_length=27).fit([text] + TEXTS, [0.0] + Y)
    make(d, max_length=27, truncation=False).fit([text] + TEXTS, [0.0] + Y)


def long_text_error_names_its_row(d):
    # The long text is row 3 of X; rows 0 and 1 are the same prompt.
    make(d, max_length=28, truncation=False).fit(
        ["dup", "dup", "other", long_text("row-three")], [1.0, 1.0, 2.0, 3.0])


def truncation_warning_points_at_caller(d):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make(d, max_length=29).fit([long_text("stacklevel")] + TEXTS, [0.0] + Y)
    hits = truncation_warnings(caught)
    assert len(hits) == 1 and hits[0].filename == __file__, (hits[0].filename, hits[0].lineno)


def numeric_array_warns_at_the_caller(d):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make(d).fit(np.arange(8).reshape(4, 2), Y)
    hits = [w for w in caught if "X is an array of numbers (int64), not text" in str(w.message)]
    assert len(hits) == 1 and hits[0].filename == __file__, hits


def braces_in_column_names(d):
    frame = PAIRS.rename(columns={"title": "{title}", "body": "body}"})
    reg = make(d).fit(frame, Y)  # default template labels the fields by column
    assert "{{title}}: {0}" in reg.prompt_template_
    assert_finite(reg.predict(frame), 4)


def column_name_with_dot_and_space(d):
    frame = PAIRS.rename(columns={"title": "doc.title", "body": "main text"})
    reg = make(d, prompt_template="{doc.title} / {main text}").fit(frame, Y)
    assert_finite(reg.predict(frame), 4)


def list_of_array_rows(d):
    rows = [np.array([t, b]) for t, b in zip(PAIRS["title"], PAIRS["body"])]
    reg = make(d).fit(rows, Y)
    assert reg.n_features_in_ == 2
    np.testing.assert_allclose(reg.predict(rows), reg.predict(PAIRS.to_numpy()))


def numbers_as_fields(d):
    """Numbers render as text in the prompt: no longer refused."""
    reg = make(d).fit([1, 2, 3.5], [1.0, 2.0, 3.0])
    assert_finite(reg.predict([4, "five"]), 2)


def template_ignores_unused_fields(d):
    """A field the template does not name is neither read nor checked."""
    X = PAIRS.to_numpy()
    reg = make(d, prompt_template="Title: {0}").fit(X, Y)
    junk = X.copy()
    junk[:, 1] = [None, b"bytes", {"a": 1}, np.nan]
    np.testing.assert_allclose(reg.predict(junk), reg.predict(X))


def predict_dataframe_columns_reordered(d):
    reg = fitted(d, "pairs")
    np.testing.assert_allclose(reg.predict(PAIRS[["body", "title"]]), reg.predict(PAIRS))


def _stage(reg, X):
    return next(iter(reg.staged_predict(X)))


def _expect_cuda_unavailable():
    return [pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")]




CASES = [
    # -- X of the wrong kind --------------------------------------------------
    pytest.param(lambda d: make(d).fit("one text", [1.0]),
                 Raises(ValueError, r"string object received.*Wrap a single text in a list"),
                 id="bare-str-fit"),
    pytest.param(lambda d: fitted(d).predict("one text"),
                 Raises(ValueError, r"string object received.*predict\(\[text\]\)"),
                 id="bare-str-predict"),
    pytest.param(lambda d: make(d).fit(b"one text", [1.0]),
                 Raises(ValueError, r"bytes object received.*decode"),
                 id="bytes-as-X"),
    pytest.param(lambda d: make(d).fit(None, [1.0]),
                 Raises(TypeError, r"X must be a list, array, Series or DataFrame of str, got NoneType"),
                 id="None-as-X"),
    pytest.param(lambda d: make(d).fit({"b", "a"}, [1.0, 2.0]),
                 Raises(TypeError, r"got set: a set has no order"),
                 id="set-as-X"),
    pytest.param(lambda d: make(d).fit({"text": TEXTS}, Y),
                 Raises(TypeError, r"got dict.*pd\.DataFrame\(X\)"),
                 id="dict-as-X"),
    pytest.param(lambda d: make(d).fit(np.array([[["a", "b"], ["c", "d"]]] * 2), [1.0, 2.0]),
                 Raises(ValueError, r"1-D.*or 2-D.*3 dimensions, shape \(2, 2, 2\)"),
                 id="3d-array"),
    pytest.param(lambda d: make(d).fit([], []),
                 Raises(ValueError, r"X is empty: at least one text is needed"),
                 id="empty-list"),
    pytest.param(lambda d: make(d).fit(pd.DataFrame(), []),
                 Raises(ValueError, r"X is empty"),
                 id="empty-dataframe"),
    pytest.param(lambda d: make(d).fit(pd.DataFrame({"text": pd.Series([], dtype=object)}), []),
                 Raises(ValueError, r"X is empty"),
                 id="empty-dataframe-with-column"),
    # -- missing values -----------------------------------------------------
    pytest.param(lambda d: make(d).fit(["a", None, "b"], [1.0, 2.0, 3.0]),
                 Raises(ValueError, r"1 missing value\(s\).*row 1.*fillna.*missing='unknown'"),
                 id="None-entry"),
    pytest.param(lambda d: make(d).fit(["a", float("nan")], [1.0, 2.0]),
                 Raises(ValueError, r"missing value.*row 1"),
                 id="float-nan-entry"),
    pytest.param(lambda d: make(d).fit(["a", pd.NA], [1.0, 2.0]),
                 Raises(ValueError, r"missing value.*row 1"),
                 id="pd-NA-entry"),
    pytest.param(lambda d: make(d).fit(["a", "b", np.nan], [1.0, 2.0, 3.0]),
                 Raises(ValueError, r"missing value.*row 2"),
                 id="np-nan-entry"),
    pytest.param(lambda d: make(d).fit(pd.Series(["a", None, np.nan]), [1.0, 2.0, 3.0]),
                 Raises(ValueError, r"2 missing value\(s\).*row 1.*dropna"),
                 id="series-with-missing"),
    pytest.param(lambda d: make(d).fit(pd.DataFrame({"title": ["a", "b"], "body": ["x", np.nan]}),
                                       [1.0, 2.0]),
                 Raises(ValueError, r"missing value.*row 1, column 'body'"),
                 id="dataframe-with-missing"),
    pytest.param(lambda d: fitted(d).predict(["fine", None]),
                 Raises(ValueError, r"missing value.*row 1"),
                 id="predict-with-missing"),
    # -- entries that are not text --------------------------------------------
    pytest.param(lambda d: make(d).fit(["a", b"raw bytes"], [1.0, 2.0]),
                 Raises(TypeError, r"text or scalar values.*bytes b'raw bytes' at row 1.*decode\('utf-8'\)"),
                 id="bytes-items"),
    pytest.param(numbers_as_fields, HANDLED, id="int-and-float-items"),
    pytest.param(lambda d: make(d).fit([{"a": 1}, {"b": 2}], [1.0, 2.0]),
                 Raises(TypeError, r"text or scalar values.*dict \{'a': 1\} at row 0"),
                 id="dict-items"),
    pytest.param(lambda d: make(d).fit([("a", "b"), ("c",), ("d", "e")], [1.0, 2.0, 3.0]),
                 Raises(ValueError, r"different numbers of text fields.*row 1 has 1"),
                 id="ragged-rows"),
    pytest.param(lambda d: make(d).fit(["a", ("b", "c")], [1.0, 2.0]),
                 Raises(TypeError, r"tuple .* at row 1.*Several text fields per row go in"),
                 id="text-mixed-with-rows"),
    pytest.param(lambda d: make(d).fit(["ok", "bad \udcff surrogate"], [1.0, 2.0]),
                 Raises(ValueError, r"not valid Unicode at row 1.*surrogate"),
                 id="lone-surrogate"),
    pytest.param(lambda d: make(d).fit(pd.DataFrame([["a", "b"]], columns=["x", "x"]), [1.0]),
                 Raises(ValueError, r"duplicated column name\(s\) \['x'\]"),
                 id="duplicate-columns"),
    # -- y ----------------------------------------------------------------------
    pytest.param(lambda d: make(d).fit(TEXTS, Y[:3]),
                 Raises(ValueError, r"X has 4 rows but y has 3"),
                 id="X-y-length-mismatch"),
    pytest.param(lambda d: make(d).fit(TEXTS, [1.0, np.nan, 2.0, 3.0]),
                 Raises(ValueError, r"y contains NaN or infinity in 1 row"),
                 id="y-nan"),
    pytest.param(lambda d: make(d).fit(TEXTS, [1.0, np.inf, -np.inf, 3.0]),
                 Raises(ValueError, r"y contains NaN or infinity in 2 row"),
                 id="y-inf"),
    pytest.param(lambda d: make(d).fit(TEXTS, pd.array([1, None, 2, 3], dtype="Int64")),
                 Raises(ValueError, r"y contains NaN or infinity in 1 row"),
                 id="y-nullable-NA"),
    pytest.param(lambda d: make(d).fit(TEXTS[:2], ["a", "b"]),
                 Raises(ValueError, r"y must be numeric.*holds strings"),
                 id="y-strings"),
    pytest.param(lambda d: make(d).fit(["a", "b"], ["1", "2"]),
                 Raises(ValueError, r"y must be numeric.*astype\(float\)"),
                 id="y-numbers-written-as-strings"),
    pytest.param(lambda d: make(d).fit(TEXTS, np.empty((4, 0))),
                 Raises(ValueError, r"y has shape \(4, 0\).*no target column"),
                 id="y-no-column"),
    pytest.param(lambda d: make(d).fit(TEXTS, np.ones((4, 1, 1))),
                 Raises(ValueError, r"Found array with dim 3, while dim <= 2"),
                 id="y-3d"),
    pytest.param(lambda d: make(d).fit(TEXTS, np.array([1, 2, 3, 4 + 1j])),
                 Raises(ValueError, r"Complex data not supported"),
                 id="y-complex"),
    pytest.param(lambda d: make(d).fit(TEXTS, 3.0),
                 Raises(ValueError, r"y must be a 1-D or 2-D array of numbers"),
                 id="y-scalar"),
    pytest.param(lambda d: make(d).fit(TEXTS, [{"a": 1}, {}, {}, {}]),
                 Raises(ValueError, r"y must be a 1-D or 2-D array of numbers.*dict"),
                 id="y-dicts"),
    # -- templates ---------------------------------------------------------------
    pytest.param(lambda d: make(d, prompt_template="{title}").fit(pd.DataFrame({"text": TEXTS}), Y),
                 Raises(ValueError, r"field\(s\) \{title\} that X does not have.*may use \{0\}, \{text\}"),
                 id="template-names-missing-column"),
    pytest.param(lambda d: make(d, prompt_template="{0} {1} {2}").fit(PAIRS.to_numpy(), Y),
                 Raises(ValueError, r"field\(s\) \{2\} that X does not have: X has 2 field"),
                 id="template-unknown-position"),
    pytest.param(template_ignores_unused_fields, HANDLED, id="template-unused-field"),
    pytest.param(lambda d: make(d, prompt_template="Text: {0").fit(TEXTS, Y),
                 Raises(ValueError, r"not a valid format string.*literal braces as \{\{"),
                 id="template-malformed"),
    pytest.param(lambda d: make(d, prompt_template="Text: {}").fit(TEXTS, Y),
                 Raises(ValueError, r"empty field '\{\}'.*by position \(\{0\}"),
                 id="template-empty-field"),
    pytest.param(lambda d: make(d, prompt_template="{0.__class__}").fit(TEXTS, Y),
                 Raises(ValueError, r"field\(s\) \{0\.__class__\} that X does not have"),
                 id="template-attribute-access"),
    pytest.param(lambda d: make(d, prompt_template="{0:d}").fit(TEXTS, Y),
                 Raises(ValueError, r"could not be filled with row 0.*Unknown format code 'd'"
                                    r".*field \{0\} holds str"),
                 id="template-bad-format-spec"),
    pytest.param(lambda d: make(d, prompt_template="{0!x}").fit(TEXTS, Y),
                 Raises(ValueError, r"unknown conversion '!x'"),
                 id="template-bad-conversion"),
    pytest.param(braces_in_column_names, HANDLED, id="braces-in-column-names"),
    pytest.param(column_name_with_dot_and_space, HANDLED, id="column-name-dot-space"),
    # -- unusual but valid text --------------------------------------------------
    pytest.param(single_row, HANDLED, id="single-row"),
    pytest.param(unicode_emoji_rtl, HANDLED, id="unicode-emoji-rtl"),
    pytest.param(empty_and_whitespace, HANDLED, id="empty-and-whitespace"),
    pytest.param(list_of_array_rows, HANDLED, id="list-of-array-rows"),
    pytest.param(long_text_warns_once, HANDLED, id="long-text-warns-once"),
    pytest.param(lambda d: make(d, max_length=25, truncation=False).fit(
                     [long_text("raise")] + TEXTS, [0.0] + Y),
                 Raises(ValueError, r"longer than max_length=25 tokens.*Increase max_length"),
                 id="long-text-truncation-false"),
    pytest.param(long_text_warns_again_when_cached, HANDLED,
                 id="long-text-cached-warns-again"),
    pytest.param(long_text_cached_then_truncation_false,
                 Raises(ValueError, r"longer than max_length=27"),
                 id="long-text-cached-truncation-false"),
    pytest.param(long_text_error_names_its_row,
                 Raises(ValueError, r"longer than max_length=28.*row 3\b"),
                 id="long-text-error-row"),
    pytest.param(truncation_warning_points_at_caller, HANDLED,
                 id="truncation-warning-points-at-caller"),
    # -- backbone -----------------------------------------------------------------
    pytest.param(lambda d: make("no-such-org/no-such-model").fit(TEXTS, Y),
                 Raises(BackboneLoadError, r"Could not load the backbone 'no-such-org/no-such-model'"
                                           r"(.|\n)*Hugging Face"),
                 id="backbone-does-not-exist"),
    pytest.param(lambda d: make(_junk_dir(d)).fit(TEXTS, Y),
                 Raises(BackboneLoadError, r"is a directory but not a loadable model.*save_pretrained"),
                 id="backbone-dir-not-a-model"),
    pytest.param(lambda d: make(d, layer=99).fit(TEXTS, Y),
                 Raises(ValueError, r"layer=99 is out of range.*2 layers.*\[-3, 2\]"),
                 id="layer-out-of-range"),
    pytest.param(numeric_array_warns_at_the_caller, HANDLED, id="numeric-array-warns"),
    # -- parameters ---------------------------------------------------------------
    pytest.param(lambda d: RelishRegressor(backbone=d, laer=3),
                 Raises(TypeError, r"unexpected keyword argument 'laer'. Did you mean 'layer'\?"),
                 id="misspelled-parameter"),
    pytest.param(lambda d: make(d, n_iterations=0).fit(TEXTS, Y),
                 Raises(InvalidParameterError, r"'n_iterations' parameter.*range \[1, inf\).*Got 0"),
                 id="n_iterations-0"),
    pytest.param(lambda d: make(d, latent_dim=30, n_heads=8).fit(TEXTS, Y),
                 Raises(ValueError, r"latent_dim=30 must be divisible by n_heads=8"),
                 id="latent_dim-not-divisible"),
    pytest.param(lambda d: make(d, lr=-1).fit(TEXTS, Y),
                 Raises(InvalidParameterError, r"'lr' parameter.*Got -1"),
                 id="lr-negative"),
    pytest.param(lambda d: make(d, dropout=1.5).fit(TEXTS, Y),
                 Raises(InvalidParameterError, r"'dropout' parameter.*range \[0\.0, 1\.0\).*Got 1\.5"),
                 id="dropout-1.5"),
    pytest.param(lambda d: make(d, max_length=0).fit(TEXTS, Y),
                 Raises(InvalidParameterError, r"'max_length' parameter.*Got 0"),
                 id="max_length-0"),
    pytest.param(lambda d: make(d, dtype="int8").fit(TEXTS, Y),
                 Raises(InvalidParameterError, r"'dtype' parameter.*bfloat16.*Got 'int8'"),
                 id="dtype-int8"),
    pytest.param(lambda d: make(d, device="tpu9").fit(TEXTS, Y),
                 Raises(ValueError, r"device='tpu9' is not a device torch knows.*'cpu'"),
                 id="device-nonsense"),
    pytest.param(lambda d: make(d, device="cuda").fit(TEXTS, Y),
                 Raises(ValueError, r"device='cuda'.*(not available|cannot be used)"),
                 marks=_expect_cuda_unavailable(), id="device-cuda-without-cuda"),
    pytest.param(lambda d: make(d, device="meta").fit(TEXTS, Y),
                 Raises(ValueError, r"device='meta'"),
                 id="device-meta"),
    pytest.param(lambda d: make(d, early_stopping=True).fit(["one"], [1.0]),
                 Raises(ValueError, r"early_stopping.*leaves no row"),
                 id="early-stopping-single-row"),
    # -- predict --------------------------------------------------------------------
    pytest.param(lambda d: make(d).predict(TEXTS),
                 Raises(NotFittedError, r"not fitted yet.*Call 'fit'"),
                 id="predict-before-fit"),
    pytest.param(lambda d: _stage(make(d), TEXTS),
                 Raises(NotFittedError, r"not fitted yet"),
                 id="staged-predict-before-fit"),
    pytest.param(lambda d: fitted(d, "pairs").predict(PAIRS[["title"]]),
                 Raises(ValueError, r"missing the column\(s\) \['body'\] seen in fit"),
                 id="predict-missing-column"),
    pytest.param(lambda d: fitted(d).predict(PAIRS.to_numpy()),
                 Raises(ValueError, r"X has 2 features.*expecting 1 features"),
                 id="predict-other-field-count"),
    pytest.param(predict_dataframe_columns_reordered, HANDLED, id="predict-columns-reordered"),
]


def _junk_dir(model_dir):
    """A directory beside the tiny model (so pytest cleans it) that is no model."""
    directory = os.path.join(os.path.dirname(model_dir), "not-a-model")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "junk.txt"), "w") as handle:
        handle.write("not a model")
    return directory


def _raising_file(excinfo):
    tb = excinfo.value.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename


@pytest.mark.filterwarnings("ignore:.*longer than max_length:UserWarning")
@pytest.mark.parametrize("action, expected", CASES)
def test_bad_input(tiny_model_dir, action, expected):
    if expected is HANDLED:
        action(tiny_model_dir)
        return
    with pytest.raises(expected.exception, match=expected.match) as excinfo:
        action(tiny_model_dir)
    # Raised by our code (or scikit-learn's validation), not deep in torch,
    # transformers or tokenizers.
    where = _raising_file(excinfo).replace(os.sep, "/")
    assert "/sklearn_relish/" in where or "/sklearn/" in where, where


def test_pandas_string_like_dtypes(tiny_model_dir):
    reference = make(tiny_model_dir).fit(TEXTS, Y).predict(TEXTS)
    for dtype in ["string", "category"]:
        series = pd.Series(TEXTS, dtype=dtype, index=[10, 20, 30, 40])
        reg = make(tiny_model_dir).fit(series, Y)
        np.testing.assert_allclose(reg.predict(series), reference, err_msg=dtype)
        np.testing.assert_allclose(reg.predict(series.iloc[::-1]), reference[::-1], err_msg=dtype)

    for dtype in [object, "string"]:
        frame = PAIRS.astype(dtype)
        reg = make(tiny_model_dir, prompt_template="Title: {title}\nBody: {body}").fit(frame, Y)
        np.testing.assert_array_equal(reg.feature_names_in_, ["title", "body"])
        pred = reg.predict(frame)
        assert pred.shape == (4,) and np.isfinite(pred).all()
        # The template names columns: the same rows give the same prompts in any column order.
        np.testing.assert_allclose(reg.predict(frame[["body", "title"]]), pred)
        # A plain (n, 2) array is matched to the columns by position, with
        # scikit-learn's warning.
        with pytest.warns(UserWarning, match="does not have valid feature names"):
            np.testing.assert_allclose(reg.predict(frame.to_numpy(dtype=object)), pred)
        assert math.isfinite(float(reg.score(frame, Y)))


@pytest.mark.parametrize("missing, present", [("gguf", "accelerate"), ("accelerate", "gguf")])
def test_gguf_conversion_names_a_missing_package(monkeypatch, tmp_path, missing, present):
    """transformers needs gguf and accelerate to read the bundled GGUF file;
    without one, the error names the package and the command that fixes it."""
    from sklearn_relish import bundled

    monkeypatch.setitem(sys.modules, missing, None)  # import fails
    # The other one imports, whether or not this machine has it installed.
    monkeypatch.setitem(sys.modules, present, types.ModuleType(present))
    with pytest.raises(ImportError, match=f"'{missing}' package.*pip install {missing}$"):
        bundled._convert_gguf(tmp_path / "model.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
