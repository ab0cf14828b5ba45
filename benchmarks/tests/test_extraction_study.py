"""The extraction studies' own arithmetic, on the tiny backbone: what the
token-budget and eager variants run, how their states are compared, and
that a timing of a checkout imports that checkout."""

import json
from pathlib import Path

import pytest
import torch

from benchmarks.studies import extraction, extraction_versions
from sklearn_relish.backbone import BackboneConfig, load_backbone

PROMPTS = [f"Input {i}: {'good film ' * (i % 7 + 1)}\nScore:" for i in range(20)]


@pytest.fixture
def backbone(tiny_model_dir):
    return load_backbone(BackboneConfig(tiny_model_dir))


@pytest.mark.parametrize("batch_tokens", [None, 40, 100])
def test_padded_tokens_are_what_the_forward_passes_run(backbone, monkeypatch, batch_tokens):
    shapes = []
    model = backbone.model

    def spy(**kwargs):
        shapes.append(kwargs["input_ids"].shape)
        return model(**kwargs)

    monkeypatch.setattr(backbone, "model", spy)
    extraction.relish(backbone, PROMPTS, 8, batch_tokens)
    assert extraction.padded_tokens(backbone, PROMPTS, 8, batch_tokens) == sum(
        rows * width for rows, width in shapes)


def test_agreement_reports_differences_of_the_stored_states():
    a = [torch.tensor([[1.0, 2.0], [3.0, -4.0]]).half()]
    same = extraction.agreement(a, a)
    assert same["max_abs_difference"] == 0 and same["share_of_values_differing"] == 0
    assert same["max_abs_value"] == 4.0 and same["mean_token_cosine"] == pytest.approx(1.0)
    b = [a[0].clone()]
    b[0][1, 1] = -4.5
    moved = extraction.agreement(a, b)
    assert moved["max_abs_difference"] == 0.5 and moved["share_of_values_differing"] == 0.25


def test_eager_twin_runs_eager_attention_on_the_same_weights(backbone):
    twin = extraction.eager_twin(backbone)
    assert twin.attn_implementation == "eager" and backbone.attn_implementation == "sdpa"
    assert twin.fingerprint == backbone.fingerprint
    for a, b in zip(extraction.relish(backbone, PROMPTS, 8), extraction.relish(twin, PROMPTS, 8)):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)


def test_a_checkout_is_timed_in_a_process_that_imports_it(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS[:6]))
    here = extraction_versions.HERE
    got = extraction_versions.time_checkout(here, str(prompts), tiny_model_dir, 1, 4)
    assert Path(got["file"]).is_relative_to(here / "sklearn_relish")
    assert got["seconds"] > 0 and got["cpu_seconds"] > 0
    backbone = load_backbone(BackboneConfig(tiny_model_dir, max_length=256))
    assert got["tokens"] == sum(len(ids) for ids in backbone.tokenize(PROMPTS[:6])[0])
