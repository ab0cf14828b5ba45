"""The benchmark's prompted baselines (decoding and RAIL) against a slow
reference: one prompt at a time, no key/value cache, no padding.

``PromptedLM.run`` batches prompts, left-pads them, runs their shared prefix
once, walks the answer tree on a cropped cache and decodes greedily on it;
each of those could shift a probability without failing loudly.
"""

import warnings

import numpy as np
import pytest
import torch

from benchmarks.prompted import PromptedLM, parse_number

from tiny import build_tiny_llama

PROMPTS = [
    "Input: a good movie, a great film\n\nPredict a score:",
    "Input: an awful plot\n\nPredict a score:",
    "Input: The quick brown fox jumps over the lazy dog.\n\nPredict a score:",
]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-causal")
    build_tiny_llama(directory)
    lm = PromptedLM(str(directory), batch_size=2)
    # A random model at the usual 0.02 init is nearly uniform over its
    # vocabulary whatever it reads; larger weights make every probability
    # depend on the tokens and their positions, so an error shows.
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in lm.model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.5)
    return lm


def _next_probs(model, ids):
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    return torch.softmax(logits.double(), -1)


def _reference(lm, prompt, tree, max_new_tokens):
    ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    generated = []
    for _ in range(max_new_tokens):
        token = int(_next_probs(lm.model, ids + generated).argmax())
        if token == lm.eos_id:
            break
        generated.append(token)
    numer = mass = 0.0
    inner = set(tree["nodes"])
    for path, value in tree["candidates"]:
        p = 1.0
        for k, token in enumerate(path):
            p *= float(_next_probs(lm.model, ids + list(path[:k]))[token])
        if path in inner:  # "1" must end where "12" could go on
            probs = _next_probs(lm.model, ids + list(path))
            p *= max(0.0, 1.0 - float(probs[lm.digit_led].sum()))
        numer += p * value
        mass += p
    return lm.tokenizer.decode(generated, skip_special_tokens=True), numer / mass, mass


@pytest.mark.parametrize("low, high", [(0, 12), (-3, 3)])
def test_batched_cached_pass_equals_one_prompt_at_a_time(lm, low, high):
    tree = lm.tree(low, high)
    out = lm.run(PROMPTS, tree, max_new_tokens=5)
    assert out["n_prefix_tokens"] > 0  # the shared prefix path is exercised
    for i, prompt in enumerate(PROMPTS):
        text, expected, mass = _reference(lm, prompt, tree, 5)
        assert out["texts"][i] == text
        np.testing.assert_allclose(out["expected"][i], expected, rtol=1e-4)
        np.testing.assert_allclose(out["mass"][i], mass, rtol=1e-4)
        assert low <= out["expected"][i] <= high


def test_multi_token_answers_are_read_through_the_tree(lm):
    """The case above covers answers longer than one token whose first token
    is itself an answer ("1" of "12"), which must end to count."""
    paths = {value: path for path, value in lm.tree(0, 12)["candidates"]}
    assert len(paths[12]) > len(paths[1]) and paths[12][:len(paths[1])] == paths[1]
    assert paths[1] in lm.tree(0, 12)["nodes"]


def test_no_deprecated_cache_argument(lm):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        lm.run(PROMPTS[:2], lm.tree(0, 5), max_new_tokens=2)


@pytest.mark.parametrize("text, number", [
    (" 3.5/5", 3.5), ("Score: -2", -2.0), ("I'd say 70, maybe 80", 70.0), ("none", None)])
def test_parse_number_takes_the_first_number(text, number):
    assert parse_number(text) == number
