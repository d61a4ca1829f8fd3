"""The MMS stack vs the flask stack vs Hugging Face's SageMaker inference toolkit (the stock
HF image's server, also on multi-model-server), same model, same payloads, one run.

    .venv/bin/python bench/mms_bench.py [--duration 10] [--skip-hf] [--json build/mms_bench.json]

Per stack: cold start (spawn -> first 200 /ping), req/s and p50/p99 latency at concurrency
1 and 8 ({"inputs": question} from demo/data, every answer checked). Then multi-model:
load time and resident memory (PSS of every process of the server) with 1, 2 and 4 demo
copies loaded, and what unloading gives back. The HF toolkit is installed from PyPI into
build/bench-hf-venv (it needs transformers 4.x; torch comes from the same local wheel).
Only 127.0.0.1 is ever contacted; every loop is bounded in count and time.
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
            time.sleep(0.05)
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


def load_test(server: Server, questions: list[tuple[str, str]], concurrency: int, duration: float,
              path: str = "/invocations", headers: dict | None = None) -> dict:
    """Closed loop: ``concurrency`` clients, each with a keep-alive connection, for
    ``duration`` seconds (at most 20,000 requests)."""
    latencies, wrong, errors, lock = [], [], [], threading.Lock()
    deadline = time.monotonic() + duration
    counter = iter(range(20000))

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        while time.monotonic() < deadline:
            try:
                i = next(counter)
            except StopIteration:
                return
            question, answer = questions[i % len(questions)]
            started = time.monotonic()
            try:
                conn.request("POST", path, body=json.dumps({"inputs": question}),
                             headers={"Content-Type": "application/json", **(headers or {})})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
                with lock:
                    errors.append(str(exc))
                continue
            elapsed = time.monotonic() - started
            with lock:
                if resp.status != 200:
                    errors.append(f"{resp.status} {body[:100]!r}")
                    continue
                latencies.append(elapsed)
                if json.loads(body)[0]["generated_text"] != answer:
                    wrong.append(question)
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
    return {"concurrency": concurrency, "requests": len(latencies), "req_per_s": round(len(latencies) / wall, 1),
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


def stacks(work: Path, hf_python: Path | None, multi_model: bool) -> list[Server]:
    out = []
    base = dict(os.environ, SERVE_BIND_HOST="127.0.0.1")
    port = free_port()
    args = ["--multi-model", "--model-root", str(work / "models")] if multi_model else ["--model-dir", str(DEMO)]
    out.append(Server("mms (ours)", [sys.executable, "-m", "container.mms_server", "--port", str(port),
                                     "--bind-host", "127.0.0.1", *args], base, port, LOGS / "mms.log"))
    if not multi_model:
        port = free_port()
        out.append(Server("mms (ours, 2 workers)", [sys.executable, "-m", "container.mms_server", "--port", str(port),
                                                    "--bind-host", "127.0.0.1", "--workers", "2", *args],
                          base, port, LOGS / "mms2.log"))
        port = free_port()
        out.append(Server("flask (ours)", [sys.executable, "-m", "serve", "--model-dir", str(DEMO)],
                          dict(base, SAGEMAKER_BIND_TO_PORT=str(port)), port, LOGS / "flask.log"))
    if hf_python:
        port = free_port()
        hf_base = work / "hf"
        (hf_base / "tmp").mkdir(parents=True, exist_ok=True)
        if not (hf_base / "model").exists():
            shutil.copytree(DEMO, hf_base / "model")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "PYTHONPATH"))}
        env.update(PATH=f"{hf_python.parent}:{os.environ.get('PATH', '')}",  # its multi-model-server CLI
                   SAGEMAKER_BIND_TO_PORT=str(port), SAGEMAKER_BASE_DIR=str(hf_base), TMPDIR=str(hf_base / "tmp"),
                   HF_TASK="text2text-generation", HF_HUB_OFFLINE="1")
        if multi_model:
            env["SAGEMAKER_MULTI_MODEL"] = "true"
        out.append(Server("hf toolkit", [str(hf_python), "-m", "sagemaker_huggingface_inference_toolkit.serving"],
                          env, port, LOGS / "hf.log", cwd=hf_base))  # its MMS writes logs/ into cwd
    return out


def multi_model_memory(server: Server, work: Path) -> dict:
    """Load 4 demo copies one by one (PSS after 1, 2, 4), invoke each, unload all."""
    result = {"pss_mib": {"0": round(pss_mib(server.proc.pid))}, "load_s": []}
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
    free_before = memory.available_bytes()
    for i in range(4):
        server.request("DELETE", f"/models/demo-{i}")
    time.sleep(2)
    result["pss_mib"]["after_unload"] = round(pss_mib(server.proc.pid))
    result["freed_mib"] = round((memory.available_bytes() - free_before) / MIB)
    p = result["pss_mib"]
    result["per_extra_model_mib"] = round((p["4"] - p["1"]) / 3)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency level")
    parser.add_argument("--skip-hf", action="store_true", help="leave out the HF toolkit")
    parser.add_argument("--json", type=Path, default=REPO / "build" / "mms_bench.json")
    args = parser.parse_args()
    qa = [json.loads(line) for line in QA.read_text().splitlines() if line.strip()]
    questions = [(row["question"], row["answer"]) for row in qa]
    hf_python = None if args.skip_hf else ensure_hf_venv()
    work = Path(tempfile.mkdtemp(prefix="mms-bench-"))
    LOGS.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        shutil.copytree(DEMO, work / "models" / f"demo-{i}")
    weights = memory.weights_bytes(DEMO) / MIB
    report = {"machine": {"cores": len(os.sched_getaffinity(0)), "mem_total_mib": memory.total_bytes() // MIB},
              "weights_mib": round(weights, 2), "single_model": {}, "multi_model": {}}
    try:
        for server in stacks(work, hf_python, multi_model=False):
            print(f"== {server.name}: single model", flush=True)
            row = {}
            try:
                row["cold_start_s"] = round(server.start(), 2)
                load_test(server, questions, 2, 2.0)  # warm-up
                row["c1"] = load_test(server, questions, 1, args.duration)
                row["c8"] = load_test(server, questions, 8, args.duration)
                row["pss_mib"] = round(pss_mib(server.proc.pid))
            finally:
                server.stop()
            report["single_model"][server.name] = row
            print(json.dumps(row), flush=True)
        for server in stacks(work, hf_python, multi_model=True):
            print(f"== {server.name}: multi-model memory", flush=True)
            try:
                server.start()
                report["multi_model"][server.name] = multi_model_memory(server, work)
            finally:
                server.stop()
            print(json.dumps(report["multi_model"][server.name]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
