"""How close CTranslate2 comes to transformers, per generation parameter.

    .venv/bin/python bench/ct2_agreement.py [--prompts 24]

For each parameter set: the share of the demo set's answers (420 questions) that are identical
on both engines (float32 both, the demo model), and the share of generated token ids that agree
position by position on the t5-small shape (random weights, ``--prompts`` prompts, 16 tokens at
most). Prints a Markdown table (docs/BENCHMARKS.md, "Parameters"); tests/handlers/
test_ct2_engine.py asserts the demo-set figures.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.models import DEMO_MODEL, build_t5, prompts  # noqa: E402

CASES = [
    {}, {"num_beams": 2}, {"num_beams": 4}, {"num_beams": 3, "early_stopping": True},
    {"num_beams": 3, "early_stopping": "never"}, {"num_beams": 3, "length_penalty": 0.0},
    {"num_beams": 3, "length_penalty": 2.0}, {"num_beams": 3, "repetition_penalty": 1.5},
    {"num_beams": 3, "no_repeat_ngram_size": 2}, {"num_beams": 3, "min_new_tokens": 5},
    {"num_beams": 4, "num_return_sequences": 2}, {"num_beams": 2, "do_sample": True},
    {"do_sample": True}, {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9},
    {"repetition_penalty": 1.5}, {"no_repeat_ngram_size": 2}, {"min_new_tokens": 5}, {"max_new_tokens": 3},
]


def engines(model_dir: Path, cache: Path):
    from handlers import HandlerConfig, load_model
    reference = load_model(model_dir, HandlerConfig(backend="transformers"))
    ct2 = load_model(model_dir, HandlerConfig(backend="ctranslate2", compute_type="float32", ct2_cache_dir=str(cache)))
    reference.start(), ct2.start()
    return reference, ct2


def token_agreement(reference, ct2, questions: list[str], parameters: dict) -> float:
    from handlers.generation import parse_parameters
    from tests.handlers.conftest import engine_ids
    params = parse_parameters({"max_new_tokens": 16, **parameters}, max_new_tokens_cap=512)
    inputs, _ = reference._encode(questions)
    pairs = list(zip(engine_ids(reference, inputs, params), engine_ids(ct2, inputs, params)))
    same = sum(a == b for x, y in pairs for a, b in zip(x, y))
    return same / max(1, sum(max(len(x), len(y)) for x, y in pairs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    args = parser.parse_args()
    from handlers import predict
    questions = [json.loads(line)["question"] for line in (REPO / "demo" / "data" / "biography_qa.jsonl")
                 .read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory(prefix="agreement-") as tmp:
        checkpoint = shutil.copytree(DEMO_MODEL, Path(tmp) / "demo", ignore=shutil.ignore_patterns("ctranslate2"))
        demo = engines(checkpoint, Path(tmp) / "cache")  # converted float32 (the shipped copy is int8)
        small = engines(build_t5(Path(tmp) / "t5-small"), Path(tmp) / "cache")
        print("| parameters | demo set: identical answers | t5-small shape: identical token ids |\n| --- | --- | --- |")
        for parameters in CASES:
            requests = [{"inputs": q, "parameters": parameters} for q in questions]
            answers = zip(predict(demo[0], requests), predict(demo[1], requests))
            identical = sum(a == b for a, b in answers) / len(questions)
            tokens = token_agreement(*small, prompts(args.prompts), parameters)
            print(f"| `{json.dumps(parameters)}` | {identical:.1%} | {tokens:.1%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
