"""Exact-match evaluation of the demo model with plain transformers (greedy, batched).

    python -m demo.evaluate                      # demo/model on demo/data/biography_qa.jsonl
    python -m demo.evaluate --model-dir DIR --data FILE --show-errors

Prints "exact match: C/T = P%" and exits 1 when under --min (default 0.95).
Only local paths are loaded; HF_HUB_OFFLINE=1 is set before transformers is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

DEMO_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = DEMO_DIR / "model"
DEFAULT_DATA = DEMO_DIR / "data" / "biography_qa.jsonl"


def load_qa(path: str | os.PathLike) -> list[dict]:
    """The QA pairs: one JSON object with "question" and "answer" per line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
                raise ValueError(f"{path}:{lineno}: need string fields 'question' and 'answer'")
            rows.append(row)
    return rows


def _drop_untie_warning(record) -> bool:
    return "so we will NOT tie them" not in record.getMessage()


def load(model_dir: str | os.PathLike):
    """(tokenizer, model) from a local directory, CPU, eval mode."""
    import transformers
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    # transformers 5.x's T5Config always says tie_word_embeddings=True, so loading any
    # untied Flan-T5 checkpoint (this one included) warns that it will NOT tie lm_head to
    # the embeddings - which is right. Drop just that message.
    transformers.utils.logging.get_logger("transformers.modeling_utils").addFilter(_drop_untie_warning)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir), local_files_only=True)
    model.eval()
    return tokenizer, model


def generate(tokenizer, model, prompts: list[str], batch_size: int = 64, max_new_tokens: int | None = None) -> list[str]:
    """Greedy answers, stripped; max_new_tokens defaults to the generation_config's."""
    import torch

    out: list[str] = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True)
            kwargs = {"do_sample": False, "num_beams": 1}
            if max_new_tokens is not None:
                kwargs["max_new_tokens"] = max_new_tokens
            ids = model.generate(**enc, **kwargs)
            out.extend(text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True))
    return out


def predictions(model_dir: str | os.PathLike, qa_path: str | os.PathLike, batch_size: int = 64) -> list[tuple[dict, str]]:
    rows = load_qa(qa_path)
    tokenizer, model = load(model_dir)
    preds = generate(tokenizer, model, [r["question"] for r in rows], batch_size=batch_size)
    return list(zip(rows, preds))


def exact_match(model_dir: str | os.PathLike, qa_path: str | os.PathLike, batch_size: int = 64) -> tuple[int, int]:
    """(correct, total): greedy answers equal to the reference answer (both stripped)."""
    pairs = predictions(model_dir, qa_path, batch_size)
    correct = sum(pred == row["answer"].strip() for row, pred in pairs)
    return correct, len(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exact match of a seq2seq model on a QA jsonl file.")
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--min", type=float, default=0.95, help="fail (exit 1) under this fraction")
    parser.add_argument("--show-errors", action="store_true")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    pairs = predictions(args.model_dir, args.data, args.batch_size)
    correct = 0
    for row, pred in pairs:
        if pred == row["answer"].strip():
            correct += 1
        elif args.show_errors:
            print(f"MISS {row['question']!r}: expected {row['answer']!r}, got {pred!r}")
    total = len(pairs)
    print(f"exact match: {correct}/{total} = {100.0 * correct / max(total, 1):.1f}%")
    return 0 if total and correct >= args.min * total else 1


if __name__ == "__main__":
    sys.exit(main())
