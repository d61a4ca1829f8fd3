"""Prompts far over the input limit are cut before tokenizing, provably without changing a
token the model sees: the same ids, answer and "truncated" as tokenizing the whole prompt
and then truncating it, on both engines."""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from handlers import predict
from handlers.flan_t5 import PIECE_CHARS
from handlers.generation import GenerationParams
from handlers.tokenizer import splits_at_spaces

from tests.handlers.conftest import engine_ids

ENGINES = ["demo_model", "ct2_demo"]
# Characters that tokenizers treat specially: whitespace of every kind, zero-width and control
# characters (the normalizer drops them), combining and prepend marks (they join a character
# to its neighbour), the Metaspace mark itself, special tokens, CJK, emoji with a modifier.
ALPHABET = list("ab Z.,'?!\t\n\r ") + [
    "  ", "\u200b", "\u0301", "\u0600", "\u3000", "\u2581", "</s>", "<extra_id_1>", "\x01", "é", "\ufb01",
    "\u00a0", "\u5b57", "\ufeff", "\u2028", "n't", " 's", "\u1100\u1161", "\U0001f44d\U0001f3fd", "\r\n"]


@pytest.fixture(scope="module")
def huge_prompt() -> str:
    """About 1.5 MiB of words (a prompt near the 6 MiB cap behaves the same, 4x slower to
    tokenize whole)."""
    rng = random.Random(7)
    words = "Where was Alnor Quarenard born and what did she study , in 1871 ? Ýmir's".split()
    return " ".join(rng.choice(words) for _ in range(250_000))


@pytest.mark.parametrize("engine", ENGINES)
def test_huge_prompt_gives_what_whole_tokenization_then_truncation_gives(request, engine, huge_prompt):
    model = request.getfixturevalue(engine)
    limit, eos = model.max_input_tokens, model.engine.eos_token_id
    whole = model.engine.tokenize([huge_prompt])[0]
    assert len(whole) > 100 * limit
    expected_ids = whole[:limit - 1] + [eos]
    [ids], [truncated] = model._encode([huge_prompt])
    assert ids == expected_ids and truncated
    expected_text = model.engine.detokenize(engine_ids(model, [expected_ids], GenerationParams()))[0]
    [answer] = predict(model, [{"inputs": huge_prompt}])
    assert answer == [{"generated_text": expected_text, "truncated": True}]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("extra", [0, 1, 600])
def test_prompts_around_the_limit(request, engine, extra):
    """Long in characters, with exactly limit - 1 + extra tokens: truncated only when over."""
    model = request.getfixturevalue(engine)
    limit = model.max_input_tokens
    unit = "a" + " " * 40  # one token per word, many characters
    prompt = unit * (limit - 1 + extra)
    assert len(prompt) > PIECE_CHARS
    [ids], [truncated] = model._encode([prompt])
    whole = model.engine.tokenize([prompt])[0]
    assert len(whole) == limit + extra
    assert truncated == (extra > 0)
    assert ids == (whole[:limit - 1] + [whole[-1]] if extra else whole)


@pytest.mark.parametrize("engine", ENGINES)
def test_pieces_concatenate_to_the_whole_texts_tokens(request, engine):
    """The claim the cut rests on, for each engine's own tokenizer, on hostile text."""
    model = request.getfixturevalue(engine)
    assert model.engine.splits_at_spaces

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(st.sampled_from(ALPHABET), max_size=300).map("".join), st.integers(1, 60),
           st.integers(1, 30))
    def check(text, need, piece_chars):
        whole = model.engine.tokenize([text], special=False)[0]
        ids, more = model._head_ids(text, need, piece_chars)
        assert ids == whole[:len(ids)]
        assert len(ids) >= min(need, len(whole))
        assert more == (len(whole) > len(ids) or len(whole) >= need)
        assert model.engine.tokenize([text])[0] == whole + [model.engine.eos_token_id]

    check()


def test_tokenizers_the_cut_is_not_proven_for_are_tokenized_whole(ct2_demo):
    assert splits_at_spaces(ct2_demo.engine.tokenizer.backend)
    byte_level = Tokenizer(models.BPE())
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel()
    assert not splits_at_spaces(byte_level)
    replacing = Tokenizer.from_str(ct2_demo.engine.tokenizer.backend.to_str())
    replacing.normalizer = normalizers.Sequence([normalizers.Replace(" ", ""), normalizers.NFKC()])
    assert not splits_at_spaces(replacing)
