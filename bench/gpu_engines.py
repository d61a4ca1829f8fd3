"""Both engines in one process on a GPU, through the handlers' own API (FlanT5Model.generate):
transformers in bf16, CTranslate2 in bfloat16 and int8_bfloat16 (where CUDA 12's cuBLAS
loads), on random weights in t5-small, Flan-T5-base and Flan-T5-large shapes, at batch 1, 8
and 32. Per row: prompts/s, generated tokens/s (every prompt is made to generate exactly
--new-tokens), milliseconds per call, and the peak device memory (model and work) above what
was in use before the model loaded, sampled every few milliseconds. Prints a Markdown table.

    python bench/gpu_engines.py [--shapes t5-small,flan-t5-base,flan-t5-large] [--batches 1,8,32]
        [--new-tokens 32] [--seconds 2] [--engines transformers:bfloat16,ctranslate2:bfloat16,...]

bench/gpu_check.sh runs it; without a CUDA device it says so and exits 0. ``--device cpu``
(engines transformers:float32,ctranslate2:int8, no memory column) runs the same code here.
"""

import argparse
import gc
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.models import build_t5  # noqa: E402
from bench.models import prompts  # noqa: E402

ENGINES = {"cuda": "transformers:bfloat16,ctranslate2:bfloat16,ctranslate2:int8_bfloat16",
           "cpu": "transformers:float32,ctranslate2:int8"}


class PeakMemory:
    """The most device memory in use (all processes' allocations, as cudaMemGetInfo sees them)
    while the block runs, sampled every ``interval`` seconds on a thread."""

    def __init__(self, torch, interval: float = 0.002):
        self.torch, self.interval, self.peak = torch, interval, 0
        self._stop = threading.Event()

    def used(self) -> int:
        free, total = self.torch.cuda.mem_get_info()
        return total - free

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.peak = self.used()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.used())


def load(model_dir: Path, engine: str, device: str, cache: Path):
    from handlers import HandlerConfig, load_model
    backend, precision = engine.split(":")
    if backend == "transformers":
        return load_model(model_dir, HandlerConfig(device=device, dtype=precision))
    return load_model(model_dir, HandlerConfig(backend="ctranslate2", device=device, compute_type=precision,
                                               ct2_cache_dir=str(cache)))


def measure(model, batch: int, new_tokens: int, seconds: float) -> tuple[float, float]:
    """(prompts/s, ms per call) over calls of ``batch`` prompts for at least ``seconds``."""
    from handlers.generation import GenerationParams
    params = GenerationParams(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    requests = [(q, params) for q in prompts(batch)]
    calls, started = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - started < seconds:
        results = model.generate(requests)
        failed = [r for r in results if isinstance(r, Exception)]
        assert not failed, failed[0]
        calls += 1
    elapsed = time.perf_counter() - started
    return calls * batch / elapsed, elapsed / calls * 1000


def bench_shape(shape: str, engines: list[str], device: str, batches: list[int], new_tokens: int,
                seconds: float, cublas_ok: bool, work: Path) -> list[tuple]:
    import torch

    from handlers.convert import convert
    from handlers.generation import GenerationParams
    model_dir = build_t5(work / shape, shape)
    rows = []
    for engine in engines:
        if engine.startswith("ctranslate2") and device == "cuda" and not cublas_ok:
            rows.append((shape, engine, "-", "skipped: CUDA 12's cuBLAS does not load here", "", "", ""))
            continue
        if engine.startswith("ctranslate2") and not (model_dir / "ctranslate2" / "model.bin").is_file():
            started = time.perf_counter()
            convert(model_dir, model_dir / "ctranslate2", "bfloat16")
            print(f"  {shape}: converted to CTranslate2 (bfloat16) in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr)
        gc.collect()
        memory = PeakMemory(torch) if device == "cuda" else None
        if memory:
            torch.cuda.empty_cache()
            before = memory.used()
        model = load(model_dir, engine, device, work / "cache")
        model.generate([(q, GenerationParams(max_new_tokens=new_tokens)) for q in prompts(max(batches))])  # warm up
        for batch in batches:
            if memory:
                with memory:
                    per_s, ms = measure(model, batch, new_tokens, seconds)
            else:
                per_s, ms = measure(model, batch, new_tokens, seconds)
            peak = f"{(memory.peak - before) / 2**30:.2f}" if memory else "-"
            rows.append((shape, engine, batch, f"{per_s:.1f}", f"{per_s * new_tokens:.0f}", f"{ms:.1f}", peak))
            print("  " + " | ".join(map(str, rows[-1])), file=sys.stderr)
        del model
        gc.collect()
        if memory:
            torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="t5-small,flan-t5-base,flan-t5-large")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--engines", help=f"default: {ENGINES['cuda']} (cpu: {ENGINES['cpu']})")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0, help="per batch size and engine")
    args = parser.parse_args()
    import torch
    import transformers
    transformers.utils.logging.disable_progress_bar()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_engines.py: no CUDA device visible to torch: nothing to measure")
        return 0
    import ctranslate2
    engines = (args.engines or ENGINES[args.device]).split(",")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"

    from handlers.cuda import preload_cublas12
    cublas = preload_cublas12()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{name}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"CTranslate2 {ctranslate2.__version__}, {cublas}; {args.new_tokens} new tokens per prompt, "
          f"demo questions as prompts, random weights; peak: device memory above what was in use before loading\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-engines-") as work:
        for shape in args.shapes.split(","):
            rows += bench_shape(shape, engines, args.device, batches, args.new_tokens, args.seconds,
                                cublas.ok, Path(work))
    print("| shape | engine | batch | prompts/s | tokens/s | ms per call | peak GiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
