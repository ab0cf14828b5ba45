"""Real text-regression data sets.

One data set ships with the package and loads anywhere:

- :func:`load_vader_tweets` -- 4,200 tweets with human sentiment-intensity
  scores (Hutto & Gilbert, ICWSM 2014; MIT licence).

The others are read from a local data directory (see :func:`get_data_dir`),
laid out as::

    <data_dir>/
        stsb-en/{train,dev,test}.csv
        mlqe-pe/{en-de,ro-en,si-en}/{train,dev,test}.tsv
        vader-sentiment/{tweets,movieReviewSnippets}_GroundTruth.txt

- :func:`load_stsb` -- STS Benchmark (English), sentence-pair similarity 0-5.
- :func:`load_mlqe` -- MLQE-PE (WMT20 QE task 1), translation quality.
- :func:`load_vader` -- the VADER tweet and movie-review ground truths.
"""

from __future__ import annotations

import csv
import gzip
import os
from importlib import resources
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

__all__ = [
    "get_data_dir",
    "load_mlqe",
    "load_stsb",
    "load_vader",
    "load_vader_tweets",
]

DATA_DIR_ENV = "RELISH_DATA_DIR"

# Hard-coded rather than ``__package__``: the package must be importable by
# name for ``importlib.resources`` even when this file is imported on its own
# (e.g. by ``pytest --doctest-modules``).
_PACKAGE = "sklearn_relish"
_VADER_TWEETS_FILE = "vader_tweets.tsv.gz"

# The parent of the package directory; ``../shared/data`` next to it is the
# project's shared data directory in a development checkout.
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

_VADER_TWEETS_DESCR = """\
VADER tweets sentiment-intensity data set
-----------------------------------------

4,200 tweets and tweet-like texts from the ground truth of VADER (Hutto &
Gilbert, ICWSM 2014), each scored with the mean of 20 or more independent
human ratings of sentiment intensity on a scale from -4 (extremely negative)
to +4 (extremely positive); observed scores span -3.75 to 3.55. Usernames
are anonymised as ``@anonymous`` and links as ``http://url_removed``; the
texts are otherwise kept raw, so HTML entities such as ``&amp;``, ``&lt;``
and ``&gt;`` appear exactly as in the source and leading spaces are kept.
There is no official train/test split: use a seeded random split or K-fold
and say which. The file is ``tweets_GroundTruth.txt`` from
``additional_resources/hutto_ICWSM_2014.tar.gz`` in vaderSentiment 3.3.2,
shipped unchanged (gzipped) under the MIT licence, Copyright (c) 2016
C.J. Hutto (see ``sklearn_relish/data/LICENSE-vader.txt``).

Citation: C.J. Hutto and Eric Gilbert. VADER: A Parsimonious Rule-based
Model for Sentiment Analysis of Social Media Text. Eighth International
Conference on Weblogs and Social Media (ICWSM-14), Ann Arbor, MI, June 2014.
"""


def _check_option(name, value, valid):
    """Raise a ValueError naming the valid options if ``value`` is not one."""
    if not (isinstance(value, str) and value in valid):
        options = ", ".join(repr(v) for v in valid)
        raise ValueError(f"{name} must be one of {options}; got {value!r}.")


def _lines(text):
    """Split ``text`` into lines on LF, CRLF or CR, without the line ends.

    ``str.splitlines`` is not used because it also splits on characters such
    as U+2028 or U+0085 that may legitimately occur inside raw texts.
    """
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _parse_vader(text, source="<string>"):
    """Parse VADER ground-truth text: ``id<TAB>score<TAB>text`` per line.

    Shared by :func:`load_vader_tweets` and :func:`load_vader`. Blank lines
    are skipped; each other line is split on its first two tabs only, so a
    tab inside the text would stay part of it. The text is kept raw.

    Returns
    -------
    ids : ndarray of int64, shape (n_samples,)
    scores : ndarray of float64, shape (n_samples,)
    texts : ndarray of object (str), shape (n_samples,)
    """
    ids, scores, texts = [], [], []
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if len(fields) != 3:
            raise ValueError(
                f"{source}, line {lineno}: expected 'id<TAB>score<TAB>text', "
                f"got {line[:80]!r}."
            )
        try:
            ids.append(int(fields[0]))
            scores.append(float(fields[1]))
        except ValueError as exc:
            raise ValueError(
                f"{source}, line {lineno}: bad id or score in {line[:80]!r}."
            ) from exc
        texts.append(fields[2])
    return (
        np.asarray(ids, dtype=np.int64),
        np.asarray(scores, dtype=np.float64),
        _object_array(texts),
    )


def _object_array(items, shape=None):
    """A 1-D (or given-shape) object ndarray holding ``items`` as they are."""
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    if shape is not None:
        arr = arr.reshape(shape)
    return arr


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


def _import_pandas():
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is installed here
        raise ImportError("as_frame=True requires pandas.") from exc
    return pd


def get_data_dir(data_dir=None):
    """Locate the directory holding the real text-regression data sets.

    The first of these that applies wins:

    1. ``data_dir``, if given;
    2. the environment variable ``RELISH_DATA_DIR``, if set and not empty;
    3. ``../shared/data`` relative to the current working directory;
    4. ``../shared/data`` relative to the repository root (the directory that
       holds the ``sklearn_relish`` package).

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
    >>> from sklearn_relish.datasets import get_data_dir
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


def load_vader_tweets(*, return_X_y=False, as_frame=False):
    """Load the VADER tweets sentiment-intensity data set (regression).

    4,200 tweets, each with the mean of 20 or more human ratings of its
    sentiment intensity on a -4 ... +4 scale (Hutto & Gilbert, ICWSM 2014).
    The data ship with the package, so no download or data directory is
    needed. Texts are raw: HTML entities such as ``&amp;`` are kept.

    =================   ===================
    Samples total       4200
    Features            1 (raw text)
    Target              real, -4 ... +4
    =================   ===================

    Parameters
    ----------
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.
    as_frame : bool, default=False
        If True, ``data`` is a pandas Series named ``"text"``, ``target`` a
        Series named ``"sentiment"`` and ``frame`` a DataFrame with both
        columns.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the attributes:

        data : ndarray of object (str) of shape (4200,) or Series
            The texts.
        target : ndarray of float64 of shape (4200,) or Series
            Mean sentiment rating.
        frame : DataFrame of shape (4200, 2) or None
            Columns ``text`` and ``sentiment``; only when ``as_frame=True``.
        feature_names : list
            ``["text"]``.
        target_names : list
            ``["sentiment"]``.
        DESCR : str
            Description, licence and citation.
        ids : ndarray of int64 of shape (4200,)
            The tweet ids of the source file (1 ... 4200).

    (data, target) : tuple if ``return_X_y`` is True

    See Also
    --------
    load_vader : The same tweets, or the movie-review snippets, read from
        the data directory.

    References
    ----------
    .. [1] C.J. Hutto and E. Gilbert. "VADER: A Parsimonious Rule-based Model
       for Sentiment Analysis of Social Media Text." ICWSM-14, 2014.

    Examples
    --------
    >>> from sklearn_relish.datasets import load_vader_tweets
    >>> tweets = load_vader_tweets()
    >>> tweets.data.shape, tweets.target.dtype
    ((4200,), dtype('float64'))
    >>> print(tweets.data[1], tweets.target[1])
    Yay. Another good phone interview. 1.443298969
    >>> X, y = load_vader_tweets(return_X_y=True, as_frame=True)
    >>> X.name, y.name
    ('text', 'sentiment')
    """
    resource = resources.files(_PACKAGE) / "data" / _VADER_TWEETS_FILE
    # "utf-8-sig" strips a BOM if there is one, as _read_text does.
    text = gzip.decompress(resource.read_bytes()).decode("utf-8-sig")
    ids, target, data = _parse_vader(text, source="vader_tweets.tsv.gz")

    frame = None
    if as_frame:
        pd = _import_pandas()
        frame = pd.DataFrame({"text": data, "sentiment": target})
        data, target = frame["text"], frame["sentiment"]

    if return_X_y:
        return data, target
    return Bunch(
        data=data,
        target=target,
        frame=frame,
        feature_names=["text"],
        target_names=["sentiment"],
        DESCR=_VADER_TWEETS_DESCR,
        ids=ids,
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
    >>> from sklearn_relish.datasets import load_stsb
    >>> X, y = load_stsb("dev")  # doctest: +SKIP
    >>> X.shape, y.shape  # doctest: +SKIP
    ((1500, 2), (1500,))
    """
    _check_option("split", split, STSB_SPLITS)
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
    X = _object_array(pairs, shape=(len(scores), 2))
    y = np.asarray(scores, dtype=np.float64)
    if as_frame:
        pd = _import_pandas()
        X = pd.DataFrame(X, columns=["sentence1", "sentence2"])
        y = pd.Series(y, name="similarity_score")
    return X, y


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
    >>> from sklearn_relish.datasets import load_mlqe
    >>> X, y = load_mlqe("ro-en", "test")  # doctest: +SKIP
    >>> X.shape, y.shape  # doctest: +SKIP
    ((1000, 2), (1000,))
    """
    _check_option("language_pair", language_pair, MLQE_LANGUAGE_PAIRS)
    _check_option("split", split, MLQE_SPLITS)
    _check_option("target", target, MLQE_TARGETS)
    path = _data_file(data_dir, "mlqe-pe", language_pair, f"{split}.tsv")

    lines = _lines(_read_text(path))
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
    X = _object_array(pairs, shape=(len(scores), 2))
    y = np.asarray(scores, dtype=np.float64)
    if as_frame:
        pd = _import_pandas()
        X = pd.DataFrame(X, columns=["original", "translation"])
        y = pd.Series(y, name=target)
    return X, y


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
    load_vader_tweets : The tweets, shipped with the package.

    Examples
    --------
    >>> from sklearn_relish.datasets import load_vader
    >>> X, y = load_vader("movieReviewSnippets")  # doctest: +SKIP
    >>> X.shape, float(y.min()) >= -4  # doctest: +SKIP
    ((10605,), True)
    """
    _check_option("corpus", corpus, VADER_CORPORA)
    path = _data_file(data_dir, "vader-sentiment", f"{corpus}_GroundTruth.txt")
    _, y, X = _parse_vader(_read_text(path), source=str(path))
    if as_frame:
        pd = _import_pandas()
        X = pd.Series(X, name="text")
        y = pd.Series(y, name="sentiment")
    return X, y
