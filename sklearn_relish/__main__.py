"""Command line: ``python -m sklearn_relish {demo,fit,predict}``.

``demo`` is the main job: it fits RELISH on real data (VADER tweets, shipped
with the package) with the default backbone, evaluates on held-out rows and
prints Pearson, Spearman and RMSE next to a ridge baseline on mean-pooled
token states from the same backbone, then says in plain words what was
fitted.
"""



from __future__ import annotations

import argparse
import csv
import sys
import time

import numpy as np

DESCRIPTION = """Regression on raw text with a frozen LLM and a RELISH head.

  demo      fit and evaluate on 1,000 shipped VADER tweets (about 10 minutes on
            2 CPU cores the first time; the token states are cached after that)
  fit       fit on a CSV/TSV file and save the model
  predict   predict a CSV/TSV file with a saved model

Run 'python -m sklearn_relish COMMAND --help' for a command's options."""


def _metrics(y_true, y_pred):
    from scipy.stats import pearsonr, spearmanr

    return {"pearson": float(pearsonr(y_true, y_pred)[0]),
            "spearman": float(spearmanr(y_true, y_pred)[0]),
            "rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2)))}


def demo(args):
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import train_test_split

    from . import RelishRegressor
    from .datasets import load_vader_tweets

    X, y = load_vader_tweets(return_X_y=True)
    n = args.n_train + args.n_test
    if n > len(X):
        raise SystemExit(f"--n-train + --n-test must be at most {len(X)}")
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, train_size=args.n_train, test_size=args.n_test, random_state=args.seed)
    print(f"VADER tweets (Hutto & Gilbert 2014, MIT): sentiment intensity -4..4; "
          f"{len(X_train)} train / {len(X_test)} test rows, seeded split "
          f"(random_state={args.seed}).")
    print(f"Backbone: {args.backbone}", flush=True)

    # Progress bars and the epoch table only on a terminal: a log file gets
    # the results alone.
    reg = RelishRegressor(backbone=args.backbone, max_epochs=args.max_epochs, cv=args.cv,
                          random_state=args.seed,
                          cache_dir=None if args.cache_dir.lower() == "none" else args.cache_dir,
                          verbose=int(sys.stdout.isatty()))
    start = time.perf_counter()
    reg.fit(X_train, y_train)
    fit_time = time.perf_counter() - start
    start = time.perf_counter()
    pred = reg.predict(X_test)
    predict_time = time.perf_counter() - start

    start = time.perf_counter()
    ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(reg.pooled_states(X_train), y_train)
    ridge_pred = ridge.predict(reg.pooled_states(X_test))
    ridge_time = time.perf_counter() - start

    rows = [
        ("RELISH (defaults)", _metrics(y_test, pred), reg.n_trainable_params_, fit_time),
        ("mean-pooled states + RidgeCV", _metrics(y_test, ridge_pred),
         reg.d_model_ + 1, ridge_time),
        ("predict the training mean", {"pearson": float("nan"), "spearman": float("nan"),
                                       "rmse": float(np.sqrt(np.mean((y_test - y_train.mean()) ** 2)))},
         1, 0.0),
    ]
    print()
    print(f"{'method':<32}{'Pearson':>9}{'Spearman':>10}{'RMSE':>8}{'params':>11}{'fit s':>8}")
    for name, m, params, seconds in rows:
        print(f"{name:<32}{m['pearson']:>9.3f}{m['spearman']:>10.3f}{m['rmse']:>8.3f}"
              f"{params:>11,}{seconds:>8.1f}")
    print()
    print(describe_fit(reg, len(X_train)))
    print(f"Predicting {len(X_test)} texts took {predict_time:.1f} s. The ridge row reads the "
          "token states cached during the fit, so its time leaves out the backbone.")


def _cv(value):
    """``--cv``: a number of folds, ``auto`` or ``none``."""
    if value.lower() in ("auto", "none"):
        return None if value.lower() == "none" else "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of folds, 'auto' or 'none'") from None


def describe_fit(reg, n_rows):
    """What a fitted regressor is, in plain words (the demo prints it)."""
    head = (f"the RELISH head ({reg.n_trainable_params_:,} parameters, "
            f"{reg.n_iter_} epochs)")
    b = float(reg.shrinkage_[0])
    ridge = None
    if reg.anchor_pooling_:
        ridge = (f"a ridge on the {reg.anchor_pooling_[0]} pooled token state(s) "
                 f"(penalty {reg.anchor_alpha_[0]:g}, fitted on all {n_rows} rows)")
    if reg.n_folds_ is not None:
        judged = (f"the head's weight was fitted on out-of-fold predictions of all {n_rows} "
                  f"rows ({reg.n_folds_}-fold cross-fitting), and the head then trained on "
                  "every row")
    elif reg.validation_loss_curve_ is not None:
        n_valid = int(np.ceil(reg.validation_fraction * n_rows))
        judged = (f"the head trained on {n_rows - n_valid} rows and its weight was fitted on "
                  f"the other {n_valid}, held out")
    else:
        judged = f"no rows were held out, so the head's weight is fixed at {b:.2f}"
    if ridge is None:
        what = f"Fitted: {head}, its output scaled by {b:.2f}; {judged}."
    elif reg.anchor_scale_ is not None and reg.anchor_scale_[0] + b == 1.0:
        what = (f"Fitted: {ridge} and {head}. The prediction is {b:.2f} x head + "
                f"{1 - b:.2f} x ridge: {judged}.")
        if b == 0:
            what += (" A weight of 0 means the held-out rows could not tell the head from "
                     "the ridge (its gain was within one standard error), so the prediction "
                     "is the ridge.")
    else:
        what = (f"Fitted: {ridge}, corrected by {head} scaled by {b:.2f}; {judged}.")
    return what


def _read_table(path, columns, target=None):
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            dialect = "excel-tab" if str(path).endswith((".tsv", ".txt")) else "excel"
            rows = list(csv.DictReader(handle, dialect=dialect))
    except FileNotFoundError:
        raise SystemExit(f"{path}: no such file.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SystemExit(f"{path}: cannot be read as a UTF-8 CSV/TSV file ({exc}).") from None
    if not rows:
        raise SystemExit(f"{path}: no rows")
    targets = list(target or [])
    missing = [c for c in list(columns) + targets if c not in rows[0]]
    if missing:
        raise SystemExit(f"{path}: no column(s) {missing}; it has {list(rows[0])}")
    X = np.array([[row[c] for c in columns] for row in rows], dtype=object)
    X = X[:, 0] if len(columns) == 1 else X
    if target is None:
        return X, rows
    y = None
    if targets:
        try:
            y = np.array([[float(row[t]) for t in targets] for row in rows])
        except ValueError as exc:
            raise SystemExit(f"{path}: a target value is not a number ({exc}).") from None
        y = y[:, 0] if len(targets) == 1 else y
    return X, y


def _parse_params(pairs):
    params = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        for convert in (int, float):
            try:
                value = convert(value)
                break
            except ValueError:
                continue
        else:
            value = {"true": True, "false": False, "none": None}.get(value.lower(), value)
        params[key] = value
    return params


#: Written beside a model saved by ``fit``: the columns it read, so that
#: ``predict`` needs no ``--text``.
_CLI_RECORD = "cli.json"


def fit(args):
    import json

    from . import RelishRegressor
    from .bundled import DEFAULT_BACKBONE

    params = _parse_params(args.param)
    if "backbone" in params and args.backbone is not None:
        raise SystemExit(f"the backbone is given twice (--backbone {args.backbone} and "
                         f"--param backbone={params['backbone']}); give it once.")
    params.setdefault("backbone", args.backbone or DEFAULT_BACKBONE)
    params.setdefault("verbose", int(sys.stdout.isatty()))
    targets = args.target
    X, y = _read_table(args.data, args.text, targets)
    try:
        reg = RelishRegressor(**params)
    except TypeError as exc:   # an unknown parameter name
        raise SystemExit(f"--param: {exc}") from None
    reg.fit(X, y)
    try:
        path = reg.save(args.out)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--out: {exc}") from None
    (path / _CLI_RECORD).write_text(json.dumps({"text": args.text, "target": targets}))
    print(f"fitted on {len(y)} rows in {reg.n_iter_} epochs; saved to {path}")


def _columns(args):
    """The text columns a saved model reads: ``--text``, else what ``fit``
    recorded, else the DataFrame column names seen in fit."""
    import json
    from pathlib import Path

    if args.text:
        return args.text, None
    record = Path(args.model) / _CLI_RECORD
    if record.exists():
        saved = json.loads(record.read_text())
        return saved["text"], saved.get("target")
    return None, None


def predict(args):
    from . import RelishRegressor

    try:
        reg = RelishRegressor.load(args.model)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{args.model}: {exc}") from None
    columns, targets = _columns(args)
    if columns is None and hasattr(reg, "feature_names_in_"):
        columns = list(reg.feature_names_in_)
    if columns is None:
        raise SystemExit("this model does not record which columns it reads: give "
                         "them with --text (repeat it for pairs, in the order used "
                         "in fit).")
    X, rows = _read_table(args.data, columns)
    pred = np.asarray(reg.predict(X)).reshape(len(X), -1)
    if targets and len(targets) == pred.shape[1]:
        header = [f"predicted_{t}" for t in targets] if len(targets) > 1 else ["prediction"]
    else:
        header = (["prediction"] if pred.shape[1] == 1
                  else [f"prediction_{j}" for j in range(pred.shape[1])])
    # The rows' id (or their text columns) first, to join the predictions on.
    keys = [args.id] if args.id else list(columns)
    if args.id and args.id not in rows[0]:
        raise SystemExit(f"{args.data}: no column {args.id!r} for --id; it has {list(rows[0])}")
    out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(keys + header)
    writer.writerows([[row[k] for k in keys] + [f"{p:.6g}" for p in values]
                      for row, values in zip(rows, pred)])
    if args.out:
        out.close()


def main(argv=None):
    from .bundled import DEFAULT_BACKBONE
    from .cache import default_cache_dir

    parser = argparse.ArgumentParser(prog="python -m sklearn_relish", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="fit and evaluate on the shipped VADER tweets",
                       description="Fit RELISH with its defaults on shipped VADER tweets, "
                                   "evaluate on held-out ones beside a ridge on the same "
                                   "states, and say what was fitted.")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="model name or directory (default: the bundled %(default)s)")
    p.add_argument("--n-train", type=int, default=1000, help="training rows (default: 1000)")
    p.add_argument("--n-test", type=int, default=500, help="test rows (default: 500)")
    p.add_argument("--max-epochs", type=int, default=10, help="head epochs (default: 10)")
    p.add_argument("--cv", type=_cv, default="auto",
                   help="cross-fit the head over this many folds, or 'none' for a 10%% "
                        "hold-out (RelishRegressor(cv=...); default: auto, 5 folds below "
                        "2,000 rows)")
    p.add_argument("--seed", type=int, default=0,
                   help="split and random_state (default: 0)")
    where = default_cache_dir()
    p.add_argument("--cache-dir", default="auto",
                   help="on-disk token-state cache (default: "
                        + ("off, RELISH_STATES_DIR=off" if where is None else str(where))
                        + "; 'none' keeps it in memory)")
    p.set_defaults(func=demo)

    p = sub.add_parser("fit", help="fit on a CSV/TSV file and save the model",
                       description="Fit on a CSV (or .tsv/.txt, tab-separated) file with a "
                                   "header row and save the model to a directory.")
    p.add_argument("data", help="CSV/TSV file with a header row")
    p.add_argument("--text", action="append", required=True,
                   help="text column (repeat for pairs)")
    p.add_argument("--target", action="append", required=True,
                   help="target column (repeat for several targets)")
    p.add_argument("--out", required=True, help="directory to save the model to (new, or a "
                                                "saved model to replace)")
    p.add_argument("--backbone", default=None, help=f"default: {DEFAULT_BACKBONE}")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="any RelishRegressor parameter, e.g. --param max_epochs=5")
    p.set_defaults(func=fit)

    p = sub.add_parser("predict", help="predict a CSV/TSV file with a saved model",
                       description="Predict every row of a CSV/TSV file; writes the rows' "
                                   "id (--id) or text columns, then one column per target.")
    p.add_argument("model", help="directory written by fit (or RelishRegressor.save)")
    p.add_argument("data", help="CSV/TSV file with a header row")
    p.add_argument("--text", action="append", help="text column(s), if not recorded")
    p.add_argument("--id", help="a column to write beside each prediction instead of the "
                                "text columns")
    p.add_argument("--out", help="output CSV (default: standard output)")
    p.set_defaults(func=predict)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
