"""The benchmarks' real text-regression data sets, read from a data directory.

The data directory (see :func:`get_data_dir`) is laid out as::

    <data_dir>/
        stsb-en/{train,dev,test}.csv
        mlqe-pe/{en-de,ro-en,si-en}/{train,dev,test}.tsv
        vader-sentiment/{tweets,movieReviewSnippets}_GroundTruth.txt

- :func:`load_stsb` -- STS Benchmark (English), sentence-pair similarity 0-5.
- :func:`load_mlqe` -- MLQE-PE (WMT20 QE task 1), translation quality.
- :func:`load_vader` -- the VADER tweet and movie-review ground truths.

The tweets also ship with the package
(:func:`sklearn_relish.datasets.load_vader_tweets`); :func:`load_vader`
parses the data directory's copy with the same parser.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from sklearn.utils._param_validation import StrOptions, validate_params

from sklearn_relish.datasets import import_pandas, text_lines, object_array, parse_vader

__all__ = ["get_data_dir", "load_mlqe", "load_stsb", "load_vader"]

DATA_DIR_ENV = "RELISH_DATA_DIR"

# The repository root (the directory that holds ``benchmarks``);
# ``../shared/data`` next to it is the project's shared data directory in a
# development checkout.
_REPO_ROOT = Path(__file__).resolve().parent.parent

STSB_SPLITS = ("train", "dev", "test")
MLQE_LANGUAGE_PAIRS = ("en-de", "ro-en", "si-en")
MLQE_SPLITS = ("train", "dev", "test")
MLQE_TARGETS = ("z_mean", "mean")
VADER_CORPORA = ("tweets", "movieReviewSnippets")

_EXPECTED_LAYOUT = (
    "stsb-en/{train,dev,test}.csv, "
    "mlqe-pe/{en-de,ro-en,si-en}/{train,dev,test}.tsv and "
    "vader-sentiment/{tweets,movieReviewSnippets}_GroundTruth.txt"
)

_DATA_DIR = [str, os.PathLike, None]


def _read_text(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return f.read()


def _data_file(data_dir, *parts):
    """Path of one data file under the data directory, or a clear error."""
    root = get_data_dir(data_dir)
    path = root.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(
            f"Data file {path} not found. The data directory {root} should "
            f"hold {_EXPECTED_LAYOUT}."
        )
    return path


@validate_params({"data_dir": _DATA_DIR}, prefer_skip_nested_validation=True)
def get_data_dir(data_dir=None):
    """Locate the directory holding the real text-regression data sets.

    The first of these that applies wins:

    1. ``data_dir``, if given;
    2. the environment variable ``RELISH_DATA_DIR``, if set and not empty;
    3. ``../shared/data`` relative to the current working directory;
    4. ``../shared/data`` relative to the repository root (the directory that
       holds ``benchmarks``).

    Parameters
    ----------
    data_dir : str or path-like, default=None
        Explicit data directory. It must exist.

    Returns
    -------
    path : pathlib.Path
        The data directory, resolved to an absolute path.

    Raises
    ------
    FileNotFoundError
        If ``data_dir`` or ``RELISH_DATA_DIR`` names a missing directory, or if
        neither is given and no default directory exists. The message names
        both ways to configure it and the expected layout.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from benchmarks.datasets import get_data_dir
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     get_data_dir(tmp) == Path(tmp).resolve()
    True
    """
    hint = (
        f"Set the {DATA_DIR_ENV} environment variable or pass data_dir= to a "
        f"directory that holds {_EXPECTED_LAYOUT}."
    )
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"data_dir={str(data_dir)!r} is not a directory. {hint}"
            )
        return path.resolve()

    env = os.environ.get(DATA_DIR_ENV, "")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"{DATA_DIR_ENV}={env!r} is not a directory. {hint}"
            )
        return path.resolve()

    candidates = [
        Path.cwd() / ".." / "shared" / "data",
        _REPO_ROOT / ".." / "shared" / "data",
    ]
    for path in candidates:
        if path.is_dir():
            return path.resolve()
    tried = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"No data directory found: data_dir was not given, {DATA_DIR_ENV} is "
        f"not set and none of the defaults exists ({tried}). {hint}"
    )


@validate_params(
    {"split": [StrOptions(set(STSB_SPLITS))], "data_dir": _DATA_DIR, "as_frame": ["boolean"]},
    prefer_skip_nested_validation=True,
)
def load_stsb(split="train", *, data_dir=None, as_frame=False):
    """Load one split of the STS Benchmark (English): sentence-pair similarity.

    Reads ``stsb-en/{split}.csv`` under the data directory (see
    :func:`get_data_dir`): standard CSV, no header, columns ``sentence1``,
    ``sentence2`` and ``similarity_score`` (0.0 ... 5.0).

    =========   =====   =====   =====
    split       train   dev     test
    =========   =====   =====   =====
    Samples     5749    1500    1379
    =========   =====   =====   =====

    Parameters
    ----------
    split : {"train", "dev", "test"}, default="train"
        Which split to load.
    data_dir : str or path-like, default=None
        Data directory; see :func:`get_data_dir`.
    as_frame : bool, default=False
        If True, return a DataFrame with columns ``sentence1`` and
        ``sentence2`` and a Series named ``similarity_score``.

    Returns
    -------
    X : ndarray of object (str) of shape (n_samples, 2) or DataFrame
        The sentence pairs.
    y : ndarray of float64 of shape (n_samples,) or Series
        Similarity score, 0 (unrelated) ... 5 (equivalent).

    Raises
    ------
    ValueError
        If ``split`` is not one of the valid splits.
    FileNotFoundError
        If the data directory or the file cannot be found.

    Examples
    --------
    >>> from benchmarks.datasets import load_stsb
    >>> X, y = load_stsb("dev")  # doctest: +SKIP
    >>> X.shape, y.shape  # doctest: +SKIP
    ((1500, 2), (1500,))
    """
    path = _data_file(data_dir, "stsb-en", f"{split}.csv")
    pairs, scores = [], []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 3:
                raise ValueError(
                    f"{path}, record {lineno}: expected 3 fields "
                    f"(sentence1, sentence2, similarity_score), got {len(row)}."
                )
            pairs.append(row[0])
            pairs.append(row[1])
            scores.append(float(row[2]))
    X = object_array(pairs, shape=(len(scores), 2))
    y = np.asarray(scores, dtype=np.float64)
    if as_frame:
        pd = import_pandas()
        X = pd.DataFrame(X, columns=["sentence1", "sentence2"])
        y = pd.Series(y, name="similarity_score")
    return X, y


@validate_params(
    {
        "language_pair": [StrOptions(set(MLQE_LANGUAGE_PAIRS))],
        "split": [StrOptions(set(MLQE_SPLITS))],
        "target": [StrOptions(set(MLQE_TARGETS))],
        "data_dir": _DATA_DIR,
        "as_frame": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def load_mlqe(
    language_pair="en-de",
    split="train",
    *,
    target="z_mean",
    data_dir=None,
    as_frame=False,
):
    """Load MLQE-PE direct-assessment data: machine-translation quality.

    Reads ``mlqe-pe/{language_pair}/{split}.tsv`` under the data directory
    (see :func:`get_data_dir`), the WMT20 quality-estimation task 1 data
    (sheffieldnlp/mlqe-pe, CC0 1.0). Each sample is a source sentence and
    its machine translation, scored by annotators.

    The files are tab-separated with a header and *no* quoting: sentences
    contain unbalanced ``"`` characters, so a CSV reader with default
    quoting silently merges or drops rows. Lines are split on tabs here.

    =========   =====   =====   =====
    split       train   dev     test
    =========   =====   =====   =====
    Samples     7000    1000    1000
    =========   =====   =====   =====

    Parameters
    ----------
    language_pair : {"en-de", "ro-en", "si-en"}, default="en-de"
        Source and target language.
    split : {"train", "dev", "test"}, default="train"
        Which split to load.
    target : {"z_mean", "mean"}, default="z_mean"
        ``"z_mean"``: mean of the per-annotator z-standardised scores (the
        official WMT20 target); ``"mean"``: mean raw score on 0 ... 100.
    data_dir : str or path-like, default=None
        Data directory; see :func:`get_data_dir`.
    as_frame : bool, default=False
        If True, return a DataFrame with columns ``original`` and
        ``translation`` and a Series named after ``target``.

    Returns
    -------
    X : ndarray of object (str) of shape (n_samples, 2) or DataFrame
        Columns: original (source) sentence, translation.
    y : ndarray of float64 of shape (n_samples,) or Series
        The chosen target.

    Raises
    ------
    ValueError
        If an option is invalid, or a line has the wrong number of fields.
    FileNotFoundError
        If the data directory or the file cannot be found.

    Examples
    --------
    >>> from benchmarks.datasets import load_mlqe
    >>> X, y = load_mlqe("ro-en", "test")  # doctest: +SKIP
    >>> X.shape, y.shape  # doctest: +SKIP
    ((1000, 2), (1000,))
    """
    path = _data_file(data_dir, "mlqe-pe", language_pair, f"{split}.tsv")

    lines = text_lines(_read_text(path))
    header = lines[0].split("\t")
    wanted = ("original", "translation", target)
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(
            f"{path}: header lacks column(s) {missing}; got {header}."
        )
    i_orig, i_trans, i_target = (header.index(c) for c in wanted)

    pairs, scores = [], []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ValueError(
                f"{path}, line {lineno}: expected {len(header)} tab-separated "
                f"fields, got {len(fields)}."
            )
        pairs.append(fields[i_orig])
        pairs.append(fields[i_trans])
        scores.append(float(fields[i_target]))
    X = object_array(pairs, shape=(len(scores), 2))
    y = np.asarray(scores, dtype=np.float64)
    if as_frame:
        pd = import_pandas()
        X = pd.DataFrame(X, columns=["original", "translation"])
        y = pd.Series(y, name=target)
    return X, y


@validate_params(
    {"corpus": [StrOptions(set(VADER_CORPORA))], "data_dir": _DATA_DIR, "as_frame": ["boolean"]},
    prefer_skip_nested_validation=True,
)
def load_vader(corpus="tweets", *, data_dir=None, as_frame=False):
    """Load a VADER ground-truth corpus from the data directory.

    Reads ``vader-sentiment/{corpus}_GroundTruth.txt`` under the data
    directory (see :func:`get_data_dir`): tab-separated ``id``, ``score``,
    ``text``, where the score is the mean of 20 or more human ratings of
    sentiment intensity on -4 ... +4. Texts are raw (HTML entities kept).

    ====================   =======
    corpus                 Samples
    ====================   =======
    tweets                 4200
    movieReviewSnippets    10605
    ====================   =======

    Parameters
    ----------
    corpus : {"tweets", "movieReviewSnippets"}, default="tweets"
        Which corpus to load.
    data_dir : str or path-like, default=None
        Data directory; see :func:`get_data_dir`.
    as_frame : bool, default=False
        If True, return a Series named ``"text"`` and a Series named
        ``"sentiment"``.

    Returns
    -------
    X : ndarray of object (str) of shape (n_samples,) or Series
        The texts.
    y : ndarray of float64 of shape (n_samples,) or Series
        Mean sentiment rating.

    Raises
    ------
    ValueError
        If ``corpus`` is invalid or the file is malformed.
    FileNotFoundError
        If the data directory or the file cannot be found.

    See Also
    --------
    sklearn_relish.datasets.load_vader_tweets : The tweets, shipped with the
        package.

    Examples
    --------
    >>> from benchmarks.datasets import load_vader
    >>> X, y = load_vader("movieReviewSnippets")  # doctest: +SKIP
    >>> X.shape, float(y.min()) >= -4  # doctest: +SKIP
    ((10605,), True)
    """
    path = _data_file(data_dir, "vader-sentiment", f"{corpus}_GroundTruth.txt")
    _, y, X = parse_vader(_read_text(path), source=str(path))
    if as_frame:
        pd = import_pandas()
        X = pd.Series(X, name="text")
        y = pd.Series(y, name="sentiment")
    return X, y
