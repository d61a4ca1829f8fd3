"""Soak: each single-model stack under steady load for a long time, minute by minute.

    .venv/bin/python bench/soak.py [--minutes 10] [--stacks flask,mms] [--concurrency 16]

Per stack (the demo model, started as the tests start it): ``--concurrency`` closed-loop
keep-alive clients ask the demo questions for ``--minutes``; every answer is checked
against the one the stack gave before the run (greedy decoding: it must not change). Each
minute: requests, errors (non-200, dropped connections, changed answers), p50/p99 latency,
and resident memory of every process of the server (RSS sampled every 5 s, the minute's
last sample; Java on its own for the MMS stack); beside them the server's own figures from its
/metrics (read every 5 s): requests it answered, prompts per engine call, queue depth (the
minute's highest sample), queue and engine time per request. Targets (issue 11): 0 errors, the
last minute's p99 within 20 % of the first's, memory growth under 5 % from the first minute to
the last. Prints markdown tables; writes build/soak.json. Only 127.0.0.1 is contacted.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import server_metrics  # noqa: E402
from tests.mms.harness import MMS_MAIN, MmsServer  # noqa: E402
from tests.procs import DEMO_MODEL, Server, cmdline, descendants  # noqa: E402

QA = REPO / "demo" / "data" / "biography_qa.jsonl"
LOGS = REPO / "build" / "soak-logs"
MIB = 1024 * 1024
SAMPLE_S = 5


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def start(stack: str):
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{stack}.log"
    log.unlink(missing_ok=True)
    if stack == "flask":
        server = Server(log_path=log).start()
        try:
            return server.wait_ready(180)
        except BaseException:
            server.stop()
            raise
    server = MmsServer("--model-dir", str(DEMO_MODEL), log_path=log)
    try:
        return server.start().wait_ready(180)
    except BaseException:
        server.kill_leftovers()
        raise


def stop(server) -> int:
    try:
        return server.stop()
    finally:
        if isinstance(server, MmsServer):
            server.kill_leftovers()


class Soak:
    def __init__(self, server, questions: dict[str, str], concurrency: int, seconds: float):
        self.server, self.questions, self.seconds = server, questions, seconds
        self.concurrency = concurrency
        self.records: list[tuple[float, float, bool]] = []  # (end offset s, latency s, ok)
        self.memory: list[tuple[float, int, int]] = []  # (offset s, total RSS, Java RSS)
        self.scrapes: list[tuple[float, dict]] = []  # (offset s, /metrics totals)
        self.first_error = None
        self.lock = threading.Lock()
        self.started = 0.0

    def client(self, index: int) -> None:
        items = list(self.questions.items())
        conn, i = None, index
        while time.monotonic() - self.started < self.seconds:
            question, answer = items[i % len(items)]
            i += self.concurrency
            body = json.dumps({"inputs": question})
            t = time.monotonic()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
                conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                ok = response.status == 200 and json.loads(data)[0]["generated_text"] == answer
                error = None if ok else f"{response.status} {data[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError) as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
                conn = None
            end = time.monotonic()
            with self.lock:
                self.records.append((end - self.started, end - t, ok))
                if error and self.first_error is None:
                    self.first_error = error

    def scrape(self) -> None:
        figures = server_metrics.totals(self.server.url)
        if figures:
            self.scrapes.append((time.monotonic() - self.started, figures))

    def sampler(self) -> None:
        root = self.server.proc.pid
        while (elapsed := time.monotonic() - self.started) < self.seconds:
            pids = [root, *descendants(root)]
            java = sum(rss_bytes(p) for p in pids if MMS_MAIN in cmdline(p))
            self.memory.append((elapsed, sum(rss_bytes(p) for p in pids), java))
            self.scrape()
            time.sleep(SAMPLE_S)

    def run(self) -> None:
        self.started = time.monotonic()
        self.scrape()
        threads = [threading.Thread(target=self.client, args=(i,)) for i in range(self.concurrency)]
        threads.append(threading.Thread(target=self.sampler))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.seconds + 120)
        time.sleep(0.5)  # the server counts a request once its last byte is out: a moment after the client has it
        self.scrape()

    def server_side(self, low: float, high: float) -> dict:
        """The server's own figures between offsets ``low`` and ``high`` (its scrapes nearest them)."""
        if not self.scrapes:
            return server_metrics.between({}, {})
        earlier = [f for t, f in self.scrapes if t <= low] or [self.scrapes[0][1]]
        later = [f for t, f in self.scrapes if t <= high] or [self.scrapes[-1][1]]
        depths = [f.get("serve_queue_depth", 0.0) for t, f in self.scrapes if low < t <= high]
        return server_metrics.between(earlier[-1], later[-1], depths)

    def minutes(self) -> list[dict]:
        out = []
        for minute in range(max(1, int(self.seconds // 60))):
            low, high = minute * 60, (minute + 1) * 60
            records = [r for r in self.records if low <= r[0] < high]
            latencies = sorted(r[1] for r in records)
            samples = [m for m in self.memory if m[0] < high] or self.memory[:1]
            last = minute == max(1, int(self.seconds // 60)) - 1
            out.append({
                **{f"server_{k}": v for k, v in self.server_side(low, float("inf") if last else high).items()},
                "minute": minute + 1, "requests": len(records), "errors": sum(not r[2] for r in records),
                "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
                "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None,
                "rss_mb": samples[-1][1] / MIB if samples else None,
                "java_rss_mb": samples[-1][2] / MIB if samples else None,
            })
        return out


def learn_answers(server, questions: list[str]) -> dict[str, str]:
    """The stack's own greedy answer to each question, asked once before the run."""
    answers = {}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    for question in questions:
        conn.request("POST", "/invocations", json.dumps({"inputs": question}), {"Content-Type": "application/json"})
        response = conn.getresponse()
        answers[question] = json.loads(response.read())[0]["generated_text"]
    conn.close()
    return answers


def fmt(value, spec=".1f") -> str:
    return "-" if value is None else format(value, spec)


def report(stack: str, soak: Soak, rows: list[dict]) -> dict:
    total = sum(r["requests"] for r in rows)
    errors = sum(r["errors"] for r in rows)
    first, last = rows[0], rows[-1]
    p99_change = (last["p99_ms"] / first["p99_ms"] - 1) * 100 if first["p99_ms"] and last["p99_ms"] else None
    rss_change = (last["rss_mb"] / first["rss_mb"] - 1) * 100 if first["rss_mb"] and last["rss_mb"] else None
    print(f"\n### {stack} stack: {total} requests in {soak.seconds:.0f} s at concurrency {soak.concurrency}, "
          f"{errors} errors{f' (first: {soak.first_error})' if soak.first_error else ''}\n")
    java = stack == "mms"
    print("| minute | requests | errors | p50 ms | p99 ms | RSS MB, all processes |"
          + (" Java RSS MB |" if java else "")
          + " server: requests | prompts per engine call | queue depth max | queue ms | engine ms |")
    print("| --- | --- | --- | --- | --- | --- |" + (" --- |" if java else "") + " --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['minute']} | {r['requests']} | {r['errors']} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | "
              f"{fmt(r['rss_mb'], '.0f')} |" + (f" {fmt(r['java_rss_mb'], '.0f')} |" if java else "")
              + f" {r['server_requests']:.0f} | {fmt(r['server_prompts_per_call'], '.2f')} | "
              f"{fmt(r['server_queue_depth_max'], '.0f')} | {fmt(r['server_queue_ms'])} | "
              f"{fmt(r['server_engine_ms'])} |")
    verdict = lambda met: "met" if met else "**not met**"  # noqa: E731
    print(f"\n| target | {stack} stack |\n| --- | --- |")
    print(f"| 0 errors | {verdict(errors == 0)}: {errors} |")
    print(f"| last minute's p99 within 20 % of the first's | "
          f"{verdict(p99_change is not None and abs(p99_change) <= 20)}: {fmt(first['p99_ms'])} -> "
          f"{fmt(last['p99_ms'])} ms ({fmt(p99_change, '+.1f')} %) |")
    print(f"| resident memory growth < 5 % (first minute -> last) | "
          f"{verdict(rss_change is not None and rss_change < 5)}: {fmt(first['rss_mb'], '.0f')} -> "
          f"{fmt(last['rss_mb'], '.0f')} MB ({fmt(rss_change, '+.1f')} %)"
          + (f"; Java {fmt(first['java_rss_mb'], '.0f')} -> {fmt(last['java_rss_mb'], '.0f')} MB" if java else "")
          + " |")
    return {"stack": stack, "requests": total, "errors": errors, "first_error": soak.first_error,
            "p99_change_percent": p99_change, "rss_change_percent": rss_change, "minutes": rows,
            "memory_samples": soak.memory, "metrics_samples": soak.scrapes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10, help="per stack (default 10)")
    parser.add_argument("--stacks", default="flask,mms", help="comma-separated: flask, mms")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", default=str(REPO / "build" / "soak.json"))
    args = parser.parse_args()
    questions = [json.loads(line)["question"] for line in QA.read_text().splitlines() if line.strip()][:64]
    results = []
    for stack in args.stacks.split(","):
        print(f"starting the {stack} stack, then {args.minutes:g} min at concurrency {args.concurrency}",
              file=sys.stderr)
        server = start(stack)
        try:
            soak = Soak(server, learn_answers(server, questions), args.concurrency, args.minutes * 60)
            soak.run()
        finally:
            code = stop(server)
        result = report(stack, soak, soak.minutes())
        result["exit_code"] = code
        results.append(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
