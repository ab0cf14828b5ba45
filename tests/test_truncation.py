"""Over-long prompts lose the ends of their text fields, never the template.

Cutting a rendered prompt at its end drops the closing cue ("Predict a
score:") and, for a pair, the whole second text: two pairs that share a long
first text would then give the backbone the same tokens.
"""

import copy
import warnings

import numpy as np
import pytest
from tokenizers import processors
from transformers import AutoTokenizer

from sklearn_relish import RelishRegressor
from sklearn_relish.inputs import _longest_first, render_prompts, shorten_fields

TEMPLATE = "Source: {0}\nTranslation: {1}\nScore:"
LONG = "the quick brown fox jumps over the lazy dog, " * 12
OTHER = "a good movie, a great film, an awful plot, " * 8
HEAD = dict(max_epochs=2, latent_dim=16, n_heads=2, batch_size=4)
# cv=None: one head fit per test (cross-fitting, the default below 2,000
# rows, is tested in test_crossfit.py).
FAST = dict(HEAD, cv=None, random_state=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def n_tokens(tokenizer, text, special=True):
    return len(tokenizer(text, add_special_tokens=special)["input_ids"])


def shorten(tokenizer, rows, max_length, template=TEMPLATE):
    fields = np.array(rows, dtype=object)
    prompts = render_prompts(fields, template)
    return prompts, *shorten_fields(prompts, fields, template, tokenizer, max_length)


def split_prompt(prompt):
    """The two fields of a prompt rendered with TEMPLATE."""
    assert prompt.startswith("Source: ") and prompt.endswith("\nScore:"), prompt
    source, translation = prompt[len("Source: "):-len("\nScore:")].split("\nTranslation: ")
    return source, translation


@pytest.mark.parametrize("counts", [[5], [0, 3], [9, 9], [2, 7, 7, 1], [40, 3, 12]])
def test_longest_first_removes_tokens_as_one_at_a_time_would(counts):
    for excess in range(sum(counts) + 2):
        keep = list(counts)
        for _ in range(excess):            # the definition, token by token
            longest = keep.index(max(keep))
            if keep[longest] == 0:
                break
            keep[longest] -= 1
        assert _longest_first(counts, excess) == keep, (counts, excess)


def test_prompts_within_the_limit_are_untouched(tokenizer):
    rows = [["a good film", "a great movie"], ["bad", "awful"]]
    before, after, shortened = shorten(tokenizer, rows, max_length=64)
    assert after == before and shortened == []


def test_the_long_field_is_cut_and_the_template_and_short_field_stay(tokenizer):
    before, after, shortened = shorten(tokenizer, [["short one", "a good film"],
                                                   [LONG, "a good film"]], max_length=40)
    assert shortened == [1] and after[0] == before[0]
    assert n_tokens(tokenizer, before[1]) > 40 >= n_tokens(tokenizer, after[1])
    source, translation = split_prompt(after[1])
    assert translation == "a good film"          # the end-cut would have lost it
    assert LONG.startswith(source) and len(source) > 0
    # As long as the limit allows: one token more would not fit.
    assert n_tokens(tokenizer, after[1]) >= 40 - 2


def test_two_long_fields_are_cut_to_about_the_same_length(tokenizer):
    _, after, shortened = shorten(tokenizer, [[LONG, OTHER]], max_length=60)
    assert shortened == [0] and n_tokens(tokenizer, after[0]) <= 60
    source, translation = split_prompt(after[0])
    assert LONG.startswith(source) and OTHER.startswith(translation)
    kept = [n_tokens(tokenizer, source, False), n_tokens(tokenizer, translation, False)]
    assert min(kept) > 10 and abs(kept[0] - kept[1]) <= 2, kept


def test_special_tokens_count_towards_the_limit(tokenizer):
    with_eos = copy.deepcopy(tokenizer)
    with_eos._tokenizer.post_processor = processors.TemplateProcessing(
        single="<eos> $A <eos>", special_tokens=[("<eos>", with_eos.eos_token_id)])
    assert n_tokens(with_eos, "fox") == n_tokens(tokenizer, "fox") + 2
    _, after, _ = shorten(with_eos, [[LONG, "a good film"]], max_length=50)
    assert 48 <= n_tokens(with_eos, after[0]) <= 50
    assert split_prompt(after[0])[1] == "a good film"


def test_non_latin_text_is_cut_on_token_boundaries(tokenizer):
    sinhala = "රහත් භාවයට පත් වූ කාශ්\u200dයප තෙරුණුවෝ තමන් වහන්සේ 😀🎉 " * 6
    _, after, shortened = shorten(tokenizer, [[sinhala, "a good film"]], max_length=50)
    assert shortened == [0] and n_tokens(tokenizer, after[0]) <= 50
    source, translation = split_prompt(after[0])
    assert sinhala.startswith(source) and translation == "a good film"


class SlowStandIn:
    """The tiny tokenizer without offsets, as a slow (Python) tokenizer is:
    fields are then cut by decoding their first tokens."""

    is_fast = False

    def __init__(self, fast):
        self.fast = fast

    def __call__(self, texts, add_special_tokens=True, **kwargs):
        assert "return_offsets_mapping" not in kwargs
        return self.fast(texts, add_special_tokens=add_special_tokens)

    def decode(self, ids):
        return self.fast.decode(ids)


def test_a_tokenizer_without_offsets_cuts_by_decoding(tokenizer):
    _, after, shortened = shorten(SlowStandIn(tokenizer), [[LONG, "a good film"]],
                                  max_length=40)
    assert shortened == [0] and n_tokens(tokenizer, after[0]) <= 40
    source, translation = split_prompt(after[0])
    assert LONG.startswith(source) and len(source) > 0 and translation == "a good film"


def test_a_template_longer_than_the_limit_keeps_it_and_empties_the_fields(tokenizer):
    template = "Rate the translation below. " * 6 + "{0} {1}"
    _, after, shortened = shorten(tokenizer, [[LONG, "a good film"]], max_length=20,
                                  template=template)
    assert shortened == [0] and after[0] == template.format("", "")
    assert n_tokens(tokenizer, after[0]) > 20      # the backbone cuts the rest


def test_pairs_sharing_a_long_first_text_keep_their_second_text(tiny_model_dir):
    X = [[LONG, "a good film"], [LONG, "an awful plot"], ["short", "great"], ["tiny", "bad"]]
    y = [1.0, -1.0, 2.0, -2.0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = RelishRegressor(backbone=tiny_model_dir, prompt_template=TEMPLATE,
                              max_length=40, **FAST).fit(X, y)
    messages = [str(w.message) for w in caught if "max_length" in str(w.message)]
    assert len(messages) == 1, messages
    assert messages[0].startswith("2 of 4 distinct prompt(s) were longer than max_length=40")
    assert "text fields were cut" in messages[0] and "lost their end" not in messages[0]
    with pytest.warns(UserWarning, match="text fields were cut"):
        pred = reg.predict(X[:2])
    # Cut at the end, both prompts would be the same 40 tokens.
    assert abs(pred[0] - pred[1]) > 1e-4, pred


def test_the_end_is_cut_when_the_template_alone_is_too_long(tiny_model_dir):
    template = "Rate the translation below. " * 6 + "{0} {1}"
    # Both rows become the template with empty fields: one distinct prompt.
    with pytest.warns(UserWarning, match=r"^2 of 2 distinct .*text fields were cut.*; "
                                         r"1 distinct prompt\(s\) were still too long "
                                         r"after that and lost their end too"):
        reg = RelishRegressor(backbone=tiny_model_dir, prompt_template=template,
                              max_length=20, **FAST).fit([[LONG, "good"], ["a", "b"]], [1.0, 2.0])
    with pytest.warns(UserWarning, match="lost their end too"):
        assert np.isfinite(reg.predict([[LONG, "good"]])).all()


def test_truncation_false_still_refuses_a_long_prompt(tiny_model_dir):
    reg = RelishRegressor(backbone=tiny_model_dir, prompt_template=TEMPLATE, max_length=40,
                          truncation=False, **FAST)
    with pytest.raises(ValueError, match="longer than max_length=40"):
        reg.fit([[LONG, "a good film"], ["short", "great"]], [1.0, 2.0])
