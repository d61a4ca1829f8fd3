"""Tokenizing without transformers (``tokenizer.json`` through the ``tokenizers`` library,
decoded the way transformers decodes), and whether a long text may be tokenized in pieces."""

import json
from pathlib import Path

from tokenizers import Tokenizer

from handlers.errors import ModelLoadError

# transformers' clean_up_tokenization, applied when tokenizer_config.json asks for it
CLEAN_UPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))
WORD_SPLITTERS = ({"type": "WhitespaceSplit"},
                  {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True})


def input_limit(*limits) -> int:
    """The smallest real limit of those given (tokenizers say 10**30 for none), else 512."""
    return min((n for n in limits if isinstance(n, int) and 0 < n < 1_000_000), default=512)


def splits_at_spaces(backend: Tokenizer) -> bool:
    """Whether ``tokens(text[:i]) + tokens(text[i:])`` equals ``tokens(text)`` (no special
    tokens) wherever ``text[i]`` is a space between two ASCII characters, and the special
    tokens are one closing ``</s>``. Proven piece by piece for T5's tokenizer: its added tokens
    hold no whitespace; the Precompiled normalizer rewrites one grapheme cluster at a time and
    such a space is a cluster of its own, kept a space; WhitespaceSplit / Metaspace then cut
    words there, each tokenized on its own; the post-processor only appends ``</s>``."""
    spec = json.loads(backend.to_str())
    if (spec.get("normalizer") or {"type": "Precompiled"})["type"] != "Precompiled":
        return False
    if backend.normalizer is not None and backend.normalizer.normalize_str(" ") != " ":
        return False
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not steps or any(step not in WORD_SPLITTERS for step in steps):
        return False
    post = spec.get("post_processor") or {}
    single = post.get("single", []) if post.get("type") == "TemplateProcessing" else []
    if [list(part) for part in single] != [["Sequence"], ["SpecialToken"]]:
        return False
    spaced = [token for token in spec.get("added_tokens", []) if any(c.isspace() for c in token["content"])]
    return single[0]["Sequence"]["id"] == "A" and not spaced


class TextTokenizer:
    """``tokenizer.json`` (+ ``tokenizer_config.json`` for the decoding clean-up, the special
    tokens and the input limit), giving the ids and texts transformers' tokenizer gives."""

    def __init__(self, tokenizer_file: Path, config_file: Path | None = None):
        try:
            self.backend = Tokenizer.from_file(str(tokenizer_file))
            config = json.loads(config_file.read_text()) if config_file else {}
        except Exception as exc:  # tokenizers raises a bare Exception
            raise ModelLoadError(f"cannot load the tokenizer {tokenizer_file}: {exc}") from None
        model_type = json.loads(self.backend.to_str())["model"].get("type")
        self.clean_up = bool(config.get("clean_up_tokenization_spaces")) and model_type != "BPE"
        self.model_max_length = config.get("model_max_length")
        eos = config.get("eos_token") or "</s>"
        self.eos_token_id = self.backend.token_to_id(eos["content"] if isinstance(eos, dict) else eos)
        if self.eos_token_id is None:
            raise ModelLoadError(f"{tokenizer_file} has no end-of-sequence token")
        self.splits_at_spaces = splits_at_spaces(self.backend)

    def encode(self, texts: list[str], special: bool = True) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=special)]

    def decode(self, sequences: list[list[int]]) -> list[str]:
        texts = self.backend.decode_batch(sequences, skip_special_tokens=True)
        if self.clean_up:
            for before, after in CLEAN_UPS:
                texts = [t.replace(before, after) for t in texts]
        return texts
