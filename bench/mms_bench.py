"""The multi-model stack under the things only it does: many models in memory (against Hugging
Face's SageMaker toolkit), a model worker killed under load, Java's memory over a long run.

    .venv/bin/python bench/mms_bench.py [--backends transformers,ctranslate2] [--skip-hf]
                                        [--skip-memory] [--skip-kill] [--soak 0]

Multi-model memory: PSS of every process of the server with 1, 2 and 4 demo copies loaded with
``POST /models`` (each invoked once), and after unloading them, per engine and for the HF
toolkit. Worker kill: 4 clients loop on the demo model; 5 s in, the model's worker process gets
SIGKILL: how many requests failed, and when answers resumed. ``--soak S``: Java's resident
memory during S seconds at concurrency 16. Single-model speed is ``bench/stacks_bench.py``'s.
Prints Markdown; writes build/mms_bench.json. The HF toolkit is installed from PyPI into
build/bench-hf-venv on first use. Only 127.0.0.1 is contacted; every loop is bounded.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.models import shipped_copy  # noqa: E402
from container import memory  # noqa: E402

DEMO = REPO / "demo" / "model"
QA = REPO / "demo" / "data" / "biography_qa.jsonl"
HF_VENV = REPO / "build" / "bench-hf-venv"
LOGS = REPO / "build" / "mms-bench-logs"
HF_REQUIREMENTS = ["torch==2.13.0", "transformers==4.57.6", "sentencepiece==0.2.3", "protobuf==6.33.6",
                   "multi-model-server==1.1.11", "sagemaker-inference==1.10.1", "setuptools<81",
                   "retrying", "Pillow", "psutil"]
HF_TOOLKIT = "sagemaker-huggingface-inference-toolkit==2.6.0"  # --no-deps: its audio extras are not needed
MIB = 1024 * 1024
BACKEND_ENV = {"transformers": {"INFERENCE_BACKEND": "transformers"},
               "ctranslate2": {"INFERENCE_BACKEND": "ctranslate2", "CT2_COMPUTE_TYPE": "int8"}}
ENGINE = {"transformers": "transformers", "ctranslate2": "ctranslate2 int8"}


def free_port() -> int:
    """A free port below 32767 (MMS refuses higher ones; the HF toolkit binds it directly)."""
    for port in range(21000 + os.getpid() % 5000, 32000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree(root: int) -> set[int]:
    """``root``, its descendants, and anything left in its session (the HF toolkit's MMS
    CLI exits and leaves Java to init) or in a group led by one of them (ours: Java)."""
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := proc_stat(int(p)))}
    found, changed = {root}, True
    while changed:
        changed = False
        for pid, st in stats.items():
            if pid not in found and (int(st[1]) in found or int(st[4]) == root or int(st[2]) in found):
                found.add(pid)
                changed = True
    return {p for p in found if p in stats and stats[p][0] != "Z"}


def pss_mib(root: int) -> float:
    return sum(m.pss for p in tree(root) if (m := memory.process_memory(p))) / MIB


class Server:
    poll = 0.05  # s between /ping tries while starting

    def __init__(self, name: str, cmd: list[str], env: dict, port: int, log: Path, cwd: Path = REPO):
        self.name, self.cmd, self.env, self.port, self.log, self.cwd = name, cmd, env, port, log, cwd
        self.proc = None

    def start(self, timeout: float = 300) -> float:
        started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            try:
                if self.request("GET", "/ping", timeout=2)[0] == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(self.poll)
        raise TimeoutError(f"{self.name}: no 200 /ping in {timeout} s; see {self.log}")

    def request(self, method, path, body=None, headers=None, timeout=120):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(45)
        except subprocess.TimeoutExpired:
            pass
        for pid in pids:  # whatever the server left behind (the HF toolkit's MMS does)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def load_test(server: Server, requests: list[tuple[dict, str | None]], concurrency: int, duration: float,
              max_requests: int = 20000) -> dict:
    """Closed loop: ``concurrency`` clients, each with a keep-alive connection, for
    ``duration`` seconds (at most ``max_requests``). ``requests``: (body, expected answer
    or None to check only the shape)."""
    latencies, wrong, errors, lock = [], [], [], threading.Lock()
    deadline = time.monotonic() + duration
    counter = iter(range(max_requests))

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        while time.monotonic() < deadline:
            try:
                i = next(counter)
            except StopIteration:
                break
            body, answer = requests[i % len(requests)]
            started = time.monotonic()
            try:
                conn.request("POST", "/invocations", body=json.dumps(body),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
                with lock:
                    errors.append(str(exc))
                continue
            elapsed = time.monotonic() - started
            with lock:
                if resp.status != 200:
                    errors.append(f"{resp.status} {data[:100]!r}")
                    continue
                latencies.append(elapsed)
                text = json.loads(data)[0]["generated_text"]
                if answer is not None and text != answer:
                    wrong.append(body)
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 150)
    wall = time.monotonic() - started
    latencies.sort()
    pct = lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)  # noqa: E731
    return {"concurrency": concurrency, "requests": len(latencies), "req_per_s": round(len(latencies) / wall, 2),
            "p50_ms": pct(0.50) if latencies else None, "p99_ms": pct(0.99) if latencies else None,
            "wrong_answers": len(wrong), "errors": len(errors), "first_error": errors[0] if errors else None}


def ensure_hf_venv() -> Path:
    python = HF_VENV / "bin" / "python"
    marker = HF_VENV / ".installed"
    if not marker.exists():
        print(f"installing the HF toolkit into {HF_VENV} ...", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", "--clear", str(HF_VENV)])
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.check_call(pip + HF_REQUIREMENTS)
        subprocess.check_call(pip + ["--no-deps", HF_TOOLKIT])
        marker.touch()
    return python


def mms(name: str, env: dict, model_dir: Path | None = None) -> Server:
    """``python -m serve`` on the MMS stack: the multi-model endpoint, or ``model_dir`` alone."""
    port = free_port()
    env = dict(os.environ, SERVING_STACK="mms", SERVE_BIND_HOST="127.0.0.1", SAGEMAKER_BIND_TO_PORT=str(port), **env)
    if model_dir is None:
        env["SAGEMAKER_MULTI_MODEL"] = "true"
    return Server(name, [sys.executable, "-m", "serve", *(["--model-dir", str(model_dir)] if model_dir else [])],
                  env, port, LOGS / f"{name.split()[0]}-{port}.log")


def hf(work: Path, hf_python: Path, model_dir: Path | None) -> Server:
    """The HF toolkit with its defaults; ``model_dir`` None: multi-model."""
    port = free_port()
    base = Path(tempfile.mkdtemp(prefix="hf-", dir=work))
    (base / "tmp").mkdir()
    if model_dir is not None:
        shutil.copytree(model_dir, base / "model")
        for name in ("tokenizer.json", "tokenizer_config.json", "spiece.model", "special_tokens_map.json"):
            # The same tokenizer in the files transformers 4.x reads (5.x writes extra_special_tokens
            # as a list, which 4.57 cannot load): the t5-small shape uses the demo's tokenizer.
            shutil.copy(DEMO / name, base / "model" / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "PYTHONPATH"))}
    env.update(PATH=f"{hf_python.parent}:{os.environ.get('PATH', '')}",  # its multi-model-server CLI
               SAGEMAKER_BIND_TO_PORT=str(port), SAGEMAKER_BASE_DIR=str(base), TMPDIR=str(base / "tmp"),
               HF_TASK="text2text-generation", HF_HUB_OFFLINE="1")
    if model_dir is None:
        env["SAGEMAKER_MULTI_MODEL"] = "true"
    return Server("hf toolkit (2 workers x 1 thread)", [str(hf_python), "-m",
                  "sagemaker_huggingface_inference_toolkit.serving"], env, port, LOGS / f"hf-{port}.log",
                  cwd=base)  # its MMS writes logs/ into cwd


def workload() -> list[tuple[dict, str | None]]:
    qa = [json.loads(line) for line in QA.read_text().splitlines() if line.strip()]
    return [({"inputs": row["question"]}, row["answer"]) for row in qa]


def multi_model_memory(server: Server, work: Path, cold_start_s: float) -> dict:
    """Load 4 demo copies one by one (PSS after 1, 2, 4), invoke each, unload all."""
    result = {"cold_start_s": round(cold_start_s, 2), "pss_mib": {"0": round(pss_mib(server.proc.pid))},
              "load_s": []}
    for i in range(4):
        body = json.dumps({"model_name": f"demo-{i}", "url": str(work / "models" / f"demo-{i}")})
        started = time.monotonic()
        status, text = server.request("POST", "/models", body, {"Content-Type": "application/json"}, timeout=600)
        assert status == 200, (server.name, status, text[:300])
        result["load_s"].append(round(time.monotonic() - started, 2))
        status, text = server.request("POST", f"/models/demo-{i}/invoke", json.dumps({"inputs": "hello"}),
                                      {"Content-Type": "application/json"})
        assert status == 200, (server.name, status, text[:300])
        if i + 1 in (1, 2, 4):
            time.sleep(1)
            result["pss_mib"][str(i + 1)] = round(pss_mib(server.proc.pid))
    for i in range(4):
        server.request("DELETE", f"/models/demo-{i}")
    time.sleep(2)
    result["pss_mib"]["after_unload"] = round(pss_mib(server.proc.pid))
    p = result["pss_mib"]
    result["per_extra_model_mib"] = round((p["4"] - p["1"]) / 3)
    return result


def java_soak(seconds: float) -> list[dict]:
    """Our MMS stack on the demo model at concurrency 16: Java's RSS every 15 s."""
    server = mms("mms soak", BACKEND_ENV["transformers"], DEMO)
    samples = []
    try:
        server.start()
        java = next(p for p in tree(server.proc.pid) if "ModelServer" in Path(f"/proc/{p}/cmdline").read_text())
        done = {}
        run = lambda: done.update(load_test(server, workload(), 16, seconds, 2_000_000))  # noqa: E731
        thread = threading.Thread(target=run)
        started = time.monotonic()
        thread.start()
        while thread.is_alive() and time.monotonic() - started < seconds + 60:
            rss = memory.process_memory(java).rss / MIB
            samples.append({"t_s": round(time.monotonic() - started), "java_rss_mib": round(rss)})
            thread.join(15)
        samples.append({"t_s": round(time.monotonic() - started), "java_rss_mib":
                        round(memory.process_memory(java).rss / MIB), **done})
    finally:
        server.stop()
    return samples


def worker_kill(workers: int = 1) -> dict:
    """4 clients loop on the demo model; 5 s in, the model's worker process gets SIGKILL:
    how many requests failed (and whether they were in flight), and when answers resumed."""
    server = mms("mms kill", {**BACKEND_ENV["transformers"], "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers)}, DEMO)
    events, lock, stop = [], threading.Lock(), time.monotonic() + 600

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for _ in range(10000):
            if time.monotonic() >= stop:
                return
            started = time.monotonic()
            try:
                conn.request("POST", "/invocations", body=json.dumps({"inputs": "Where was Alnor Quarenard born?"}),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn, status = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60), 0
            with lock:
                events.append((started, time.monotonic(), status))

    try:
        server.start()
        stop = time.monotonic() + 15
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(5)
        pids = {p: proc_stat(p) for p in tree(server.proc.pid)}
        forks = [p for p, st in pids.items() if st and int(st[1]) in pids and
                 "model_service_worker" in Path(f"/proc/{int(st[1])}/cmdline").read_text()]
        killed = time.monotonic()
        os.kill(forks[0], signal.SIGKILL)
        for t in threads:
            t.join(120)
    finally:
        server.stop()
    failed = [e for e in events if e[2] != 200]
    resumed = min((a for s, a, st in events if st == 200 and s > killed), default=None)
    return {"workers": workers, "requests": len(events), "failed": len(failed),
            "failed_in_flight_at_kill": sum(s < killed for s, _, _ in failed),
            "first_answer_after_kill_s": round(resumed - killed, 2) if resumed else None}


def print_tables(report: dict) -> None:
    if report["multi_model"]:
        print("\n| multi-model, PSS MiB | cold start s | none | 1 model | 2 models | 4 models | per extra model "
              "| after unloading | load s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, r in report["multi_model"].items():
            p = r["pss_mib"]
            print(f"| {name} | {r['cold_start_s']} | {p['0']} | {p['1']} | {p['2']} | {p['4']} | "
                  f"{r['per_extra_model_mib']} | {p['after_unload']} | {min(r['load_s'])}-{max(r['load_s'])} |")
    if report.get("kill"):
        k = report["kill"]
        print(f"\nSIGKILL of the worker ({k['workers']} worker, 4 clients looping): {k['failed']} of "
              f"{k['requests']} requests failed ({k['failed_in_flight_at_kill']} of them in flight at the "
              f"kill); first answer to a request sent after the kill {k['first_answer_after_kill_s']} s after it")
    if report["soak"]:
        print("\nJava RSS (MiB) at concurrency 16, every 15 s: "
              + ", ".join(str(s["java_rss_mib"]) for s in report["soak"])
              + f" ({report['soak'][-1].get('requests')} requests, {report['soak'][-1].get('errors')} errors)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-hf", action="store_true", help="leave out the HF toolkit")
    parser.add_argument("--backends", default="transformers,ctranslate2",
                        help="engines of our MMS stack to run (single-model and multi-model)")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the multi-model memory run")
    parser.add_argument("--skip-kill", action="store_true", help="leave out the worker-kill run")
    parser.add_argument("--soak", type=float, default=0, help="seconds of Java memory soak (0: none)")
    parser.add_argument("--json", type=Path, default=REPO / "build" / "mms_bench.json")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if unknown := set(backends) - set(BACKEND_ENV):
        parser.error(f"--backends: unknown {', '.join(sorted(unknown))} (transformers, ctranslate2)")
    hf_python = None if args.skip_hf else ensure_hf_venv()
    work = Path(tempfile.mkdtemp(prefix="mms-bench-"))
    LOGS.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"cores": len(os.sched_getaffinity(0)), "mem_total_mib": memory.total_bytes() // MIB},
              "multi_model": {}, "soak": []}
    try:
        if not args.skip_memory:
            demo_ct2 = work / "demo-ct2"  # HF files + ctranslate2/: loads as is on either backend
            if not demo_ct2.exists():
                shipped_copy(DEMO, demo_ct2, {"int8"})
            for i in range(4):
                shutil.copytree(demo_ct2, work / "models" / f"demo-{i}")
            cores = len(os.sched_getaffinity(0))
            servers = [mms(f"mms {ENGINE[b]} ({cores} workers x 1 thread)",
                           {**BACKEND_ENV[b], "SERVE_MODEL_ROOT": str(work / "models")}) for b in backends]
            servers += [hf(work, hf_python, None)] if hf_python else []
            for server in servers:
                print(f"== {server.name}: multi-model memory", flush=True)
                try:
                    cold_start = server.start()
                    report["multi_model"][server.name] = multi_model_memory(server, work, cold_start)
                finally:
                    server.stop()
        if not args.skip_kill:
            print("== worker kill under load", flush=True)
            report["kill"] = worker_kill()
        if args.soak:
            print(f"== Java memory, {args.soak:.0f} s at concurrency 16", flush=True)
            report["soak"] = java_soak(args.soak)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print_tables(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
