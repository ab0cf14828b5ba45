"""Tests for benchmarks.datasets: the loaders of the shared data directory.

Tests of the real data (STS-B, MLQE-PE, VADER) skip when the directory
cannot be found; tests of parsing and configuration use tiny files written
to a temporary directory.
"""

import gzip
from importlib import resources

import numpy as np
import pytest
from sklearn.utils._param_validation import InvalidParameterError

from benchmarks import datasets
from benchmarks.datasets import get_data_dir, load_mlqe, load_stsb, load_vader
from sklearn_relish.datasets import load_vader_tweets

STSB_ROWS = {"train": 5749, "dev": 1500, "test": 1379}
MLQE_ROWS = {"train": 7000, "dev": 1000, "test": 1000}
VADER_ROWS = {"tweets": 4200, "movieReviewSnippets": 10605}


def _all_str(values):
    return all(isinstance(v, str) for v in np.asarray(values, dtype=object).ravel())


@pytest.fixture(scope="module")
def shared_dir():
    """The shared data directory, or skip the test if it is absent."""
    try:
        return get_data_dir()
    except FileNotFoundError as exc:
        pytest.skip(f"shared data directory not found: {exc}")


def _require(shared_dir, *parts):
    path = shared_dir.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} not present in the shared data directory")
    return path


def test_shipped_tweets_equal_shared_source(shared_dir):
    source = _require(shared_dir, "vader-sentiment", "tweets_GroundTruth.txt")
    shipped = resources.files("sklearn_relish") / "data" / "vader_tweets.tsv.gz"
    assert gzip.decompress(shipped.read_bytes()) == source.read_bytes()

    X, y = load_vader("tweets")
    bunch = load_vader_tweets()
    np.testing.assert_array_equal(X, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)


# --- the shared data directory ----------------------------------------------


@pytest.mark.parametrize("split", list(STSB_ROWS))
def test_stsb_shared(shared_dir, split):
    _require(shared_dir, "stsb-en", f"{split}.csv")
    X, y = load_stsb(split)
    n = STSB_ROWS[split]
    assert X.shape == (n, 2) and X.dtype == object
    assert y.shape == (n,) and y.dtype == np.float64
    assert _all_str(X)
    assert all(s.strip() for s in X.ravel())
    assert not np.isnan(y).any()
    assert y.min() >= 0 and y.max() <= 5


@pytest.mark.parametrize("pair", datasets.MLQE_LANGUAGE_PAIRS)
@pytest.mark.parametrize("split", list(MLQE_ROWS))
def test_mlqe_shared(shared_dir, pair, split):
    _require(shared_dir, "mlqe-pe", pair, f"{split}.tsv")
    X, y = load_mlqe(pair, split)
    n = MLQE_ROWS[split]
    assert X.shape == (n, 2) and X.dtype == object
    assert y.shape == (n,) and y.dtype == np.float64
    assert _all_str(X)
    assert not np.isnan(y).any()
    # Stray quote characters must neither merge rows nor swallow tabs.
    assert not any("\t" in s or "\n" in s for s in X.ravel())

    _, y_mean = load_mlqe(pair, split, target="mean")
    assert not np.isnan(y_mean).any()
    assert y_mean.min() >= 0 and y_mean.max() <= 100


@pytest.mark.parametrize("corpus", list(VADER_ROWS))
def test_vader_shared(shared_dir, corpus):
    _require(shared_dir, "vader-sentiment", f"{corpus}_GroundTruth.txt")
    X, y = load_vader(corpus)
    n = VADER_ROWS[corpus]
    assert X.shape == (n,) and X.dtype == object
    assert y.shape == (n,) and y.dtype == np.float64
    assert _all_str(X)
    assert not np.isnan(y).any()
    assert y.min() >= -4 and y.max() <= 4


def test_as_frame_shared(shared_dir):
    _require(shared_dir, "stsb-en", "dev.csv")
    _require(shared_dir, "mlqe-pe", "ro-en", "dev.tsv")
    _require(shared_dir, "vader-sentiment", "tweets_GroundTruth.txt")

    X, y = load_stsb("dev", as_frame=True)
    assert list(X.columns) == ["sentence1", "sentence2"]
    assert y.name == "similarity_score" and y.dtype == np.float64
    np.testing.assert_array_equal(X.to_numpy(dtype=object), load_stsb("dev")[0])

    X, y = load_mlqe("ro-en", "dev", target="mean", as_frame=True)
    assert list(X.columns) == ["original", "translation"]
    assert y.name == "mean" and len(X) == 1000

    X, y = load_vader(as_frame=True)
    assert X.name == "text" and y.name == "sentiment" and len(X) == 4200


# --- argument validation ----------------------------------------------------


@pytest.mark.parametrize(
    "call, name, options",
    [
        (lambda: load_stsb("validation"), "split", ["train", "dev", "test"]),
        (lambda: load_mlqe("de-en"), "language_pair", ["en-de", "ro-en", "si-en"]),
        (lambda: load_mlqe("en-de", "valid"), "split", ["train", "dev", "test"]),
        (lambda: load_mlqe(target="median"), "target", ["z_mean", "mean"]),
        (lambda: load_vader("amazon"), "corpus", ["tweets", "movieReviewSnippets"]),
        (lambda: load_vader(None), "corpus", ["tweets", "movieReviewSnippets"]),
    ],
)
def test_bad_options_raise_before_any_file_access(call, name, options, monkeypatch):
    # Validation comes first, so it must not depend on finding the data.
    monkeypatch.setenv("RELISH_DATA_DIR", "/nonexistent/relish-data")
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter") as excinfo:
        call()
    for option in options:
        assert repr(option) in str(excinfo.value)


@pytest.mark.parametrize("call, name", [
    (lambda: load_stsb(data_dir=3), "data_dir"),
    (lambda: load_mlqe(data_dir=["/tmp"]), "data_dir"),
    (lambda: load_vader(as_frame="yes"), "as_frame"),
    (lambda: load_stsb(as_frame=1), "as_frame"),
    (lambda: get_data_dir(0), "data_dir"),
])
def test_bad_types_raise_before_any_file_access(call, name, monkeypatch):
    monkeypatch.setenv("RELISH_DATA_DIR", "/nonexistent/relish-data")
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        call()


# --- configuration and parsing on tiny files ----------------------------------


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def test_env_var_is_honoured_and_csv_quoting_parsed(tmp_path, monkeypatch):
    _write(
        tmp_path / "stsb-en" / "train.csv",
        '"A man, a plan, a canal.",Panama.,4.5\r\n'
        '"He said ""hi"".","She said ""hi"", twice.",0.0\r\n'
        "\r\n"
        "Plain one.,Plain two.,5.0\r\n",
    )
    monkeypatch.setenv("RELISH_DATA_DIR", str(tmp_path))
    assert get_data_dir() == tmp_path.resolve()

    X, y = load_stsb()
    assert X.tolist() == [
        ["A man, a plan, a canal.", "Panama."],
        ['He said "hi".', 'She said "hi", twice.'],
        ["Plain one.", "Plain two."],
    ]
    np.testing.assert_array_equal(y, [4.5, 0.0, 5.0])
    assert X.dtype == object and y.dtype == np.float64


def test_explicit_data_dir_wins_over_env_var(tmp_path, monkeypatch):
    _write(tmp_path / "stsb-en" / "dev.csv", "a,b,1.0\n")
    monkeypatch.setenv("RELISH_DATA_DIR", str(tmp_path / "elsewhere"))
    X, y = load_stsb("dev", data_dir=tmp_path)
    assert X.tolist() == [["a", "b"]] and y.tolist() == [1.0]


def test_mlqe_reads_unbalanced_quotes_literally(tmp_path):
    rows = [
        "index original translation scores mean z_scores z_mean model_scores".split(),
        ["0", '"Open quote.', 'Zitat "ü".', "[1]", "1.5", "[0]", "0.15", "0"],
        ["1", "Plain.", "Einfach.", "[90, 100]", "95.0", "[1, 1.2]", "1.1", "-0.2"],
        ["2", 'Says "hi', 'Sagt "hallo', "[50]", "50.0", "[0.0]", "0.0", "-0.3"],
    ]
    text = "".join("\t".join(row) + "\n" for row in rows)
    _write(tmp_path / "mlqe-pe" / "en-de" / "train.tsv", text)

    X, y = load_mlqe(data_dir=tmp_path)
    assert X.tolist() == [
        ['"Open quote.', 'Zitat "ü".'],
        ["Plain.", "Einfach."],
        ['Says "hi', 'Sagt "hallo'],
    ]
    np.testing.assert_array_equal(y, [0.15, 1.1, 0.0])
    _, y_mean = load_mlqe(data_dir=tmp_path, target="mean")
    np.testing.assert_array_equal(y_mean, [1.5, 95.0, 50.0])


def test_mlqe_wrong_field_count_is_an_error(tmp_path):
    _write(
        tmp_path / "mlqe-pe" / "si-en" / "dev.tsv",
        "index\toriginal\ttranslation\tmean\tz_mean\n0\ta\tb\t1.0\n",
    )
    with pytest.raises(ValueError, match="line 2"):
        load_mlqe("si-en", "dev", data_dir=tmp_path)


def test_vader_parsing_crlf_blank_lines_and_tabs_in_text(tmp_path):
    _write(
        tmp_path / "vader-sentiment" / "movieReviewSnippets_GroundTruth.txt",
        "1\t2.5\tGood &amp; fun\r\n\r\n2\t-1.25\t tab\tinside \r\n3\t0\tlast",
    )
    X, y = load_vader("movieReviewSnippets", data_dir=tmp_path)
    # Split on the first two tabs only; the text is kept raw, unstripped.
    assert X.tolist() == ["Good &amp; fun", " tab\tinside ", "last"]
    np.testing.assert_array_equal(y, [2.5, -1.25, 0.0])


def test_vader_malformed_line_is_an_error(tmp_path):
    _write(
        tmp_path / "vader-sentiment" / "tweets_GroundTruth.txt",
        "1\t2.0\tok\n2 3.0 no tabs\n",
    )
    with pytest.raises(ValueError, match="line 2"):
        load_vader(data_dir=tmp_path)


def test_missing_file_in_existing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="stsb-en"):
        load_stsb("test", data_dir=tmp_path)


def test_get_data_dir_explicit_argument(tmp_path):
    assert get_data_dir(tmp_path) == tmp_path.resolve()
    assert get_data_dir(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(FileNotFoundError, match="RELISH_DATA_DIR"):
        get_data_dir(tmp_path / "missing")


def test_get_data_dir_env_var_pointing_nowhere(tmp_path, monkeypatch):
    monkeypatch.setenv("RELISH_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="RELISH_DATA_DIR"):
        get_data_dir()


def test_get_data_dir_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("RELISH_DATA_DIR", raising=False)
    cwd = tmp_path / "a" / "project"
    repo = tmp_path / "b" / "repo"
    cwd.mkdir(parents=True)
    repo.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(datasets, "_REPO_ROOT", repo)

    with pytest.raises(FileNotFoundError) as excinfo:
        get_data_dir()
    message = str(excinfo.value)
    assert "RELISH_DATA_DIR" in message and "data_dir" in message
    assert "stsb-en" in message and "mlqe-pe" in message
    assert "vader-sentiment" in message

    # ../shared/data beside the repository root is found...
    repo_data = tmp_path / "b" / "shared" / "data"
    repo_data.mkdir(parents=True)
    assert get_data_dir() == repo_data.resolve()

    # ...but ../shared/data beside the working directory comes first.
    cwd_data = tmp_path / "a" / "shared" / "data"
    cwd_data.mkdir(parents=True)
    assert get_data_dir() == cwd_data.resolve()
