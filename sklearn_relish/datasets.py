"""The text-regression data set that ships with the package.

- :func:`load_vader_tweets` -- 4,200 tweets with human sentiment-intensity
  scores (Hutto & Gilbert, ICWSM 2014; MIT licence). It loads anywhere: no
  download and no data directory.

The benchmarks' loaders for the other data sets (STS-B, MLQE-PE, the VADER
movie reviews) live in the repository's ``benchmarks/datasets.py``, outside
the installed package.
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
from sklearn.utils import Bunch
from sklearn.utils._param_validation import validate_params

# The parsers are public for the benchmarks' loaders of the other sets
# (benchmarks/datasets.py), which read the same formats.
__all__ = ["import_pandas", "load_vader_tweets", "object_array", "parse_vader", "text_lines"]

# Hard-coded rather than ``__package__``: the package must be importable by
# name for ``importlib.resources`` even when this file is imported on its own
# (e.g. by ``pytest --doctest-modules``).
_PACKAGE = "sklearn_relish"
_VADER_TWEETS_FILE = "vader_tweets.tsv.gz"

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


def text_lines(text):
    """Split ``text`` into lines on LF, CRLF or CR, without the line ends.

    ``str.splitlines`` is not used because it also splits on characters such
    as U+2028 or U+0085 that may legitimately occur inside raw texts.
    """
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse_vader(text, source="<string>"):
    """Parse VADER ground-truth text: ``id<TAB>score<TAB>text`` per line.

    Blank lines are skipped; each other line is split on its first two tabs
    only, so a tab inside the text stays part of it. The text is kept raw.
    The benchmarks' ``load_vader`` reads the VADER files of the data
    directory with this parser too.

    Returns
    -------
    ids : ndarray of int64, shape (n_samples,)
    scores : ndarray of float64, shape (n_samples,)
    texts : ndarray of object (str), shape (n_samples,)
    """
    ids, scores, texts = [], [], []
    for lineno, line in enumerate(text_lines(text), start=1):
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
        object_array(texts),
    )


def object_array(items, shape=None):
    """A 1-D (or given-shape) object ndarray holding ``items`` as they are."""
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    if shape is not None:
        arr = arr.reshape(shape)
    return arr


def import_pandas():
    """pandas, or an ImportError that says how to install it."""
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is installed here
        raise ImportError("as_frame=True requires pandas.") from exc
    return pd


@validate_params(
    {"return_X_y": ["boolean"], "as_frame": ["boolean"]},
    prefer_skip_nested_validation=True,
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

    Raises
    ------
    sklearn.utils._param_validation.InvalidParameterError
        If ``return_X_y`` or ``as_frame`` is not a bool (a ``ValueError``
        and a ``TypeError``).

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
    # "utf-8-sig" strips a byte-order mark if there is one.
    text = gzip.decompress(resource.read_bytes()).decode("utf-8-sig")
    ids, target, data = parse_vader(text, source="vader_tweets.tsv.gz")

    frame = None
    if as_frame:
        pd = import_pandas()
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
