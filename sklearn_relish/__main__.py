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


def _mean_pooled(regressor, X):
    """Masked mean of each text's token states, read from the cache."""
    prompts = regressor._prompts(X, reset=False)[0]
    states, _ = regressor._token_states(prompts, regressor.backbone_config_)
    return np.stack([s.float().mean(0).numpy() for s in states])


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
                          random_state=args.seed, cache_dir=args.cache_dir,
                          verbose=1)
    start = time.perf_counter()
    reg.fit(X_train, y_train)
    fit_time = time.perf_counter() - start
    start = time.perf_counter()
    pred = reg.predict(X_test)
    predict_time = time.perf_counter() - start

    start = time.perf_counter()
    ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(_mean_pooled(reg, X_train), y_train)
    ridge_pred = ridge.predict(_mean_pooled(reg, X_test))
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
    anchor = (f", on a ridge anchor reading the {reg.anchor_pooling_[0]} state(s)"
              if reg.anchor_pooling_ else "")
    print(f"\nRELISH: {reg.n_iter_} epochs, the head's output scaled by "
          f"{reg.shrinkage_[0]:.2f}{anchor}; prediction of {len(X_test)} texts took "
          f"{predict_time:.1f} s (token states cached during fit are reused; the "
          "ridge baseline reads the same cache, so its time excludes the backbone).")


def _read_table(path, columns, target=None):
    with open(path, newline="", encoding="utf-8") as handle:
        dialect = "excel-tab" if str(path).endswith((".tsv", ".txt")) else "excel"
        rows = list(csv.DictReader(handle, dialect=dialect))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    missing = [c for c in columns + ([target] if target else []) if c not in rows[0]]
    if missing:
        raise SystemExit(f"{path}: no column(s) {missing}; it has {list(rows[0])}")
    X = np.array([[row[c] for c in columns] for row in rows], dtype=object)
    X = X[:, 0] if len(columns) == 1 else X
    y = np.array([float(row[target]) for row in rows]) if target else None
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


def fit(args):
    from . import RelishRegressor

    X, y = _read_table(args.data, args.text, args.target)
    reg = RelishRegressor(backbone=args.backbone, verbose=1, **_parse_params(args.param))
    reg.fit(X, y)
    path = reg.save(args.out)
    print(f"fitted on {len(y)} rows in {reg.n_iter_} epochs; saved to {path}")


def predict(args):
    from . import RelishRegressor

    reg = RelishRegressor.load(args.model)
    columns = list(reg.feature_names_in_) if hasattr(reg, "feature_names_in_") else args.text
    X, _ = _read_table(args.data, columns)
    pred = reg.predict(X)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    writer = csv.writer(out)
    writer.writerow(["prediction"])
    writer.writerows([[f"{p:.6g}"] for p in np.asarray(pred).reshape(len(X), -1)[:, 0]])
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
    p.add_argument("--cache-dir", default=None, help="on-disk token-state cache")
    p.set_defaults(func=demo)

    p = sub.add_parser("fit", help="fit on a CSV/TSV file and save the model")
    p.add_argument("data")
    p.add_argument("--text", action="append", required=True,
                   help="text column (repeat for pairs)")
    p.add_argument("--target", required=True)
    p.add_argument("--out", required=True, help="directory to save the model to")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
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
