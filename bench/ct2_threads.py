"""CTranslate2 thread layouts on this CPU: threads per matrix product (``intra_threads``) vs
one-thread replicas that each take a sub-batch (``inter_threads`` + ``max_batch_size``), with
and without Intel MKL, int8 and float32. What ``handlers/ct2_engine.py``'s layout rests on.

    .venv/bin/python bench/ct2_threads.py [--prompts 48]

The model: random weights in t5-small's shape (``bench/models.py``), converted to int8 and
made to generate exactly 16 tokens. Each layout runs in a process of its own (one OpenMP
runtime each). Prints prompts/s per layout, one prompt at a time and in batches of 8.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LAYOUTS = (  # (intra_threads, inter_threads, batch)
    (2, 1, 1), (1, 1, 1), (2, 1, 8), (1, 1, 8), (1, 2, 8))
VARIANTS = ({"CT2_COMPUTE_TYPE": "int8"}, {"CT2_COMPUTE_TYPE": "int8", "CT2_USE_MKL": "1"},
            {"CT2_COMPUTE_TYPE": "float32"})


def run_layout(model: Path, intra: int, inter: int, batch: int, n: int) -> float:
    """In this process: prompts/s of ``n`` prompts in batches of ``batch``, one sub-batch per replica."""
    import ctranslate2
    import tokenizers

    from bench.serve_bench import prompts
    tokenizer = tokenizers.Tokenizer.from_file(str(model / "tokenizer.json"))
    source = [tokenizer.encode(q).tokens for q in prompts(n)]
    translator = ctranslate2.Translator(str(model), device="cpu", compute_type=os.environ["CT2_COMPUTE_TYPE"],
                                        intra_threads=intra, inter_threads=inter)
    options = {"beam_size": 1, "max_decoding_length": 16, "min_decoding_length": 16,
               "max_batch_size": -(-batch // inter)}
    translator.translate_batch(source[:batch], **options)  # warm up
    started = time.perf_counter()
    for i in range(0, n, batch):
        translator.translate_batch(source[i:i + batch], **options)
    return n / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--layout", help=argparse.SUPPRESS)  # MODEL,INTRA,INTER,BATCH: one child run
    args = parser.parse_args()
    if args.layout:
        model, *numbers = args.layout.split(",")
        print(json.dumps(run_layout(Path(model), *map(int, numbers), args.prompts)))
        return 0
    from bench.engine_bench import shipped_copy
    from bench.models import build_t5
    with tempfile.TemporaryDirectory(prefix="ct2-threads-") as tmp:
        model = shipped_copy(build_t5(Path(tmp) / "t5"), Path(tmp) / "shipped", {"int8"}) / "ctranslate2"
        print("| variant | intra_threads | inter_threads | batch | prompts/s |\n| --- | --- | --- | --- | --- |")
        for variant in VARIANTS:
            for intra, inter, batch in LAYOUTS:
                done = subprocess.run([sys.executable, __file__, "--prompts", str(args.prompts),
                                       "--layout", f"{model},{intra},{inter},{batch}"],
                                      env={**os.environ, **variant}, capture_output=True, text=True, timeout=1800)
                rate = f"{float(done.stdout.split()[-1]):.1f}" if done.returncode == 0 else done.stderr[-200:]
                name = " ".join(f"{k}={v}" for k, v in variant.items())
                print(f"| {name} | {intra} | {inter} | {batch} | {rate} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
