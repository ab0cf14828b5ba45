"""Validate raw input and render it into prompts.

``X`` is either one field per row (a list, tuple, 1-D array or pandas Series)
or several fields per row (an ``(n, k)`` array, a list of k-tuples, or a
k-column DataFrame). Each row is rendered into one prompt through a template
whose fields are ``{0}``, ``{1}``, ... or, for a DataFrame, the column names.

A field is usually text, but any value with a text form may be rendered:
numbers, booleans, dates and categories go through ``format`` with the
template's format spec (``{price:.2f}``, ``{day:%Y-%m-%d}``). Only the
columns the template uses are checked and needed. A missing value (None,
NaN, NA, NaT) in a used column is an error, or is written as a fixed text
such as ``"unknown"`` (see :func:`check_fields`).
"""

from __future__ import annotations

import numbers
import string
import warnings
from collections.abc import Mapping, Set

import numpy as np

__all__ = ["Missing", "check_fields", "default_template", "render_prompts",
           "shorten_fields", "template_columns", "template_fields", "validate_table",
           "validate_texts"]


def default_template(n_fields, names=None):
    """The prompt used when ``prompt_template`` is None.

    It follows the authors' released code (``Input: ... Predict a score``);
    several fields are labelled A, B, ... (or by column name).

    >>> print(default_template(1))
    Input:
    {0}
    <BLANKLINE>
    Predict a score:
    >>> print(default_template(2))
    Input:
    A: {0}
    B: {1}
    <BLANKLINE>
    Predict a score:
    """
    if n_fields == 1:
        body = "{0}"
    else:
        labels = names if names is not None else [chr(ord("A") + i) for i in range(n_fields)]
        # A column name is literal text here: its braces must not open a field.
        labels = [str(label).replace("{", "{{").replace("}", "}}") for label in labels]
        body = "\n".join(f"{label}: {{{i}}}" for i, label in enumerate(labels))
    return f"Input:\n{body}\n\nPredict a score:"


def _is_position(name):
    """Whether a field name is a position (``{0}``) rather than a name."""
    return name.isascii() and name.isdigit()


def _parse(template, whole):
    """``string.Formatter().parse`` with errors that name the template."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"prompt_template={whole!r} is not a valid format "
                         f"string: {exc}. Write literal braces as {{{{ and }}}}.") from exc
    for _, field, _, conversion in parsed:
        if field == "":
            raise ValueError(
                f"prompt_template={whole!r} uses an empty field '{{}}'; name "
                "the fields by position ({0}, {1}) or by column name.")
        if field is not None and conversion not in (None, "r", "s", "a"):
            raise ValueError(
                f"prompt_template={whole!r} uses the unknown conversion "
                f"'!{conversion}' in the field {{{field}!{conversion}}}; only "
                "!r, !s and !a exist.")
    return parsed


def _fields(template, whole):
    fields = []
    for _, field, spec, _ in _parse(template, whole):
        if field is not None:
            fields.append(field)
            if spec:  # a nested field: "{0:>{1}}"
                fields.extend(_fields(spec, whole))
    return fields


def template_fields(template):
    """Names of the replacement fields of a format string, in order.

    Fields nested in a format spec (``{0:>{1}}``) are included.

    >>> template_fields("A: {0}\\nB: {1}")
    ['0', '1']
    """
    return _fields(template, template)


def _positional(template, index_of, whole):
    """The template with every field named by its position.

    ``{title}`` becomes ``{0}`` when ``title`` is the first column, so the
    template is filled with ``str.format(*row)``: a column name such as
    ``a.b`` or ``x[1]`` is looked up whole, never as an attribute or item.
    """
    out = []
    for literal, field, spec, conversion in _parse(template, whole):
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is None:
            continue
        out.append(f"{{{index_of[field]}")
        if conversion:
            out.append("!" + conversion)
        if spec:
            out.append(":" + _positional(spec, index_of, whole))
        out.append("}")
    return "".join(out)


def _describe(value):
    return f"{type(value).__name__} {value!r}"[:80]


def _is_missing(value):
    if value is None:
        return True
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(value, (np.datetime64, np.timedelta64)):
        return bool(np.isnat(value))
    return isinstance(value, numbers.Real) and value != value


def _is_row(item):
    return isinstance(item, (tuple, list)) or (
        isinstance(item, np.ndarray) and item.ndim == 1)


def validate_table(X):
    """Check the shape of raw input and return it as an ``(n, k)`` object array.

    The cells are not checked here (see :func:`check_fields`): only the
    columns a template uses need to be valid.

    Returns
    -------
    values : ndarray of object, shape (n, k)
    column_names : list of str or None
        The DataFrame's column names, if X was a DataFrame whose column
        names are all strings (as scikit-learn's ``feature_names_in_``).

    >>> validate_table(["a", "b"])[0].shape
    (2, 1)
    """
    if isinstance(X, str):
        raise ValueError(
            "Iterable over raw text documents expected, string object received. "
            "Wrap a single text in a list: predict([text]).")
    if isinstance(X, (bytes, bytearray)):
        raise ValueError(
            "Iterable over raw text documents expected, bytes object received. "
            "Decode it and wrap it in a list: predict([data.decode('utf-8')]).")
    if isinstance(X, (Set, Mapping)):
        hint = ("a set has no order, so predictions could not be matched to "
                "texts; pass a list." if isinstance(X, Set) else
                "a mapping is not a sequence of texts; pass a list of texts, or "
                "pd.DataFrame(X) for a dict of text columns.")
        raise TypeError(f"X must be a list, array, Series or DataFrame of str, "
                        f"got {type(X).__name__}: {hint}")
    column_names = None
    if hasattr(X, "columns") and hasattr(X, "iloc"):  # pandas DataFrame
        column_names = _column_names(X.columns)
        values = X.to_numpy(dtype=object)
    elif hasattr(X, "to_numpy"):  # pandas Series, Index
        values = X.to_numpy(dtype=object)
    elif isinstance(X, np.ndarray):
        if X.dtype.kind in "biufc":
            # Nothing is wrong with numbers in a prompt (a DataFrame column
            # with a template is the usual way), but an array of nothing
            # but numbers is more often token ids or features by mistake.
            warnings.warn(
                f"X is an array of numbers ({X.dtype}), not text: each value is written "
                "into the prompt as text (7 -> '7'). If these are token ids or numeric "
                "features, RelishRegressor reads them as words; pass text (or a DataFrame "
                "with a prompt_template naming the columns) to silence this warning.",
                # validate_table <- _prompts <- fit <- _fit_context <- caller
                UserWarning, stacklevel=5)
        values = X.astype(object) if X.dtype.kind in "US" else X
    else:
        try:
            items = list(X)
        except TypeError:
            raise TypeError(
                f"X must be a list, array, Series or DataFrame of str, got "
                f"{type(X).__name__}.") from None
        if items and all(_is_row(item) for item in items):
            widths = [len(item) for item in items]
            if len(set(widths)) != 1:
                odd = next(i for i, w in enumerate(widths) if w != widths[0])
                raise ValueError(
                    f"Rows of X have different numbers of text fields "
                    f"({sorted(set(widths))}): row 0 has {widths[0]} but row "
                    f"{odd} has {widths[odd]}; every row needs the same number.")
            values = np.empty((len(items), widths[0]), dtype=object)
            for i, item in enumerate(items):
                values[i, :] = list(item)
        else:
            # One by one: numpy must not broadcast a row into several cells.
            values = np.empty(len(items), dtype=object)
            for i, item in enumerate(items):
                values[i] = item
    if values.ndim == 1:
        values = values.reshape(-1, 1)
    if values.ndim != 2:
        raise ValueError(
            f"X must be 1-D (one text per row) or 2-D (several text fields per "
            f"row); got an array with {values.ndim} dimensions, shape "
            f"{values.shape}.")
    if values.shape[0] == 0:
        raise ValueError("X is empty: at least one text is needed.")
    if values.shape[1] == 0:
        raise ValueError(f"X has {values.shape[0]} rows but no text field (shape "
                         f"{values.shape}).")
    if values.dtype != object:
        values = values.astype(object)
    return values, column_names


def _column_names(columns):
    """scikit-learn's rule: names when every column name is a str, none when
    no column name is; a mix is refused."""
    names = list(columns)
    is_str = [isinstance(c, str) for c in names]
    if not any(is_str):
        return None
    if not all(is_str):
        kinds = sorted({type(c).__name__ for c in names})
        raise TypeError(
            f"X's column names mix str with {', '.join(k for k in kinds if k != 'str')}; "
            "feature names are only supported when all column names are str. "
            "Convert them, for example X.columns = X.columns.astype(str).")
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if duplicated:
        raise ValueError(
            f"X has duplicated column name(s) {duplicated}; every text "
            "column needs a distinct name. Rename them first, for example "
            "X.columns = [...].")
    return names


def validate_texts(X, missing="error"):
    """:func:`validate_table` and :func:`check_fields` on every column.

    Returns
    -------
    fields : ndarray of object, shape (n, k)
    column_names : list of str or None

    >>> validate_texts(["a", "b"])[0].shape
    (2, 1)
    """
    values, column_names = validate_table(X)
    return check_fields(values, column_names, missing=missing), column_names


class Missing:
    """Stands for a missing value in a prompt: renders as ``text`` whatever
    the field's format spec or conversion.

    >>> "{0:.2f} / {0!r}".format(Missing("unknown"))
    'unknown / unknown'
    """

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text

    def __format__(self, spec):
        return self.text

    def __str__(self):
        return self.text

    __repr__ = __str__

    def __eq__(self, other):
        return isinstance(other, Missing) and other.text == self.text

    def __hash__(self):
        return hash(("Missing", self.text))


def _where(row, col, column_names, n_fields):
    return f"row {row}" + (f", column {column_names[col]!r}" if column_names
                           else (f", field {col}" if n_fields > 1 else ""))


def check_fields(values, column_names=None, used=None, missing="error"):
    """Check the cells a template reads; return them ready to render.

    Text is checked to be valid Unicode; numbers, booleans, dates,
    categories and other scalars are kept as they are, for the template's
    format spec. Containers and bytes are refused.

    Parameters
    ----------
    values : ndarray of object, shape (n, k)
        :func:`validate_table`.
    column_names : list of str or None
        For the messages.
    used : sequence of int or None
        The columns the template reads; None: all. The others are left
        unchecked (and unread).
    missing : "error" or str
        A missing value (None, NaN, pandas NA or NaT) in a used column is an
        error, or is written as this text (a :class:`Missing`).

    Returns
    -------
    ndarray of object, shape (n, k)
        A copy where missing values were replaced, else ``values`` itself.
    """
    used = range(values.shape[1]) if used is None else used
    out = values
    for col in used:
        column = values[:, col]
        gaps = [i for i, v in enumerate(column) if _is_missing(v)]
        if gaps:
            if missing == "error":
                n_missing = sum(sum(map(_is_missing, values[:, c])) for c in used)
                raise ValueError(
                    f"X has {n_missing} missing value(s) (None/NaN/NA) in the "
                    f"fields the prompt uses; the first is at "
                    f"{_where(gaps[0], col, column_names, values.shape[1])}. Fill "
                    "or drop them first, for example X.fillna('') or X.dropna() "
                    "with pandas, or let RelishRegressor(missing='unknown') write "
                    "them as a word.")
            if out is values:
                out = values.copy()
            for i in gaps:
                out[i, col] = Missing(missing)
        for i, value in enumerate(column):
            if isinstance(value, str):
                if not value.isascii():
                    _check_encodable(value, _where(i, col, column_names, values.shape[1]))
                continue
            if isinstance(value, (bytes, bytearray, list, tuple, np.ndarray, Mapping, Set)):
                bad = sum(isinstance(v, (bytes, bytearray, list, tuple, np.ndarray,
                                         Mapping, Set)) for v in column)
                if isinstance(value, (bytes, bytearray)):
                    hint = " Decode bytes first, for example value.decode('utf-8')."
                else:
                    hint = (" Several text fields per row go in a 2-D array, a list "
                            "of tuples of equal length, or a DataFrame.")
                raise TypeError(
                    f"X must hold text or scalar values (numbers, dates, "
                    f"categories), but {bad} entr{'y is' if bad == 1 else 'ies are'} "
                    f"not; the first is {_describe(value)} at "
                    f"{_where(i, col, column_names, values.shape[1])}.{hint}")
    return out


def _check_encodable(text, where):
    """Refuse text that is not valid Unicode (lone surrogates).

    Tokenizers reject it with an opaque error deep inside the backbone.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"X holds text that is not valid Unicode at {where}: {exc.reason} "
            f"({text[exc.start:exc.end]!r} at character {exc.start}), as "
            "left by decoding with errors='surrogateescape'. Clean it "
            "first, for example text.encode('utf-8', 'replace')"
            ".decode('utf-8').") from None


def template_columns(template, n_fields, column_names=None):
    """Which columns of X each field of the template reads.

    A field made of digits is a position; any other field names a column.

    Returns
    -------
    dict
        Field name to column index, in the order the fields appear.

    >>> template_columns("{title}: {0}", 2, ["body", "title"])
    {'title': 1, '0': 0}
    """
    columns = {name: i for i, name in enumerate(column_names or [])
               if not _is_position(name)}
    index_of, unknown = {}, []
    for name in template_fields(template):
        if _is_position(name) and int(name) < n_fields:
            index_of[name] = int(name)
        elif name in columns:
            index_of[name] = columns[name]
        elif name not in unknown:
            unknown.append(name)
    if unknown:
        available = ", ".join([f"{{{i}}}" for i in range(n_fields)]
                              + [f"{{{name}}}" for name in columns])
        raise ValueError(
            f"prompt_template uses field(s) {', '.join('{' + n + '}' for n in unknown)} "
            f"that X does not have: X has {n_fields} field(s), so the "
            f"template may use {available}.")
    return index_of


def used_columns(template, n_fields, column_names=None):
    """Sorted indices of the columns the template reads.

    >>> used_columns("{0} and {2}", 3)
    [0, 2]
    """
    return sorted(set(template_columns(template, n_fields, column_names).values()))


def template_spans(prompt, template):
    r"""Character spans of ``prompt`` that the template's own text fills.

    The literal parts of ``template`` are found in order in the rendered
    ``prompt`` (the first at its start, the last at its end); what lies
    between them is the fields' text. A field whose text contains the
    template's next literal part may shift the match: this is a reading
    aid (:meth:`~sklearn_relish.explain.TokenAttention.top_tokens`), not a
    parser.

    >>> template_spans("Input:\nhello\n\nScore:", "Input:\n{0}\n\nScore:")
    [(0, 7), (12, 20)]
    """
    literals = [literal for literal, _, _, _ in _parse(template, template)]
    spans, position = [], 0
    for k, literal in enumerate(literals):
        if not literal:
            continue
        if k == len(literals) - 1 and prompt.endswith(literal):
            start = len(prompt) - len(literal)
        else:
            start = prompt.find(literal, position)
        if start < 0:
            continue
        spans.append((start, start + len(literal)))
        position = start + len(literal)
    return spans


def render_prompts(fields, template, column_names=None):
    """Fill the template with each row's fields.

    Parameters
    ----------
    fields : ndarray of object, shape (n, k)
        Text or other values (see :func:`check_fields`); columns the
        template does not name are not read.
    template : str or None
        None gives :func:`default_template`.
    column_names : list of str, optional
        Lets the template name DataFrame columns (``{title}``). A field
        made of digits is always a position.

    >>> import numpy as np
    >>> render_prompts(np.array([["a", "b"]], dtype=object), "{0} | {1}")
    ['a | b']
    >>> render_prompts(np.array([["a", 2.5, True]], dtype=object), "{0}: {1:.2f} ({2})")
    ['a: 2.50 (True)']
    """
    n_fields = fields.shape[1]
    if template is None:
        template = default_template(n_fields, column_names)
    index_of = template_columns(template, n_fields, column_names)
    positional = _positional(template, index_of, template)
    prompts = []
    for i, row in enumerate(fields):
        try:
            prompts.append(positional.format(*row))
        except (ValueError, TypeError) as exc:  # a bad format spec: "{0:d}"
            name, value = _failing_field(template, index_of, row)
            what = (f" The field {{{name}}} holds {_describe(value)}: give it a "
                    "format spec its type accepts (for text none, or one such "
                    "as {0:>20}; for numbers one such as {0:.2f})."
                    if name is not None else "")
            raise ValueError(
                f"prompt_template={template!r} could not be filled with row {i} "
                f"of X: {exc}.{what}") from None
    return prompts


def _failing_field(template, index_of, row):
    """The first field of ``template`` whose format spec its value refuses."""
    for _, name, spec, conversion in _parse(template, template):
        if name is None:
            continue
        value = row[index_of[name]]
        try:
            shown = {"r": repr, "s": str, "a": ascii}.get(conversion, lambda v: v)(value)
            format(shown, spec if "{" not in (spec or "") else "")
        except (ValueError, TypeError):
            return name, value
    return None, None


def shorten_fields(prompts, fields, template, tokenizer, max_length, column_names=None):
    """Cut the text fields of prompts longer than ``max_length`` tokens.

    Only text (``str``) fields are cut; numbers, dates and other values
    stay whole.

    Cutting a rendered prompt at its end would drop the template's closing
    cue (``Predict a score:``) and, for a pair, the whole second text. Here
    the longest field loses its last token first, one token at a time, as
    Hugging Face tokenizers' ``truncation="longest_first"`` does for text
    pairs, so the template's own words and every field's beginning stay.

    Parameters
    ----------
    prompts : list of str
        ``render_prompts(fields, template, column_names)``.
    fields, template, column_names :
        What rendered them.
    tokenizer : Hugging Face tokenizer
        Counts tokens with special tokens, as the backbone does. A fast
        tokenizer cuts a field at a token's character offset; a slow one
        decodes the kept tokens.
    max_length : int

    Returns
    -------
    prompts : list of str
        A new list; only over-long rows differ.
    shortened : list of int
        The rows whose fields were cut. Where the template alone is longer
        than ``max_length``, a row keeps what it could and remains too long:
        the backbone then cuts its end.
    """
    n_special = len(tokenizer("", add_special_tokens=True)["input_ids"])
    # A token covers at least one UTF-8 byte of the text (byte-level BPE,
    # SentencePiece with byte fallback, WordPiece), so a prompt this short
    # cannot be over the limit and is not tokenised here. (A normaliser that
    # expands text could beat this; the backbone's end cut then applies.)
    maybe = [i for i, p in enumerate(prompts)
             if len(p.encode("utf-8")) + n_special + 1 > max_length]
    prompts = list(prompts)
    if not maybe:
        return prompts, []
    lengths = _n_tokens(tokenizer, [prompts[i] for i in maybe])
    over = [(i, n) for i, n in zip(maybe, lengths) if n > max_length]
    if not over:
        return prompts, []
    rows, length = map(list, zip(*over))
    texts = np.asarray(fields, dtype=object)[rows]
    # Where each token of each field ends, one batched call per field.
    cutters = list(zip(*(_field_cutters(tokenizer, column)
                         for column in texts.T)))          # [row][field]
    keep = [[len(ends) for ends, _ in row] for row in cutters]
    todo = range(len(rows))
    # Tokens do not add up exactly across a field's edges: render, count
    # again, and cut further while a prompt is still too long.
    for _ in range(8):
        todo = [r for r in todo if length[r] > max_length and any(keep[r])]
        if not todo:
            break
        cut = []
        for r in todo:
            keep[r] = _longest_first(keep[r], length[r] - max_length)
            cut.append([prefix(k) for (_, prefix), k in zip(cutters[r], keep[r])])
        rendered = render_prompts(np.array(cut, dtype=object).reshape(len(todo), -1),
                                  template, column_names)
        for r, prompt, n in zip(todo, rendered, _n_tokens(tokenizer, rendered)):
            prompts[rows[r]], length[r] = prompt, n
    return prompts, rows


def _n_tokens(tokenizer, texts, chunk=512):
    """Each text's number of tokens, ``chunk`` texts at a time: a fast
    tokeniser's output for a whole table would take kilobytes per row."""
    texts = list(texts)
    return [len(ids) for start in range(0, len(texts), chunk)
            for ids in tokenizer(texts[start:start + chunk], add_special_tokens=True)["input_ids"]]


def _longest_first(counts, excess):
    """Token counts after removing ``excess`` tokens, one at a time, from
    the longest field (the first of equals), in a closed form per level."""
    keep = list(counts)
    while excess > 0 and any(keep):
        top = max(keep)
        at_top = [j for j, n in enumerate(keep) if n == top]
        below = max((n for n in keep if n < top), default=0)
        step = min(top - below, excess // len(at_top))
        if step == 0:               # fewer tokens to remove than fields at the top
            for j in at_top[:excess]:
                keep[j] -= 1
            break
        for j in at_top:
            keep[j] -= step
        excess -= step * len(at_top)
    return keep


def _field_cutters(tokenizer, column):
    """:func:`_cutters` of a column's text; any other value (a number, a
    date, a missing value, a column the template does not read) is never
    cut: it has no tokens to give and renders whole."""
    text_rows = [i for i, value in enumerate(column) if isinstance(value, str)]
    out = [([], lambda k, value=value: value) for value in column]
    if text_rows:
        for i, cutter in zip(text_rows, _cutters(tokenizer, [column[i] for i in text_rows])):
            out[i] = cutter
    return out


def _cutters(tokenizer, texts):
    """Per text: ``(ends, prefix)``, its tokens' ends and ``prefix(k)``, the
    text of its first ``k`` tokens."""
    if getattr(tokenizer, "is_fast", False):
        spans = tokenizer(texts, add_special_tokens=False,
                          return_offsets_mapping=True)["offset_mapping"]
        out = []
        for text, row in zip(texts, spans):
            ends = np.maximum.accumulate([end for _, end in row]).tolist() if row else []
            out.append((ends, lambda k, text=text, ends=ends:
                        text if k == len(ends) else text[:ends[k - 1]] if k else ""))
        return out
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [(row, lambda k, text=text, row=row:
             text if k == len(row) else tokenizer.decode(row[:k]) if k else "")
            for text, row in zip(texts, ids)]
