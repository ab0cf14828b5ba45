"""The README's headline table against the results it is generated from.

The documentation's benchmark tables are generated from
``benchmarks/results/`` when it is built; the README's one table is written
by ``python -m benchmarks.readme`` from the same results and the same label
map, so a run that lands without its README update would leave the front
door showing numbers the committed results do not hold: these tests fail.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# README table title -> the report it is copied from.
TABLES = {
    "SmolLM2-135M, full": "smollm2-135m-instruct.md",
}
from benchmarks.report import LABELS as _LABELS  # noqa: E402

# README label -> method: the one label map, read backwards.
LABELS = {label: method for method, label in _LABELS.items()}
MEAN = re.compile(r"^-?\d+\.\d+")


def readme_table(title):
    """Rows of the simple RST table whose header row starts with ``title``."""
    lines = (ROOT / "README.rst").read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(title))
    rule = lines[header - 1]
    assert set(rule) <= {"=", " "}, f"no rule above the {title!r} table"
    # Column spans from the rule: runs of "=".
    spans = [m.span() for m in re.finditer("=+", rule)]
    spans[-1] = (spans[-1][0], None)

    def cells(line):
        return [line[a:b].strip() for a, b in spans]

    columns = cells(lines[header])[1:]
    rows = {}
    for line in lines[header + 2:]:
        if line == rule:
            break
        row = cells(line)
        rows[LABELS[row[0]]] = row[1:]
    return columns, rows


def report_table(name):
    """Rows of the "Pearson (mean ± std over seeds)" table of a report."""
    lines = (RESULTS / name).read_text(encoding="utf-8").splitlines()
    start = lines.index("## Pearson (mean ± std over seeds)") + 2
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip().strip("|").split("|")])
    columns = table[0][1:]
    # An empty cell (a method not run on the task) is the README's "–".
    rows = {row[0]: [c.replace("**", "") or "–" for c in row[1:]]
            for row in table[2:]}
    return columns, rows


@pytest.mark.parametrize("title", list(TABLES))
def test_readme_table_matches_the_committed_report(title):
    columns, rows = readme_table(title)
    report_columns, report_rows = report_table(TABLES[title])
    assert columns == report_columns
    for method, cells in rows.items():
        assert method in report_rows, f"{title}: {method} is not in the report"
        for task, shown, stored in zip(columns, cells, report_rows[method]):
            shown = shown.replace("**", "")
            if " ± " not in shown:
                # Quick tables show the mean alone.
                stored = stored.split(" ± ")[0]
            assert shown == stored, (
                f"README {title!r}, {method} on {task}: {shown!r}, but "
                f"benchmarks/results/{TABLES[title]} says {stored!r}")
    # The default and both ridges on its states are always shown.
    assert {"relish", "ridge_mean", "ridge_last"} <= set(rows)


@pytest.mark.parametrize("title", list(TABLES))
def test_readme_bolds_the_best_mean_of_each_column(title):
    columns, rows = readme_table(title)
    for j, task in enumerate(columns):
        means = {m: float(MEAN.match(c[j].replace("**", "")).group())
                 for m, c in rows.items() if MEAN.match(c[j].replace("**", ""))}
        best = max(means.values())
        bold = {m for m, c in rows.items() if c[j].startswith("**")}
        assert bold == {m for m, v in means.items() if v == best}, (
            f"README {title!r}, {task}: bold {sorted(bold)}, best mean {best}")


def test_readme_table_is_the_generated_one(monkeypatch, tmp_path):
    from benchmarks import readme

    assert readme.main(["--check"]) == 0
    # A results file that changes makes the check fail.
    changed = tmp_path / "README.rst"
    text = (ROOT / "README.rst").read_text(encoding="utf-8")
    changed.write_text(text.replace("0.766 ± 0.004", "0.767 ± 0.004"), encoding="utf-8")
    monkeypatch.setattr(readme, "README", changed)
    assert readme.main(["--check"]) == 1


def test_ci_runs_the_readme_test_command():
    """CI must fail first where the README's set-up would: it runs the same
    command, verbatim."""
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = next(line.strip() for line in readme.splitlines()
                   if line.strip().endswith("python -m pytest"))
    assert command in ci
    # ... and builds the documentation, gallery included, as the README does.
    docs = next(line.strip() for line in readme.splitlines()
                if "python -m sphinx" in line)
    assert "plot_gallery=0" not in docs
    assert docs in ci


def _docs_tables():
    """The Sphinx extension that generates the benchmark pages' tables."""
    import importlib.util

    path = ROOT / "docs" / "_ext" / "relish_results.py"
    spec = importlib.util.spec_from_file_location("relish_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def list_table_rows(rst):
    """Cells of a generated ``list-table``: "   * - first" then "     - next"."""
    rows = []
    for line in rst.splitlines():
        if line.startswith("   * - "):
            rows.append([line[7:]])
        elif line.startswith("     - ") and rows:
            rows[-1].append(line[7:])
    return rows


def test_generated_finetuned_table_copies_the_report_and_bolds_the_row_best():
    header, *body = list_table_rows(_docs_tables().finetuned_table())
    columns, report = report_table("smollm2-135m-instruct.md")
    assert [r[0] for r in body] == [t for t in columns
                                    if report["finetuned_minilm"][columns.index(t)] != "–"]
    for task, tuned, relish, *_ in body:
        j = columns.index(task)
        assert tuned.replace("**", "").rsplit(" (", 1)[0] == report["finetuned_minilm"][j]
        # The default, or the earlier default where the default has not run.
        if report["relish"][j] != "–":
            assert relish.replace("**", "") == report["relish"][j]
        else:
            assert relish.replace("**", "") == report["relish_last"][j] + " (last layer)"
    for row in body:
        # Pearson cells: fine-tuned, then RELISH on each backbone.
        cells = [c for c in row[1:len(header) - 3] if MEAN.match(c.replace("**", ""))]
        means = [float(MEAN.match(c.replace("**", "")).group()) for c in cells]
        assert [c.startswith("**") for c in cells] == [m == max(means) for m in means], row[0]


@pytest.mark.parametrize("which", ["current", "earlier"])
def test_generated_lora_table_copies_the_report_and_the_backbone_share(which):
    import json

    tables = _docs_tables()
    slug = tables.LORA_RESULTS if which == "current" else tables.LORA_EARLIER[0]
    header, *body = list_table_rows(tables.lora_table(slug))
    assert header[:3] == ["task", "method", "Pearson"]
    columns, report = report_table(f"{slug}.md")
    results = json.loads((RESULTS / f"{slug}.json").read_text(encoding="utf-8"))
    backbone = {e["extra"]["n_backbone_params"] for e in results["entries"].values()
                if "n_backbone_params" in e.get("extra", {})}
    assert len(backbone) == 1
    (n_backbone,) = backbone
    method_of = {label: m for m, label in tables.LORA_LABELS.items()}
    assert {"relish_lora", "lora_linear", "relish_last"} <= {method_of[r[1]] for r in body}
    for task, label, pearson, _, n_params, share, *_ in body:
        method = method_of[label]
        assert pearson == report[method][columns.index(task)].split(" ± ")[0], (task, method)
        if method != "finetuned_minilm":
            expected = 100 * int(n_params.replace(",", "")) / n_backbone
            assert share == f"{expected:.2f}%", (task, method)
