"""Models the benchmarks (and tests) build: random weights in a real model's shape, with the
demo tokenizer (no hub: nothing can be downloaded here)."""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "demo" / "model"
SHAPES = {  # T5Config arguments
    "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),  # 60M parameters
    "t5-base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),  # 250M parameters
    "flan-t5-base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12),  # 248M parameters
    "flan-t5-large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16),  # 783M parameters
}


def build_t5(target: Path, shape: str = "t5-small") -> Path:
    """Random weights in ``shape`` (Flan-T5's gated-GELU variant), saved as safetensors.
    ``initializer_factor`` 5: with T5's default initialisation greedy decoding repeats one token."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    config = T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, initializer_factor=5.0,
                      **SHAPES[shape])
    T5ForConditionalGeneration(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def prompts(n: int) -> list[str]:
    """``n`` demo questions, cycling through the demo set."""
    lines = (REPO / "demo" / "data" / "biography_qa.jsonl").read_text().splitlines()
    questions = [json.loads(line)["question"] for line in lines if line.strip()]
    return [questions[i % len(questions)] for i in range(n)]


def shipped_copy(model_dir: Path, target: Path, quantizations: set[str]) -> Path:
    """The model as users ship it for CTranslate2: the checkpoint with ``ctranslate2/`` beside it."""
    import shutil
    import subprocess
    import sys

    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("ctranslate2"))
    quantization = "int8" if "int8" in quantizations else sorted(quantizations)[0]
    subprocess.run([sys.executable, "-m", "tools.convert", str(target), str(target / "ctranslate2"),
                    "--quantization", quantization], cwd=REPO, check=True, capture_output=True, timeout=1800)
    return target
