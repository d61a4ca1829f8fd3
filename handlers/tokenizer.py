"""Tokenizing without transformers (``tokenizer.json`` through the ``tokenizers`` library,
decoded the way transformers decodes), and whether a long text may be tokenized in pieces."""

import json
from pathlib import Path

from tokenizers import Tokenizer

from handlers.errors import ModelLoadError

# transformers' clean_up_tokenization, applied when tokenizer_config.json asks for it
CLEAN_UPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def splits_at_spaces(backend: Tokenizer) -> bool:
    """Whether a space between two ASCII characters always ends a word for this tokenizer,
    so that ``tokens(text[:i]) + tokens(text[i:])`` (no special tokens) equals ``tokens(text)``
    wherever ``text[i]`` is such a space, and the special tokens are one closing ``</s>``.

    Why that holds for T5's tokenizer (checked here piece by piece, else False):
    - added tokens (``</s>``, ``<extra_id_0>``...) are matched first and hold no whitespace,
      so no match spans the space;
    - the Precompiled normalizer rewrites one grapheme cluster at a time, and an ASCII space
      between ASCII characters is a cluster of its own (no combining mark after it, no prepend
      mark before it), which it maps to a space;
    - WhitespaceSplit / Metaspace (split, ▁ prepended to every word) then cut the text into
      words at that space, and the model (Unigram, BPE...) tokenizes each word on its own;
    - the post-processor only appends ``</s>``.
    """
    spec = json.loads(backend.to_str())
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "Precompiled":
        return False
    if backend.normalizer is not None and backend.normalizer.normalize_str(" ") != " ":
        return False
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]

    def word_splitter(step: dict) -> bool:
        if step.get("type") == "WhitespaceSplit":
            return True
        scheme = step.get("prepend_scheme") or ("always" if step.get("add_prefix_space", True) else "never")
        return (step.get("type") == "Metaspace" and step.get("replacement") == "\u2581"
                and step.get("split", True) and scheme == "always")

    if not steps or not all(word_splitter(step) for step in steps):
        return False
    post = spec.get("post_processor") or {}
    single = post.get("single", [])
    if post.get("type") != "TemplateProcessing" or len(single) != 2 or \
            single[0].get("Sequence", {}).get("id") != "A" or "SpecialToken" not in single[1]:
        return False
    return not any(any(c.isspace() for c in t["content"]) for t in spec.get("added_tokens", []))


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


class TextTokenizer:
    """``tokenizer.json`` (+ ``tokenizer_config.json`` for the decoding clean-up, the special
    tokens and the input limit), giving the ids and texts transformers' tokenizer gives."""

    def __init__(self, tokenizer_file: Path, config_file: Path | None = None):
        try:
            self.backend = Tokenizer.from_file(str(tokenizer_file))
            config = json.loads(config_file.read_text()) if config_file and config_file.is_file() else {}
        except Exception as exc:  # tokenizers raises a bare Exception
            raise ModelLoadError(f"cannot load the tokenizer {tokenizer_file}: {exc}") from None
        model_type = json.loads(self.backend.to_str())["model"].get("type")
        self.clean_up = bool(config.get("clean_up_tokenization_spaces")) and model_type != "BPE"
        limit = config.get("model_max_length")
        self.model_max_length = limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None
        self.eos_token_id = self.backend.token_to_id(_token_text(config.get("eos_token")) or "</s>")
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
