"""transformers vs CTranslate2 (float32, int8): raw in-process and through the flask stack.

    .venv/bin/python bench/engine_bench.py [--requests 200] [--models demo,t5-small]
        [--engines transformers:float32,ctranslate2:float32,ctranslate2:int8] [--concurrency 1,8]

In one run, per model (the demo model; random weights in t5-small's shape, made to generate
exactly 16 tokens): each engine's raw ``generate`` in a process of its own (one prompt at a
time, then batches as large as each concurrency level), then the full stack (nginx ->
gunicorn -> flask -> batcher, 1 worker) over HTTP at each concurrency level with closed-loop
keep-alive clients; cold start (process start -> first 200 /ping, median of
``--cold-starts``) with the model already converted (``ctranslate2/`` shipped beside the HF
files); PSS of the whole stack. Prints Markdown tables and ratios; draws throughput against
concurrency per engine into ``docs/<prefix><model>.png``. ``--device cuda``
runs the same on a GPU.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.models import build_t5  # noqa: E402
from bench.serve_bench import bench_http, params, percentiles, prompts, rss_mb  # noqa: E402
from tests.procs import DEMO_MODEL, Server  # noqa: E402

ENGINE_ENV = {"transformers": "INFERENCE_DTYPE", "ctranslate2": "CT2_COMPUTE_TYPE"}


def engine_env(engine: str, device: str) -> dict:
    backend, precision = engine.split(":")
    return {"INFERENCE_BACKEND": backend, ENGINE_ENV[backend]: precision, "INFERENCE_DEVICE": device}


def raw(model_dir: Path, n: int, random_weights: bool, batches: list[int]) -> dict:
    """In this process (started with the engine's environment): one prompt at a time, then
    batches of each size."""
    from handlers import HandlerConfig, load_model
    from handlers.generation import parse_parameters
    threads = len(os.sched_getaffinity(0))
    config = HandlerConfig.from_env(os.environ)
    if config.backend == "transformers":
        import torch
        torch.set_num_threads(threads)
    from dataclasses import replace
    model = load_model(model_dir, replace(config, threads=threads))
    p = parse_parameters(params(random_weights), max_new_tokens_cap=512)
    qs = prompts(n)
    model.generate([(q, p) for q in qs[:max(batches)]])  # warm up
    out = {}
    for size in batches:
        latencies = []
        started = time.perf_counter()
        for i in range(0, n, size):
            t = time.perf_counter()
            results = model.generate([(q, p) for q in qs[i:i + size]])
            assert not any(isinstance(r, Exception) for r in results), results
            latencies.append(time.perf_counter() - t)
        label = "raw, one at a time" if size == 1 else f"raw, batches of {size}"
        out[label] = (n / (time.perf_counter() - started), *percentiles(latencies))
    return out


def raw_in_subprocess(engine: str, device: str, model_dir: Path, n: int, random_weights: bool,
                      batches: list[int]) -> dict:
    """Each engine in a fresh process: two OpenMP runtimes in one process would disturb each other."""
    done = subprocess.run([sys.executable, __file__, "--raw", str(model_dir), "--requests", str(n),
                           "--random-weights", str(int(random_weights)), "--batches", ",".join(map(str, batches))],
                          env=dict(os.environ, **engine_env(engine, device)), capture_output=True, text=True,
                          timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"raw {engine} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def shipped_copy(model_dir: Path, target: Path, quantizations: set[str]) -> Path:
    """The model as users ship it for the ctranslate2 backend: HF files + ctranslate2/."""
    shutil.copytree(model_dir, target)
    quantization = "int8" if "int8" in quantizations else sorted(quantizations)[0]
    subprocess.run([sys.executable, "-m", "tools.convert", str(target), str(target / "ctranslate2"),
                    "--quantization", quantization], cwd=REPO, check=True, capture_output=True, timeout=1800)
    return target


def bench_model(name: str, model_dir: Path, args, tmp: Path, rows: list, facts: list) -> None:
    random_weights = name != "demo"
    n = args.requests if name == "demo" else max(args.requests // 4, 16)
    levels = [int(c) for c in args.concurrency.split(",")]
    engines = args.engines.split(",")
    precisions = {e.split(":")[1] for e in engines if e.startswith("ctranslate2")}
    shipped = shipped_copy(model_dir, tmp / f"{name}-shipped", precisions) if precisions else model_dir
    for engine in engines:
        print(f"# {name}, {engine}", file=sys.stderr, flush=True)
        for label, figures in raw_in_subprocess(engine, args.device, shipped, n, random_weights, levels).items():
            rows.append((name, engine, label, *figures))
        env = {**engine_env(engine, args.device), "CT2_CACHE_DIR": str(tmp / "unused-cache")}
        colds = []
        for i in range(args.cold_starts):
            started = time.perf_counter()
            with Server(shipped, env=env, log_path=tmp / f"{name}-{engine}-{i}.log") as srv:
                colds.append(time.perf_counter() - started)
                if i == 0:
                    for concurrency in levels:
                        figures = bench_http(srv.url, max(n, 2 * concurrency), concurrency, random_weights)
                        rows.append((name, engine, f"stack, concurrency {concurrency}", *figures))
                    memory = rss_mb(srv.proc.pid)
        facts.append((name, engine, statistics.median(colds), memory))


def table(rows: list, facts: list, models: list[str], engines: list[str], levels: list[int]) -> str:
    out = ["| model | engine | system | req/s | p50 ms | p99 ms |", "| --- | --- | --- | --- | --- | --- |"]
    out += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.1f} | {r[5]:.1f} |" for r in rows]
    out += ["", "| model | engine | cold start (start -> first 200 /ping), median s | RSS / PSS of the stack MB |",
            "| --- | --- | --- | --- |"]
    out += [f"| {m} | {e} | {cold:.2f} | {mem[0]:.0f} / {mem[1]:.0f} |" for m, e, cold, mem in facts]
    by = {(r[0], r[1], r[2]): r[3] for r in rows}
    base, top = engines[0], max(levels)
    out.append("")
    for model in models:
        for engine in engines[1:]:
            stack = by[(model, engine, f"stack, concurrency {top}")] / by[(model, base, f"stack, concurrency {top}")]
            one = by[(model, engine, "stack, concurrency 1")] / by[(model, base, "stack, concurrency 1")]
            rawest = by[(model, engine, f"raw, batches of {top}")] / by[(model, base, f"raw, batches of {top}")]
            out.append(f"{model}: {engine} vs {base}: stack {stack:.2f}x at concurrency {top}, {one:.2f}x at "
                       f"concurrency 1; raw batches of {top} {rawest:.2f}x")
    return "\n".join(out)


def plot(rows: list, facts: list, models: list[str], engines: list[str], levels: list[int],
         prefix: str) -> list[Path]:
    """Per model: throughput against concurrency per engine (stack, and raw at that batch size),
    and the stack's PSS per engine."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    by = {(r[0], r[1], r[2]): r[3] for r in rows}
    pss = {(m, e): mem[1] for m, e, _, mem in facts}
    paths = []
    for model in models:
        fig, (ax, mem) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]})
        for engine in engines:
            line = ax.plot(levels, [by[(model, engine, f"stack, concurrency {c}")] for c in levels], marker="o",
                           label=f"{engine}, flask stack")
            ax.plot(levels, [by[(model, engine, "raw, one at a time" if c == 1 else f"raw, batches of {c}")]
                             for c in levels], linestyle="--", color=line[0].get_color(), alpha=0.6,
                    label=f"{engine}, raw generate")
            mem.bar(engine.replace(":", "\n"), pss[(model, engine)], color=line[0].get_color())
        ax.set(xlabel="concurrent clients (raw: batch size)", ylabel="requests / s", xscale="log",
               title=f"{model}: throughput per engine")
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        mem.set(ylabel="MB", title="PSS of the stack (1 worker)")
        mem.tick_params(axis="x", labelsize=7)
        path = REPO / "docs" / f"{prefix}{model}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200, help="per level, demo model (t5 shapes: a quarter)")
    parser.add_argument("--models", default="demo,t5-small", help="demo, t5-small, t5-base")
    parser.add_argument("--engines", default="transformers:float32,ctranslate2:float32,ctranslate2:int8",
                        help="backend:precision, the first is the baseline of the ratios")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plot-prefix", default="engine_bench_")
    parser.add_argument("--raw", help=argparse.SUPPRESS)
    parser.add_argument("--random-weights", default="0", help=argparse.SUPPRESS)
    parser.add_argument("--batches", default="1,8", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw:
        print(json.dumps(raw(Path(args.raw), args.requests, args.random_weights == "1",
                             [int(b) for b in args.batches.split(",")])))
        return
    models, engines = args.models.split(","), args.engines.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list = []
    facts: list = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in models:
            model_dir = DEMO_MODEL if name == "demo" else build_t5(tmp / name, name)
            bench_model(name, model_dir, args, tmp, rows, facts)
    print(table(rows, facts, models, engines, levels))
    for path in plot(rows, facts, models, engines, levels, args.plot_prefix):
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
