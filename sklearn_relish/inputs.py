"""Validate raw text input and render it into prompts.

``X`` is either one text per row (a list, tuple, 1-D array or pandas Series
of ``str``) or several text fields per row (an ``(n, k)`` array, a list of
k-tuples, or a k-column DataFrame). Each row is rendered into one prompt
through a template whose fields are ``{0}``, ``{1}``, ... or, for a
DataFrame, the column names.
"""

from __future__ import annotations

import numbers
import string

import numpy as np

__all__ = ["default_template", "render_prompts", "template_fields", "validate_texts"]


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
        body = "\n".join(f"{label}: {{{i}}}" for i, label in enumerate(labels))
    return f"Input:\n{body}\n\nPredict a score:"


def template_fields(template):
    """Names of the replacement fields of a format string, in order.

    >>> template_fields("A: {0}\\nB: {1}")
    ['0', '1']
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"prompt_template={template!r} is not a valid format "
                         f"string: {exc}. Write literal braces as {{{{ and }}}}.") from exc
    fields = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        if field == "":
            raise ValueError(
                f"prompt_template={template!r} uses an empty field '{{}}'; name "
                "the fields by position ({0}, {1}) or by column name.")
        fields.append(field)
    return fields


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
    return isinstance(value, numbers.Real) and value != value


def validate_texts(X):
    """Check raw text input and return it as an ``(n, k)`` object array.

    Returns
    -------
    fields : ndarray of str, shape (n, k)
    column_names : list of str or None
        The DataFrame's column names, if X was a DataFrame.

    >>> validate_texts(["a", "b"])[0].shape
    (2, 1)
    """
    if isinstance(X, (str, bytes)):
        raise ValueError(
            "Iterable over raw text documents expected, string object received. "
            "Wrap a single text in a list: predict([text]).")
    column_names = None
    if hasattr(X, "columns") and hasattr(X, "iloc"):  # pandas DataFrame
        column_names = [str(c) for c in X.columns]
        values = X.to_numpy(dtype=object)
    elif hasattr(X, "to_numpy"):  # pandas Series, Index
        values = X.to_numpy(dtype=object)
    elif isinstance(X, np.ndarray):
        values = X.astype(object) if X.dtype.kind in "US" else X
    else:
        try:
            items = list(X)
        except TypeError:
            raise TypeError(
                f"X must be a list, array, Series or DataFrame of str, got "
                f"{type(X).__name__}.") from None
        values = np.empty(len(items), dtype=object)
        if items and all(isinstance(item, (tuple, list)) for item in items):
            widths = {len(item) for item in items}
            if len(widths) != 1:
                raise ValueError(
                    f"Rows of X have different numbers of text fields "
                    f"({sorted(widths)}); every row needs the same number.")
            values = np.empty((len(items), widths.pop()), dtype=object)
            for i, item in enumerate(items):
                values[i, :] = item
        else:
            values[:] = items
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
    _check_cells(values, column_names)
    return values, column_names


def _check_cells(values, column_names):
    flat = values.ravel()
    bad = [i for i, v in enumerate(flat) if not isinstance(v, str)]
    if not bad:
        return
    first = bad[0]
    row, col = divmod(first, values.shape[1])
    where = f"row {row}" + (f", column {column_names[col]!r}" if column_names
                            else (f", field {col}" if values.shape[1] > 1 else ""))
    value = flat[first]
    if _is_missing(value):
        raise ValueError(
            f"X has {len(bad)} missing value(s) (None/NaN/NA); the first is at "
            f"{where}. Fill or drop them first, for example "
            "X.fillna('') or X.dropna() with pandas.")
    hint = ""
    if isinstance(value, bytes):
        hint = " Decode bytes first, for example value.decode('utf-8')."
    elif isinstance(value, (list, tuple, np.ndarray)):
        hint = (" Several text fields per row go in a 2-D array, a list of "
                "tuples of equal length, or a DataFrame.")
    raise TypeError(
        f"X must hold only str, but {len(bad)} entr{'y is' if len(bad) == 1 else 'ies are'} "
        f"not; the first is {_describe(value)} at {where}.{hint}")


def render_prompts(fields, template, column_names=None):
    """Fill the template with each row's text fields.

    Parameters
    ----------
    fields : ndarray of str, shape (n, k)
    template : str or None
        None gives :func:`default_template`.
    column_names : list of str, optional
        Lets the template name DataFrame columns (``{title}``).

    >>> import numpy as np
    >>> render_prompts(np.array([["a", "b"]], dtype=object), "{0} | {1}")
    ['a | b']
    """
    n_fields = fields.shape[1]
    if template is None:
        template = default_template(n_fields, column_names)
    names = template_fields(template)
    positional = [str(i) for i in range(n_fields)]
    known = set(positional) | set(column_names or [])
    unknown = [name for name in names if name not in known]
    if unknown:
        available = ", ".join("{" + n + "}" for n in positional)
        if column_names:
            available += ", " + ", ".join("{" + n + "}" for n in column_names)
        raise ValueError(
            f"prompt_template uses field(s) {', '.join('{' + n + '}' for n in unknown)} "
            f"that X does not have: X has {n_fields} text field(s), so the "
            f"template may use {available}.")
    used = {names_to_index(n, column_names) for n in names}
    unused = sorted(set(range(n_fields)) - used)
    if unused:
        label = [column_names[i] if column_names else str(i) for i in unused]
        raise ValueError(
            f"prompt_template {template!r} does not use the text field(s) "
            f"{label} of X; every field must appear in the template "
            f"(X has {n_fields} field(s)).")
    prompts = []
    for row in fields:
        named = dict(zip(column_names, row)) if column_names else {}
        prompts.append(template.format(*row, **named))
    return prompts


def names_to_index(name, column_names):
    if name.isdigit():
        return int(name)
    return column_names.index(name)
