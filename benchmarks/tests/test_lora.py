"""The LoRA methods of ``benchmarks.run`` on a tiny Llama: ``relish_lora``
(RelishRegressor's LoRA regime) and ``lora_linear`` (the same adapters and
training loop under a one-output linear head on the last token)."""

import json

import numpy as np
import pytest
import torch

from benchmarks import run as runner
from benchmarks.baselines import METHODS
from sklearn_relish.datasets import load_vader_tweets
from tiny import build_tiny_llama

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-runner")
    backbone = build_tiny_llama(root / "tiny-llama", causal=True)
    X, y = load_vader_tweets(return_X_y=True)
    lines = [f"{i}\t{score}\t{text}" for i, (score, text) in enumerate(zip(y[:50], X[:50]))]
    folder = root / "data" / "vader-sentiment"
    folder.mkdir(parents=True)
    (folder / "tweets_GroundTruth.txt").write_text("\r\n".join(lines) + "\r\n")
    return root, backbone


def _argv(root, backbone, *extra):
    return ["--backbone", backbone, "--tasks", "vader-tweets", "--seeds", "0",
            "--data-dir", str(root / "data"), "--cache-dir", str(root / "cache"),
            "--out", str(root / "out"), "--threads", "1",
            # Short prompts keep the backbone's backward passes cheap.
            "--max-length", "64", *extra]


def test_lora_methods_are_opt_in():
    default = runner.parse_args(["--tasks", "stsb"]).methods
    assert "relish" in default
    assert "relish_lora" not in default and "lora_linear" not in default
    assert METHODS["relish_lora"].opt_in and METHODS["lora_linear"].opt_in
    chosen = runner.parse_args(["--methods", "relish", "relish_lora", "lora_linear"]).methods
    assert chosen == ["relish", "relish_lora", "lora_linear"]


@pytest.mark.filterwarnings("ignore:.*were truncated")
def test_runner_scores_both_lora_methods_on_the_same_split(setup):
    from sklearn_relish.backbone import BackboneConfig, load_backbone

    root, backbone = setup
    runner.main(_argv(root, backbone, "--methods", "relish_lora", "lora_linear"))
    path, = (root / "out").glob("*.json")
    entries = json.loads(path.read_text())["entries"]
    lora, linear = entries["vader-tweets|relish_lora|0"], entries["vader-tweets|lora_linear|0"]
    assert lora["n_test"] == linear["n_test"] == 10
    for entry in (lora, linear):
        assert np.isfinite(entry["nrmse"]) and np.isfinite(entry["mae"])
    # The same adapters (rank 8 on q_proj and v_proj of both layers of a
    # 32-wide model with 16-wide key/value projections) under either head.
    adapters = 2 * 8 * ((32 + 32) + (32 + 16))
    assert lora["extra"]["n_adapter_params"] == adapters
    assert linear["n_params"] == adapters + 32          # + the score layer, no bias
    assert lora["n_params"] > adapters + 32             # + the RELISH head
    assert lora["extra"]["lora"] == linear["extra"]["lora"]
    n_backbone = sum(p.numel() for p in load_backbone(
        BackboneConfig(name_or_path=backbone, max_length=64)).model.parameters())
    assert lora["extra"]["n_backbone_params"] == linear["extra"]["n_backbone_params"] == n_backbone
    report = path.with_suffix(".md").read_text()
    assert "| relish_lora |" in report and "| lora_linear |" in report
    # The paper's efficiency figure: trainable weights as a share of the backbone's.
    assert f"trainable {linear['n_params'] / n_backbone:.2%} of the backbone" in report


def test_lora_linear_merges_its_adapters_and_repeats_with_its_seed(setup):
    from benchmarks.lora_linear import LoraLinearRegressor
    from sklearn_relish.backbone import BackboneConfig, load_backbone

    _, backbone = setup
    rng = np.random.default_rng(0)
    words = {"good": 1.0, "bad": -1.0, "fine": 0.0}
    texts = [" ".join(rng.choice(list(words), size=3)) for _ in range(30)]
    y = np.array([sum(words[w] for w in t.split()) for t in texts])
    shared = load_backbone(BackboneConfig(name_or_path=backbone, max_length=256)).model
    before = {k: v.clone() for k, v in shared.state_dict().items()}

    import benchmarks.lora_linear as module

    merge, seen = module.merge, {}

    def spy(adapted):
        # The merged model (and its trained score layer) predicts what the
        # trained adapters and score predict.
        batch = {"input_ids": torch.tensor([[5, 6, 7, 8, 9]]),
                 "attention_mask": torch.ones(1, 5, dtype=torch.long)}
        with torch.no_grad():
            seen["unmerged"] = adapted.eval()(**batch).logits
            merged = merge(adapted)
            seen["merged"] = merged(**batch).logits
        return merged

    module.merge = spy
    try:
        model = LoraLinearRegressor(backbone, max_epochs=2, random_state=0).fit(texts, y)
    finally:
        module.merge = merge
    torch.testing.assert_close(seen["merged"], seen["unmerged"], atol=1e-5, rtol=0)
    assert not [n for n, _ in model.model_.named_modules() if "lora_" in n]
    pred = model.predict(texts)
    assert pred.shape == (30,) and np.isfinite(pred).all()
    again = LoraLinearRegressor(backbone, max_epochs=2, random_state=0).fit(texts, y)
    np.testing.assert_array_equal(again.predict(texts), pred)
    other = LoraLinearRegressor(backbone, max_epochs=2, random_state=1).fit(texts, y)
    assert not np.allclose(other.predict(texts), pred)
    for name, tensor in shared.state_dict().items():
        assert torch.equal(tensor, before[name]), name
