"""RELISH inside a tabular pipeline: text plus numbers into gradient boosting.

MLQE-PE rows carry, beside the source sentence and its machine translation,
the NMT system's own score of the translation (``model_scores``, the
average token log-probability). A data scientist with such a table would put
the text through RELISH and everything into ``HistGradientBoostingRegressor``.
This benchmark does exactly that, with ``KFold`` cross-validation on the
training split, and compares three models fitted on the same folds:

- ``relish``: ``RelishRegressor`` (defaults) on the two text columns alone;
- ``numbers``: gradient boosting on ``model_scores`` and simple length
  features (word counts of both sides and their ratio);
- ``relish+numbers``: one ``ColumnTransformer`` -- RELISH's latent features
  (``transform``), ``model_scores`` and the length features -- into gradient
  boosting.

RELISH alone is scored from the regressor fitted inside the combined
pipeline (the same fit), so each fold trains one head::

    python -m benchmarks.studies.tabular [--backbone minilm] [--pairs en-de ro-en]
        [--folds 5] [--threads 1]

Results go to ``benchmarks/results/tabular-<backbone>.{json,md}``; a rerun
skips the (pair, fold) entries already there.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sklearn_relish import RelishRegressor

from .. import cli, report
from ..cli import backbone_slug, resolve_backbone_name
from ..datasets import get_data_dir
from ..metrics import aggregate, score

#: The benchmarks' MLQE prompt, naming the DataFrame's columns: it renders
#: the same prompts as ``benchmarks.run``, so the token states are shared.
TEMPLATE = ("Rate the quality of this translation from 0 to 100.\n"
            "Source: {original}\nTranslation: {translation}\nScore:")
MODELS = ("relish", "numbers", "relish+numbers")


def load_table(pair, data_dir=None):
    """The MLQE-PE training split of ``pair`` as a DataFrame: ``original``,
    ``translation``, ``model_scores`` (float) and the target ``z_mean``.

    The files are tab-separated without quoting (sentences hold unbalanced
    quotes), so lines are split on tabs, as ``load_mlqe`` does.
    """
    path = Path(get_data_dir(data_dir)) / "mlqe-pe" / pair / "train.tsv"
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:]]
    frame = pd.DataFrame(rows, columns=header)
    return frame[["original", "translation", "model_scores", "z_mean"]].astype(
        {"model_scores": float, "z_mean": float})


def word_counts(X):
    """Words in the source and in the translation, and their ratio."""
    source = X.iloc[:, 0].str.split().str.len().to_numpy(dtype=float)
    target = X.iloc[:, 1].str.split().str.len().to_numpy(dtype=float)
    return np.c_[source, target, target / np.maximum(source, 1.0)]


def lengths():
    return FunctionTransformer(word_counts, feature_names_out=lambda *_: np.array(
        ["source_words", "translation_words", "length_ratio"], dtype=object))


def combined_model(relish):
    return make_pipeline(
        ColumnTransformer([
            ("text", relish, ["original", "translation"]),
            ("score", "passthrough", ["model_scores"]),
            ("lengths", lengths(), ["original", "translation"]),
        ]),
        HistGradientBoostingRegressor(random_state=0),
    )


def numbers_model():
    return make_pipeline(
        ColumnTransformer([
            ("score", "passthrough", ["model_scores"]),
            ("lengths", lengths(), ["original", "translation"]),
        ]),
        HistGradientBoostingRegressor(random_state=0),
    )


def run_fold(frame, train, test, backbone, cache_dir, seed):
    X, y = frame.drop(columns="z_mean"), frame["z_mean"].to_numpy()
    relish = RelishRegressor(backbone=backbone, prompt_template=TEMPLATE, max_length=512,
                             cache_dir=cache_dir, random_state=seed)
    entry = {}
    start = time.perf_counter()
    combined = combined_model(relish).fit(X.iloc[train], y[train])
    entry["fit_s"] = {"relish+numbers": time.perf_counter() - start}
    head = combined[0].named_transformers_["text"]
    entry["relish+numbers"] = score(y[test], combined.predict(X.iloc[test]))
    entry["relish"] = score(y[test], head.predict(X.iloc[test]))
    start = time.perf_counter()
    numbers = numbers_model().fit(X.iloc[train], y[train])
    entry["fit_s"]["numbers"] = time.perf_counter() - start
    entry["numbers"] = score(y[test], numbers.predict(X.iloc[test]))
    entry["relish_epochs"] = head.n_iter_
    return entry


def write_report(results, path):
    lines = [
        f"# RELISH in a tabular pipeline ({results['backbone']})",
        "",
        "MLQE-PE training split (7,000 rows per pair), "
        f"{results['folds']}-fold `KFold(shuffle=True, random_state=0)`; mean ± std "
        "over folds of the held-out folds' Pearson and NRMSE (RMSE / std of the "
        "fold's target; 1.0 = predicting the mean). Target `z_mean`.",
        "",
        "- **relish**: `RelishRegressor()` on source and translation alone;",
        "- **numbers**: `HistGradientBoostingRegressor` on the NMT system's "
        "`model_scores` and word counts (source, translation, ratio);",
        "- **relish+numbers**: one `ColumnTransformer` (RELISH's latent features "
        "from `transform`, `model_scores`, word counts) into "
        "`HistGradientBoostingRegressor`. RELISH alone is scored from the "
        "regressor fitted inside it.",
        "",
        "| pair | model | Pearson | NRMSE | fit (s) |",
        "|---|---|---|---|---|",
    ]
    for pair, folds in results["pairs"].items():
        for model in MODELS:
            p = aggregate([f[model]["pearson"] for f in folds.values()])
            n = aggregate([f[model]["nrmse"] for f in folds.values()])
            key = "relish+numbers" if model == "relish" else model
            t = np.median([f["fit_s"][key] for f in folds.values()])
            note = " (the same fit)" if model == "relish" else ""
            lines.append(f"| {pair} | {model} | {p[0]:.3f} ± {p[1]:.3f} | "
                         f"{n[0]:.3f} ± {n[1]:.3f} | {t:.0f}{note} |")
    lines += ["", "Folds done: " + ", ".join(
        f"{pair} {len(folds)}" for pair, folds in results["pairs"].items()) + ".",
        "", f"Command: `{results['command']}`", ""]
    path.write_text("\n".join(lines))


def main(argv=None):
    parser = cli.parser("benchmarks.studies.tabular", __doc__)
    cli.add_backbone(parser, default="minilm")
    parser.add_argument("--pairs", nargs="+", default=["en-de", "ro-en"])
    parser.add_argument("--folds", type=int, default=5)
    cli.add_data_dir(parser)
    cli.add_cache_dir(parser)
    parser.add_argument("--out", default=str(report.RESULTS))
    cli.add_threads(parser)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    cli.set_threads(args.threads)
    backbone = resolve_backbone_name(args.backbone)
    slug = backbone_slug(backbone)
    out = Path(args.out)
    path = out / f"tabular-{slug}.json"
    results = (json.loads(path.read_text()) if path.exists() else
               {"backbone": slug, "folds": args.folds, "pairs": {}})
    results["command"] = "python -m benchmarks.studies.tabular " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    if not args.report_only:
        for pair in args.pairs:
            frame = load_table(pair, args.data_dir)
            folds = results["pairs"].setdefault(pair, {})
            splits = KFold(args.folds, shuffle=True, random_state=0).split(frame)
            for k, (train, test) in enumerate(splits):
                if str(k) in folds:
                    continue
                entry = run_fold(frame, train, test, backbone, args.cache_dir, seed=k)
                folds[str(k)] = entry
                print(f"{pair} fold {k}: " + "  ".join(
                    f"{m} {entry[m]['pearson']:.3f}/{entry[m]['nrmse']:.3f}" for m in MODELS)
                    + f"  ({entry['fit_s']['relish+numbers']:.0f} s)", flush=True)
                out.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(results, indent=1))
    write_report(results, out / f"tabular-{slug}.md")


if __name__ == "__main__":
    main()
