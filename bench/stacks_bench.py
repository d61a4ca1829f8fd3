"""Both stacks against CTranslate2's own raw speed, against transformers and Hugging Face's
SageMaker toolkit, on the t5-small and Flan-T5-base shapes; and short requests beside long ones.

    .venv/bin/python bench/stacks_bench.py [--models t5-small,t5-base] [--levels 1,8,32]
        [--duration 10] [--mixed 20] [--baseline-tree DIR] [--skip-hf] [--plots docs/]

Needs wrk (apt-get install wrk): it drives the load, closed loop, from C, so the client costs
the two cores little. Per model (random weights in the shape, ``bench/models.py``, shipped as
users ship it: the checkpoint and ``ctranslate2/`` int8 beside it; every request generates
exactly 16 tokens):
- raw CTranslate2 in a process of its own, in both thread layouts (one replica with a thread
  per core; one one-thread replica per core, a batch split among them), batches of 1, 8, 32:
  prompts/s and the time of one call;
- each stack over HTTP at each concurrency (req/s, p50, p90), with its cold start (process start
  to the first 200 /ping) and the RSS of all its processes: the flask and the MMS stack on the
  default engine and on transformers, the HF toolkit with its defaults, and with
  ``--baseline-tree`` both stacks of another checkout on CTranslate2 (before and after);
- mixed lengths on the default stacks (and the baseline's): 6 clients asking for 8 tokens for
  ``--mixed`` s alone, then with 2 clients asking for 128 tokens as long again: the short
  requests' p50 and p90 and count in each phase, the long ones' count, the errors.
Prints Markdown tables with ratios to the raw engine; writes build/stacks_bench.json and, with
``--plots``, PNG plots. Only 127.0.0.1 is contacted; every run is bounded in time.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.models import build_t5, prompts  # noqa: E402
from bench.mms_bench import Server, ensure_hf_venv, free_port, hf, pss_mib, tree  # noqa: E402

TOKENS = 16
LOGS = REPO / "build" / "stacks-bench-logs"


def shipped(shape: str, root: Path) -> Path:
    """The shape's checkpoint with ``ctranslate2/`` (int8) beside it."""
    model = build_t5(root / shape, shape)
    subprocess.run([sys.executable, "-m", "tools.convert", str(model), str(model / "ctranslate2"),
                    "--quantization", "int8"], cwd=REPO, check=True, capture_output=True, timeout=1800)
    return model


# -- raw CTranslate2 -------------------------------------------------------------------------------
LAYOUTS = {"1 replica x all threads": "shared", "1-thread replicas": "replicas"}


def raw(model: Path, layout: str, batch: int, seconds: float) -> dict:
    """In this process: translate_batch on ``batch`` prompts at a time for ``seconds``."""
    import ctranslate2
    import tokenizers

    cores = len(os.sched_getaffinity(0))
    inter, intra = (1, cores) if layout == "shared" else (cores, 1)
    tokenizer = tokenizers.Tokenizer.from_file(str(model / "ctranslate2" / "tokenizer.json"))
    source = [tokenizer.encode(q).tokens for q in prompts(256)]
    translator = ctranslate2.Translator(str(model / "ctranslate2"), device="cpu", compute_type="int8",
                                        inter_threads=inter, intra_threads=intra)
    options = {"beam_size": 1, "max_decoding_length": TOKENS, "min_decoding_length": TOKENS,
               "max_batch_size": -(-batch // inter)}
    translator.translate_batch(source[:batch], **options)
    calls, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        i = len(calls) * batch % 200
        t = time.perf_counter()
        translator.translate_batch(source[i:i + batch], **options)
        calls.append(time.perf_counter() - t)
    calls.sort()
    return {"prompts_per_s": round(batch * len(calls) / (time.perf_counter() - started), 2),
            "call_p50_ms": round(1000 * calls[len(calls) // 2], 1)}


def raw_rows(model: Path, levels: list[int], seconds: float) -> dict:
    out = {}
    for name, layout in LAYOUTS.items():
        for batch in levels:
            done = subprocess.run([sys.executable, __file__, "--raw", f"{model},{layout},{batch},{seconds}"],
                                  capture_output=True, text=True, timeout=600)
            out[f"{name}|{batch}"] = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else \
                {"error": done.stderr[-300:]}
    return out


# -- the stacks over HTTP ---------------------------------------------------------------------------
class Stack(Server):
    poll = 0.02  # cold start to 20 ms

    def __init__(self, name: str, model: Path, env: dict, tree_dir: Path = REPO, cmd: list[str] | None = None,
                 cwd: Path | None = None):
        port = free_port()
        super().__init__(name, cmd or [sys.executable, "-m", "serve", "--model-dir", str(model)],
                         dict(os.environ, SERVE_BIND_HOST="127.0.0.1", SAGEMAKER_BIND_TO_PORT=str(port), **env), port,
                         LOGS / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}-{port}.log", cwd or tree_dir)
        self.extra = env

    def rss_mib(self) -> int:
        total = 0
        for pid in tree(self.proc.pid):
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError):
                pass
        return round(total / 2**20)


WRK_SCRIPT = """
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/invocations", {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%.3f %%.3f %%.3f %%d\\n", summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, summary.duration))
end
"""


def bodies(tokens: int, work: Path) -> Path:
    path = work / f"bodies-{tokens}.jsonl"
    if not path.exists():
        parameters = {"max_new_tokens": tokens, "min_new_tokens": tokens}  # random weights never stop early
        path.write_text("".join(json.dumps({"inputs": q, "parameters": parameters}) + "\n" for q in prompts(256)))
    return path


def wrk(port: int, connections: int, seconds: float, tokens: int, work: Path) -> subprocess.Popen:
    script = work / f"wrk-{tokens}.lua"
    script.write_text(textwrap.dedent(WRK_SCRIPT % {"bodies": bodies(tokens, work)}))
    return subprocess.Popen(["wrk", "-t", str(min(connections, 2)), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                             "--timeout", "120s", "-s", str(script), f"http://127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def result(proc: subprocess.Popen) -> dict:
    out = proc.communicate(timeout=600)[0]
    found = re.search(r"RESULT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+) (\d+)", out)
    if not found:
        return {"error": out[-300:]}
    n, status, socket_errors, p50, p90, p99, micros = found.groups()
    return {"requests": int(n), "req_per_s": round(int(n) / (int(micros) / 1e6), 2), "p50_ms": float(p50),
            "p90_ms": float(p90), "p99_ms": float(p99), "errors": int(status) + int(socket_errors)}


def warm_up(port: int, clients: int, work: Path) -> None:
    """``clients`` requests at once, each waited for: wrk stopping mid-run would leave a server
    that does not drop a closed connection's queued work (the HF toolkit) busy for the next run."""
    body = bodies(TOKENS, work).read_text().splitlines()[0].encode()

    def one(_: int) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=600).read()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))


def measure(stack: Stack, levels: list[int], seconds: float, work: Path) -> dict:
    row = {"cold_start_s": round(stack.start(), 2)}
    try:
        warm_up(stack.port, max(levels), work)
        for level in levels:
            row[str(level)] = result(wrk(stack.port, level, seconds, TOKENS, work))
        row["rss_mib"], row["pss_mib"] = stack.rss_mib(), round(pss_mib(stack.proc.pid))
    finally:
        stack.stop()
    return row


def mixed(stack: Stack, seconds: float, work: Path) -> dict:
    """6 clients x 8 tokens alone, then beside 2 clients x 128 tokens."""
    stack.start()
    try:
        result(wrk(stack.port, 6, 2, 8, work))  # warm up
        alone = result(wrk(stack.port, 6, seconds, 8, work))
        long_load = wrk(stack.port, 2, seconds + 2, 128, work)
        time.sleep(2)  # the long clients are running
        beside = result(wrk(stack.port, 6, seconds, 8, work))
        longs = result(long_load)
    finally:
        stack.stop()
    return {"alone": alone, "beside_long": beside, "long": longs}


def stacks(model: Path, baseline: Path | None, hf_python: Path | None, work: Path) -> list[Stack]:
    out = [Stack("flask, default", model, {}), Stack("mms, default", model, {"SERVING_STACK": "mms"}),
           Stack("flask, transformers", model, {"INFERENCE_BACKEND": "transformers"}),
           Stack("mms, transformers", model, {"SERVING_STACK": "mms", "INFERENCE_BACKEND": "transformers"})]
    if baseline:
        ct2 = {"INFERENCE_BACKEND": "ctranslate2"}
        out += [Stack("flask, ctranslate2, baseline", model, ct2, tree_dir=baseline),
                Stack("mms, ctranslate2, baseline", model, {**ct2, "SERVING_STACK": "mms"}, tree_dir=baseline)]
    if hf_python:
        server = hf(work, hf_python, model)
        out.append(Stack("hf toolkit", model, {}, cmd=server.cmd, cwd=server.cwd))
        out[-1].env, out[-1].port = server.env, server.port
    return out


def table(report: dict, levels: list[int]) -> str:
    lines = []
    for shape, data in report["models"].items():
        raw_best = {b: max(data["raw"].get(f"{n}|{b}", {}).get("prompts_per_s", 0) for n in LAYOUTS) for b in levels}
        raw_one = min(data["raw"].get(f"{n}|1", {}).get("call_p50_ms", 1e9) for n in LAYOUTS)
        lines += [f"\n### {shape} shape, {TOKENS} tokens per request\n",
                  "| system | " + " | ".join(f"c={c} req/s | c={c} p50 ms" for c in levels)
                  + " | cold start s | RSS MiB | c=1 p50 / raw | c=8 / raw |",
                  "| --- | " + " | ".join("--- | ---" for _ in levels) + " | --- | --- | --- | --- |"]
        for name in LAYOUTS:
            cells = [f"{data['raw'].get(f'{name}|{b}', {}).get('prompts_per_s', '-')} | "
                     f"{data['raw'].get(f'{name}|{b}', {}).get('call_p50_ms', '-')}" for b in levels]
            lines.append(f"| raw CTranslate2, {name} (prompts/s, ms per call) | " + " | ".join(cells) + " | - | - | - | - |")
        for name, row in data["stacks"].items():
            cells = [f"{row.get(str(c), {}).get('req_per_s', '-')} | {row.get(str(c), {}).get('p50_ms', '-')}"
                     for c in levels]
            one, eight = row.get("1", {}).get("p50_ms"), row.get("8", {}).get("req_per_s")
            ratio_one = f"{one / raw_one:.2f}x" if one else "-"
            ratio_eight = f"{eight / raw_best[8]:.2f}x" if eight and raw_best.get(8) else "-"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {row.get('cold_start_s')} | {row.get('rss_mib')} | "
                         f"{ratio_one} | {ratio_eight} |")
        if data.get("mixed"):
            lines += [f"\nMixed lengths ({shape}): 6 clients x 8 tokens, alone, then beside 2 clients x 128 tokens\n",
                      "| stack | short p50 alone / beside | short p90 alone / beside | p50 x | p90 x | short answers "
                      "alone / beside | long answers | errors |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for name, m in data["mixed"].items():
                a, b, long_ = m["alone"], m["beside_long"], m["long"]
                lines.append(f"| {name} | {a.get('p50_ms')} / {b.get('p50_ms')} | {a.get('p90_ms')} / {b.get('p90_ms')} | "
                             f"{b.get('p50_ms', 0) / max(a.get('p50_ms') or 1, 1e-9):.2f} | "
                             f"{b.get('p90_ms', 0) / max(a.get('p90_ms') or 1, 1e-9):.2f} | {a.get('requests')} / "
                             f"{b.get('requests')} | {long_.get('requests')} | "
                             f"{a.get('errors', 0) + b.get('errors', 0) + long_.get('errors', 0)} |")
    return "\n".join(lines)


def plot(report: dict, levels: list[int], prefix: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for shape, data in report["models"].items():
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name in LAYOUTS:
            left.plot(levels, [data["raw"].get(f"{name}|{b}", {}).get("prompts_per_s", 0) for b in levels], "k--",
                      alpha=0.6 if "replicas" in name else 0.3, label=f"raw, {name}")
        for name, row in data["stacks"].items():
            left.plot(levels, [row.get(str(c), {}).get("req_per_s", 0) for c in levels], marker="o", label=name)
        left.set(xscale="log", xticks=levels, xticklabels=levels, xlabel="concurrency (raw: batch)",
                 ylabel="requests/s", title=f"{shape}: throughput")
        left.legend(fontsize=7)
        names = list(data.get("mixed", {}))
        for i, phase in enumerate(("alone", "beside_long")):
            right.bar([j + 0.4 * i for j in range(len(names))],
                      [data["mixed"][n][phase].get("p90_ms", 0) for n in names], 0.4,
                      label="short p90, " + ("alone" if phase == "alone" else "beside 2 long clients"))
        right.set_xticks([j + 0.2 for j in range(len(names))], names, fontsize=7, rotation=15)
        right.set(ylabel="ms", title=f"{shape}: 8-token requests beside 128-token ones")
        right.legend(fontsize=7)
        fig.tight_layout()
        path = prefix.parent / f"{prefix.name}{shape}.png"
        fig.savefig(path, dpi=90)
        paths.append(path)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="t5-small,t5-base")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--mixed", type=float, default=20, help="seconds per phase (0: skip)")
    parser.add_argument("--baseline-tree", type=Path, help="another checkout (e.g. a git worktree of main)")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--stacks", help="only the stacks whose names start with one of these (comma-separated)")
    parser.add_argument("--plots", type=Path, help="dir for PNG plots (stacks_bench_<shape>.png)")
    parser.add_argument("--json", type=Path, default=REPO / "build" / "stacks_bench.json")
    parser.add_argument("--raw", help=argparse.SUPPRESS)  # MODEL,LAYOUT,BATCH,SECONDS: one raw run
    args = parser.parse_args()
    if args.raw:
        model, layout, batch, seconds = args.raw.split(",")
        print(json.dumps(raw(Path(model), layout, int(batch), float(seconds))))
        return 0
    levels = [int(c) for c in args.levels.split(",")]
    LOGS.mkdir(parents=True, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    report = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "levels": levels, "models": {}}
    hf_python = None if args.skip_hf else ensure_hf_venv()
    with tempfile.TemporaryDirectory(prefix="stacks-bench-") as tmp:
        work = Path(tmp)
        for shape in args.models.split(","):
            print(f"== {shape}", flush=True)
            model = shipped(shape, work)
            data = report["models"][shape] = {"raw": raw_rows(model, levels, args.duration), "stacks": {}, "mixed": {}}
            for stack in stacks(model, args.baseline_tree, hf_python, work):
                if args.stacks and not stack.name.startswith(tuple(args.stacks.split(","))):
                    continue
                print(f"   {stack.name}", flush=True)
                data["stacks"][stack.name] = measure(stack, levels, args.duration, work)
                if args.mixed and ("default" in stack.name or "baseline" in stack.name):
                    data["mixed"][stack.name] = mixed(Stack(stack.name, model, stack.extra, tree_dir=stack.cwd),
                                                      args.mixed, work)
    print(f"\nCPU: {cpu}, {report['cores']} cores")
    print(table(report, levels))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    if args.plots:
        for path in plot(report, levels, args.plots / "stacks_bench_"):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
