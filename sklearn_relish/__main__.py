"""Command line: ``python -m sklearn_relish {demo,fit,predict}``.

``demo`` is the main job: it fits RELISH on real data (VADER tweets, shipped
with the package) with the default backbone, evaluates on held-out rows and
prints Pearson, Spearman and RMSE next to a ridge baseline on mean-pooled
token states from the same backbone.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time

import numpy as np


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

    reg = RelishRegressor(backbone=args.backbone, max_epochs=args.max_epochs,
                          random_state=args.seed,
                          cache_dir=None if args.cache_dir.lower() == "none" else args.cache_dir,
                          verbose=1)
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
    if reg.anchor == "stack" and reg.validation_loss_curve_ is not None:
        how = (f"its prediction weighed {reg.shrinkage_[0]:.2f} against "
               f"{reg.anchor_scale_[0]:.2f} for a ridge on the "
               f"{reg.anchor_pooling_[0]} state(s)")
    elif reg.anchor_pooling_:
        how = (f"the head's output scaled by {reg.shrinkage_[0]:.2f}, on a ridge anchor "
               f"reading the {reg.anchor_pooling_[0]} state(s)")
    else:
        how = f"the head's output scaled by {reg.shrinkage_[0]:.2f}"
    print(f"\nRELISH: {reg.n_iter_} epochs, {how}; prediction of {len(X_test)} texts took "
          f"{predict_time:.1f} s (token states cached during fit are reused; the "
          "ridge baseline reads the same cache, so its time excludes the backbone).")


def _read_table(path, columns, target=None):
    with open(path, newline="", encoding="utf-8") as handle:
        dialect = "excel-tab" if str(path).endswith((".tsv", ".txt")) else "excel"
        rows = list(csv.DictReader(handle, dialect=dialect))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    targets = list(target or [])
    missing = [c for c in list(columns) + targets if c not in rows[0]]
    if missing:
        raise SystemExit(f"{path}: no column(s) {missing}; it has {list(rows[0])}")
    X = np.array([[row[c] for c in columns] for row in rows], dtype=object)
    X = X[:, 0] if len(columns) == 1 else X
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
    params.setdefault("verbose", 1)
    targets = args.target
    X, y = _read_table(args.data, args.text, targets)
    try:
        reg = RelishRegressor(**params)
    except TypeError as exc:   # an unknown parameter name
        raise SystemExit(f"--param: {exc}") from None
    reg.fit(X, y)
    path = reg.save(args.out)
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

    reg = RelishRegressor.load(args.model)
    columns, targets = _columns(args)
    if columns is None and hasattr(reg, "feature_names_in_"):
        columns = list(reg.feature_names_in_)
    if columns is None:
        raise SystemExit("this model does not record which columns it reads: give "
                         "them with --text (repeat it for pairs, in the order used "
                         "in fit).")
    X, _ = _read_table(args.data, columns)
    pred = np.asarray(reg.predict(X)).reshape(len(X), -1)
    if targets and len(targets) == pred.shape[1]:
        header = [f"predicted_{t}" for t in targets] if len(targets) > 1 else ["prediction"]
    else:
        header = (["prediction"] if pred.shape[1] == 1
                  else [f"prediction_{j}" for j in range(pred.shape[1])])
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([[f"{p:.6g}" for p in row] for row in pred])
    if args.out:
        out.close()


def main(argv=None):
    from .bundled import DEFAULT_BACKBONE

    parser = argparse.ArgumentParser(prog="python -m sklearn_relish",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="fit and evaluate on the shipped VADER tweets")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="auto",
                   help="on-disk token-state cache (default: the estimator's, "
                        "~/.cache/sklearn_relish/states; 'none' keeps it in memory)")
    p.set_defaults(func=demo)

    p = sub.add_parser("fit", help="fit on a CSV/TSV file and save the model")
    p.add_argument("data")
    p.add_argument("--text", action="append", required=True,
                   help="text column (repeat for pairs)")
    p.add_argument("--target", action="append", required=True,
                   help="target column (repeat for several targets)")
    p.add_argument("--out", required=True, help="directory to save the model to")
    p.add_argument("--backbone", default=None, help=f"default: {DEFAULT_BACKBONE}")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="any RelishRegressor parameter, e.g. --param max_epochs=5")
    p.set_defaults(func=fit)

    p = sub.add_parser("predict", help="predict a CSV/TSV file with a saved model")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--text", action="append", help="text column(s), if not recorded")
    p.add_argument("--out", help="output CSV (default: standard output)")
    p.set_defaults(func=predict)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
