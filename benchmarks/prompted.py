"""The prompted-LM baselines: the frozen backbone asked for the number.

Decoder backbones only. The task's prompt goes to the backbone as a causal
LM (through its chat template when it has one), after ``k`` training
examples as earlier chat turns for the few-shot variants:

- ``zeroshot``, ``fewshot``: greedy decoding of the answer; the first number
  is parsed (:func:`parse_number`), clipped to the task's range and mapped
  to the target scale; unparsable answers fall back to the training mean.
- ``rail_zeroshot``, ``rail_fewshot`` (regression-aware inference,
  RAIL-style): the answer distribution of the same prompts over every
  integer in the task's range, read through the digit-token tree
  (:func:`answer_tree`), renormalised; the prediction is its expected value.

Both kinds come from one pass over the prompts (:func:`prompted_pass`):
:class:`PromptedLM` reads the answer tree and decodes on the same key/value
cache.
"""

from __future__ import annotations

import copy
import inspect
import re
import time

import numpy as np
import torch

from sklearn_relish.bundled import resolve_backbone
from sklearn_relish.inputs import render_prompts, validate_texts

__all__ = ["N_SHOTS", "PromptedLM", "answer_tree", "parse_number", "prompted_method",
           "prompted_pass", "tree_expectation"]

#: Training examples shown by the few-shot variants.
N_SHOTS = 5
MAX_NEW_TOKENS = 8
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def parse_number(text):
    """The first number in a generated answer, or None.

    >>> parse_number(" Score: 3.5/5"), parse_number("-2"), parse_number("none")
    (3.5, -2.0, None)
    """
    match = NUMBER.search(text)
    return float(match.group()) if match else None


def answer_tree(tokenizer, low, high, leading_space=False):
    """The integer answers on ``[low, high]`` as token paths, for RAIL.

    Every integer in the range is tokenised as the model would write it at
    the start of its answer (SmolLM2 splits numbers into one token per digit,
    so "-3" is "-","3" and "85" is "8","5"). The answer distribution is read
    along this token tree: the probability of an answer is the product of the
    next-token probabilities along its path. An answer that is also the start
    of a longer one ("1" of "15", "10" of "100") must *end* there: its path
    probability is multiplied by one minus the probability of any digit-led
    token next. Two-digit answers are taken to end after their second digit
    (not read further, except "10" -> "100"). Non-numeric first tokens
    ("Rating", "A:") and continuations outside the range are renormalised
    away; the share of probability on the tree is reported as the candidate
    mass.

    Returns
    -------
    tree : dict
        ``candidates`` [(path, value)], ``nodes`` (the paths whose next-token
        distribution is read, root first, depth-first), ``children`` {node:
        [token ids]}, ``scheme`` (a description).

    Examples
    --------
    >>> from transformers import AutoTokenizer  # doctest: +SKIP
    >>> tree = answer_tree(tok, 0, 100)  # doctest: +SKIP
    >>> len(tree["candidates"]), len(tree["nodes"])  # doctest: +SKIP
    (101, 11)
    """
    prefix = " " if leading_space else ""
    candidates = []
    for value in range(int(np.ceil(low)), int(np.floor(high)) + 1):
        path = tuple(tokenizer(prefix + str(value), add_special_tokens=False)["input_ids"])
        candidates.append((path, value))
    paths = [p for p, _ in candidates]
    nodes = sorted({p[:k] for p in paths for k in range(len(p))})
    children = {node: sorted({p[len(node)] for p in paths + nodes
                              if len(p) > len(node) and p[:len(node)] == node})
                for node in nodes}
    single = all(len(p) == 1 for p in paths)
    scheme = ("single-token integers" if single else
              f"integer answers read through the token tree ({len(nodes)} next-token "
              "distributions per prompt; an answer that prefixes a longer one must end "
              "there)")
    return {"candidates": candidates, "nodes": nodes, "children": children,
            "scheme": scheme}


def tree_expectation(tree, reads, end_mass):
    """Expected value over the tree's answers, and the mass they carry.

    ``reads[node]`` holds, per prompt, the probabilities of the node's
    children; ``end_mass[node]`` the probability that the number ends there.
    """
    prob = {(): np.ones(len(next(iter(end_mass.values()))))}
    for node in tree["nodes"]:
        for j, token in enumerate(tree["children"][node]):
            prob[node + (token,)] = prob[node] * reads[node][:, j]
    numer = np.zeros_like(prob[()])
    mass = np.zeros_like(prob[()])
    for path, value in tree["candidates"]:
        p = prob[path] * end_mass[path] if path in end_mass else prob[path]
        numer += p * value
        mass += p
    return numer / np.maximum(mass, 1e-300), mass


class PromptedLM:
    """The backbone as a causal LM, for greedy decoding and answer reading.

    Loaded with ``AutoModelForCausalLM`` from the same resolved path as the
    frozen backbone (the converted SmolLM2 directory for the default), in
    float32 on the CPU.
    """

    def __init__(self, backbone, batch_size=16):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.source = resolve_backbone(backbone)[0]
        self.tokenizer = AutoTokenizer.from_pretrained(self.source)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.source, dtype=torch.float32).eval().requires_grad_(False)
        self.batch_size = batch_size
        # transformers 5.24 renamed past_key_values to cache (the old name
        # warns and goes in 5.40); older releases know only the old one.
        self.cache_name = ("cache" if "cache" in inspect.signature(self.model.forward).parameters
                           else "past_key_values")
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_id
        self.chat = getattr(self.tokenizer, "chat_template", None) is not None
        vocab = len(self.tokenizer)
        self.digit_led = torch.tensor([
            i for i in range(vocab)
            if self.tokenizer.decode([i]).lstrip()[:1].isdigit()])

    def render(self, turns):
        """Turn ``[(user, assistant_or_None), ...]`` into one prompt string.

        With a chat template, each pair is a user turn and an assistant turn
        and the prompt ends with the assistant header; without one, the turns
        are joined as plain text and the answer follows a space.
        """
        if self.chat:
            messages = []
            for user, assistant in turns:
                messages.append({"role": "user", "content": user})
                if assistant is not None:
                    messages.append({"role": "assistant", "content": assistant})
            return self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(u if a is None else f"{u} {a}" for u, a in turns)

    def tree(self, low, high):
        return answer_tree(self.tokenizer, low, high, leading_space=not self.chat)

    def _forward(self, ids, mask, positions, cache):
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **{self.cache_name: cache})
        return out.logits[:, -1].float(), out[self.cache_name]

    @torch.inference_mode()
    def run(self, prompts, tree, max_new_tokens=MAX_NEW_TOKENS):
        """Greedy answers and answer-tree distributions for each prompt.

        The longest common token prefix of all prompts (chat header, task
        instruction, few-shot examples) is run once and its key/value cache
        reused; each batch then runs only its own suffix, left-padded after
        the prefix, with explicit positions so that padding changes nothing.
        The answer tree's inner nodes are read by feeding their tokens one at
        a time on that cache (and cropping back) before greedy decoding.

        Returns
        -------
        dict with ``texts`` (list of str), ``expected`` and ``mass`` (RAIL),
        timings ``read_s`` (prefix + suffix + tree steps) and ``decode_s``
        (prefix + suffix + greedy steps), token counts.
        """
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        n_prefix = _common_prefix(ids)
        n = len(ids)
        nodes, children = tree["nodes"], tree["children"]
        reads = {node: np.zeros((n, len(children[node]))) for node in nodes}
        end_mass = {node: np.zeros(n) for node in nodes}
        texts = [None] * n

        def record(node, logits, rows):
            p = torch.softmax(logits, -1)
            reads[node][rows] = p[:, children[node]].double().numpy()
            end_mass[node][rows] = (1 - p[:, self.digit_led].sum(-1)).clamp(min=0).double().numpy()

        t0 = time.perf_counter()
        prefix_cache = None
        if n_prefix:
            _, prefix_cache = self._forward(torch.tensor([ids[0][:n_prefix]]),
                                            torch.ones(1, n_prefix, dtype=torch.long),
                                            torch.arange(n_prefix)[None], None)
        read_s = decode_s = time.perf_counter() - t0

        order = np.argsort([len(row) for row in ids], kind="stable")
        for start in range(0, n, self.batch_size):
            rows = order[start:start + self.batch_size]
            b = len(rows)
            suffixes = [ids[i][n_prefix:] for i in rows]
            width = max(len(s) for s in suffixes)
            batch = torch.full((b, width), self.pad_id, dtype=torch.long)
            smask = torch.zeros((b, width), dtype=torch.long)
            for j, s in enumerate(suffixes):  # left padding inside the suffix
                batch[j, width - len(s):] = torch.tensor(s)
                smask[j, width - len(s):] = 1
            mask = torch.cat([torch.ones(b, n_prefix, dtype=torch.long), smask], 1)
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(b)

            t0 = time.perf_counter()
            logits, cache = self._forward(batch, mask, positions[:, n_prefix:], cache)
            t_first = time.perf_counter() - t0
            last = positions[:, -1]

            # read the answer tree: walk its nodes depth-first on the cache
            t0 = time.perf_counter()
            record((), logits, rows)
            path = ()
            for node in nodes[1:]:
                keep = _common_length(path, node)
                if len(path) > keep:
                    cache.crop(keep - len(path))
                path = path[:keep]
                for token in node[keep:]:
                    path = path + (token,)
                    step_mask = torch.cat([mask, torch.ones(b, len(path), dtype=torch.long)], 1)
                    step = torch.full((b, 1), token, dtype=torch.long)
                    node_logits, cache = self._forward(step, step_mask,
                                                       (last + len(path))[:, None], cache)
                record(node, node_logits, rows)
            if path:
                cache.crop(-len(path))
            t_tree = time.perf_counter() - t0

            t0 = time.perf_counter()
            token = logits.argmax(-1)
            done = token == self.eos_id
            out_tokens = [token]
            for _ in range(max_new_tokens - 1):
                if done.all():
                    break
                mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.long)], 1)
                last = last + 1
                logits, cache = self._forward(token[:, None], mask, last[:, None], cache)
                token = torch.where(done, torch.full_like(token, self.eos_id),
                                    logits.argmax(-1))
                done = done | (token == self.eos_id)
                out_tokens.append(token)
            t_decode = time.perf_counter() - t0
            generated = torch.stack(out_tokens, 1)
            for j, i in enumerate(rows):
                texts[i] = self.tokenizer.decode(generated[j], skip_special_tokens=True)
            read_s += t_first + t_tree
            decode_s += t_first + t_decode
        expected, mass = tree_expectation(tree, reads, end_mass)
        return {"texts": texts, "expected": expected, "mass": mass,
                "read_s": read_s, "decode_s": decode_s,
                "n_prefix_tokens": n_prefix,
                "n_tokens": int(sum(len(r) for r in ids))}


def _common_length(a, b):
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


def _common_prefix(ids):
    """Length of the longest common prefix, leaving every row one own token."""
    first = ids[0]
    n = min(len(row) for row in ids) - 1
    for row in ids[1:]:
        n = min(n, _common_length(row, first))
    return max(n, 0)


def prompted_pass(ctx, task, shots, seed):
    """Decode and read the answer distributions of one task's test prompts.

    ``shots`` training examples (drawn with ``seed``) go before each test
    prompt as earlier chat turns. Returns ``{"decode": ..., "rail": ...}``,
    each with ``y_pred`` on the target scale, ``seconds`` and ``extra``.
    """
    lm = ctx.lm()
    low, high = task.answer_range
    a, b = task.to_target
    fallback = float(np.mean(task.y_train))
    n_test = len(task.y_test) if ctx.gen_test is None else min(ctx.gen_test, len(task.y_test))
    test_fields = validate_texts(task.X_test)[0][:n_test]
    user_test = render_prompts(test_fields, task.template)

    examples = []
    if shots:
        rng = np.random.RandomState(seed)
        chosen = rng.choice(len(task.y_train), shots, replace=False)
        train_fields = validate_texts(task.X_train)[0][chosen]
        for text, answer in zip(render_prompts(train_fields, task.template),
                                task.answer_train[chosen]):
            examples.append((text, task.answer_format.format(answer)))
    prompts = [lm.render(examples + [(u, None)]) for u in user_test]

    tree = lm.tree(low, high)
    result = lm.run(prompts, tree)

    # decoding: first number, clipped, mapped; failures -> training mean
    parsed = [parse_number(t) for t in result["texts"]]
    failed = np.array([v is None for v in parsed])
    raw = np.array([np.nan if v is None else np.clip(v, low, high) for v in parsed])
    y_decode = np.where(failed, fallback, a * raw + b)

    # RAIL: expectation over the integer answers, renormalised
    y_rail = a * np.clip(result["expected"], low, high) + b

    shared = {"n_test": n_test, "n_shots": shots,
              "prompt_tokens_mean": round(result["n_tokens"] / n_test, 1),
              "shared_prefix_tokens": result["n_prefix_tokens"],
              "chat_template": lm.chat}
    return {
        "decode": {"y_pred": y_decode, "seconds": result["decode_s"],
                   "extra": {**shared, "parse_failure_rate": round(float(failed.mean()), 4),
                             "fallback": "training mean", "max_new_tokens": MAX_NEW_TOKENS,
                             "distinct_answers": int(len(set(np.round(raw[~failed], 3)))),
                             "sample_answers": [t[:40] for t in result["texts"][:3]]}},
        "rail": {"y_pred": y_rail, "seconds": result["read_s"],
                 "extra": {**shared, "scheme": tree["scheme"],
                           "n_candidates": len(tree["candidates"]),
                           "candidate_mass_mean": round(float(np.mean(result["mass"])), 4)}},
    }


def prompted_method(shots, kind):
    """A method's ``run``: ``kind`` ("decode" or "rail") of a ``shots``-shot
    prompted pass, shared by the two kinds through the run's Context."""
    def run(ctx, task, seed):
        result = ctx.prompted_pass(task, shots, seed if shots else None)
        out = result[kind]
        return dict(y_pred=out["y_pred"], fit_time=0.0,
                    predict_time=out["seconds"], n_params=0,
                    n_test=len(out["y_pred"]), extra=out["extra"])
    return run
