"""Flask stack vs raw in-process generate, on the demo model and a t5-small-shaped model.

    .venv/bin/python bench/serve_bench.py [--requests 200] [--quick]

Measures, in one run and on one machine: req/s and p50/p99 latency at concurrency 1 and 8
for (a) raw ``generate`` in this process, one prompt at a time and batched 8 at a time, and
(b) the full stack (nginx -> gunicorn -> flask -> batcher) over HTTP; cold start (process
start -> first 200 /ping); resident memory of the stack with 1 and 2 workers. Prints a
Markdown table of figures and ratios.
"""

import argparse
import concurrent.futures
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.models import build_t5  # noqa: E402
from tests.procs import DEMO_MODEL, Server, descendants  # noqa: E402

MAX_NEW = 16


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return ordered[len(ordered) // 2] * 1000, ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def prompts(n: int) -> list[str]:
    lines = (REPO / "demo/data/biography_qa.jsonl").read_text().splitlines()
    questions = [json.loads(line)["question"] for line in lines if line.strip()]
    return [questions[i % len(questions)] for i in range(n)]


def params(random_weights: bool) -> dict:
    # Random weights never emit </s>: force equal work with min_new_tokens.
    return {"max_new_tokens": MAX_NEW, **({"min_new_tokens": MAX_NEW} if random_weights else {})}


def bench_raw(model_dir: Path, n: int, random_weights: bool) -> dict:
    import torch

    from handlers import HandlerConfig, load_model
    from handlers.generation import parse_parameters
    torch.set_num_threads(os.cpu_count())
    model = load_model(model_dir, HandlerConfig())
    p = parse_parameters(params(random_weights), max_new_tokens_cap=512)
    qs = prompts(n)
    model.generate([(qs[0], p)])  # warm up
    out = {}
    latencies = []
    started = time.perf_counter()
    for q in qs:
        t = time.perf_counter()
        model.generate([(q, p)])
        latencies.append(time.perf_counter() - t)
    out["raw batch 1"] = (n / (time.perf_counter() - started), *percentiles(latencies))
    latencies = []
    started = time.perf_counter()
    for i in range(0, n, 8):
        t = time.perf_counter()
        model.generate([(q, p) for q in qs[i:i + 8]])
        latencies.append(time.perf_counter() - t)
    out["raw batched 8"] = (n / (time.perf_counter() - started), *percentiles(latencies))
    return out


def bench_http(url: str, n: int, concurrency: int, random_weights: bool) -> tuple[float, float, float]:
    session_body = [json.dumps({"inputs": q, "parameters": params(random_weights)}) for q in prompts(n)]
    local = __import__("threading").local()

    def one(body):
        session = getattr(local, "s", None) or requests.Session()
        local.s = session
        t = time.perf_counter()
        r = session.post(url + "/invocations", data=body, headers={"Content-Type": "application/json"},
                         timeout=60)
        assert r.status_code == 200, r.text
        return time.perf_counter() - t

    for body in session_body[:concurrency]:
        one(body)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, session_body))
    return (n / (time.perf_counter() - started), *percentiles(latencies))


def rss_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB of a process tree: PSS counts shared (copy-on-write) pages once."""
    rss = pss = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss / 1024, pss / 1024


def run_model(name: str, model_dir: Path, n: int, random_weights: bool, rows: list, facts: list,
              tmp: Path) -> None:
    raw = bench_raw(model_dir, n, random_weights)
    for label, figures in raw.items():
        rows.append((name, label, *figures))
    started = time.perf_counter()
    with Server(model_dir, log_path=tmp / f"{name}.log") as srv:
        cold = time.perf_counter() - started
        for concurrency in (1, 8):
            figures = bench_http(srv.url, n, concurrency, random_weights)
            rows.append((name, f"stack, concurrency {concurrency}", *figures))
        mem1 = rss_mb(srv.proc.pid)
    with Server(model_dir, env={"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}, log_path=tmp / f"{name}-2.log") as srv:
        bench_http(srv.url, 16, 2, random_weights)
        mem2 = rss_mb(srv.proc.pid)
    weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**20
    facts.append((name, cold, weights, mem1, mem2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--models", default="demo,t5-small-shape", help="comma-separated subset")
    args = parser.parse_args()
    models = args.models.split(",")
    rows: list = []
    facts: list = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "demo" in models:
            run_model("demo", DEMO_MODEL, args.requests, False, rows, facts, tmp)
        if "t5-small-shape" in models:
            run_model("t5-small-shape", build_t5(tmp / "t5-small"), args.requests // 2, True,
                      rows, facts, tmp)
    print("| model | system | req/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]:.2f} | {row[3]:.1f} | {row[4]:.1f} |")
    print()
    print("| model | cold start (start -> first 200 /ping) s | weights MB | RSS / PSS 1 worker MB "
          "| RSS / PSS 2 workers MB |")
    print("| --- | --- | --- | --- | --- |")
    for name, cold, weights, mem1, mem2 in facts:
        print(f"| {name} | {cold:.2f} | {weights:.1f} | {mem1[0]:.0f} / {mem1[1]:.0f} "
              f"| {mem2[0]:.0f} / {mem2[1]:.0f} |")
    print()
    by = {(r[0], r[1]): r for r in rows}
    for model in models:
        c1, raw1 = by[(model, "stack, concurrency 1")], by[(model, "raw batch 1")]
        c8, raw8 = by[(model, "stack, concurrency 8")], by[(model, "raw batched 8")]
        print(f"{model}: p50 at concurrency 1 = {c1[3]:.1f} ms vs raw {raw1[3]:.1f} ms "
              f"({c1[3] / raw1[3]:.2f}x, +{c1[3] - raw1[3]:.1f} ms); throughput at concurrency 8 = "
              f"{c8[2] / raw8[2]:.2f}x raw batched generate")


if __name__ == "__main__":
    main()
