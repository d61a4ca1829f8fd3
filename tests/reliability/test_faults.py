"""Faults on both stacks, with real processes: a killed worker, SIGTERM under load, slow
clients, broken model directories, and load/unload cycles on a multi-model endpoint.
Each test starts its own server and takes under a minute.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from container import memory
from tests.mms.harness import DEMO_MODEL, MmsServer, make_model, wait_until
from tests.procs import Server, alive, descendants, http_request
from tests.reliability.conftest import ANSWER, QUESTION, assert_still_answers, start_stack, stop_stack

STACKS = ["flask", "mms"]


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no answer (connection refused, reset or timed out)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


class Load:
    """``clients`` threads sending ``body`` in a loop (each on a fresh connection, so that a
    dropped connection is unambiguous), until stopped or ``max_s`` has passed."""

    def __init__(self, server, body: bytes, clients: int, max_s: float = 50, timeout: float = 45):
        self.server, self.body, self.timeout = server, body, timeout
        self.deadline = time.monotonic() + max_s
        self.outcomes: list[Outcome] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> list[Outcome]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(self.timeout + 5)
        return sorted(self.outcomes, key=lambda o: o.started)

    def _loop(self) -> None:
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            started = time.monotonic()
            try:
                answer = http_request(self.server.port, "POST", "/invocations", self.body,
                                      {"Content-Type": "application/json"}, timeout=self.timeout)
                outcome = Outcome(started, time.monotonic(), answer.status, answer.body[:200].decode(errors="replace"))
            except OSError as exc:  # refused, reset, disconnected, timed out
                outcome = Outcome(started, time.monotonic(), None, f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)  # a stopped server refuses at once: do not spin
            self.outcomes.append(outcome)


def summary(outcomes: list[Outcome], zero: float) -> str:
    return "; ".join(f"{o.started - zero:+.2f}..{o.ended - zero:+.2f}s {o.status or o.error[:60]}"
                     for o in outcomes[:12])


@pytest.fixture
def stack_of(tmp_path):
    """Start a stack of a given kind for one test; stopped (and checked for leftovers) after."""
    servers = []

    def start(kind: str, env: dict | None = None, mms_args: tuple[str, ...] = ()):
        server = start_stack(kind, tmp_path, env=env, mms_args=mms_args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        stop_stack(server)


# -- a killed worker --------------------------------------------------------------------

@pytest.mark.parametrize("kind", STACKS)
def test_sigkill_of_the_model_worker_fails_only_requests_in_flight(kind, stack_of):
    """4 clients loop; a process holding the model (one of the MMS stack's workers) is
    SIGKILLed. Only requests already sent may fail (at most one per client); requests sent
    afterwards wait for the new worker; answers resume within 5 s."""
    server = stack_of(kind)
    victim = server.model_pids()[0]
    with Load(server, json.dumps({"inputs": QUESTION}).encode(), clients=4) as load:
        time.sleep(2)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: any(o.ok and o.started > killed_at for o in load.outcomes), 15)
        time.sleep(1)
        outcomes = load.stop()
    after = [o for o in outcomes if o.started > killed_at + 0.1]
    failed = [o for o in outcomes if not o.ok]
    resumed = min((o.ended for o in outcomes if o.ok and o.started > killed_at), default=None)
    report = f"failed: {summary(failed, killed_at)} | {len(outcomes)} requests"
    assert len(failed) <= 4, report
    assert all(o.ok for o in after), f"a request sent after the kill failed: {report}"
    assert resumed is not None and resumed - killed_at <= 5, f"resumed after {resumed and resumed - killed_at} s"
    assert victim not in server.model_pids() and server.model_pids()
    assert_still_answers(server)


# -- SIGTERM under load -----------------------------------------------------------------

@pytest.mark.parametrize("kind", STACKS)
def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(kind, stack_of):
    """8 clients loop on requests of ~0.1-1 s each; SIGTERM. Every request sent before the
    stop (0.5 s of grace for the server to read it) is answered 200; later ones are answered
    or refused, none hangs; exit 0 within 30 s; no process left."""
    server = stack_of(kind)
    body = json.dumps({"inputs": [QUESTION] * 8, "parameters": {"min_new_tokens": 20, "max_new_tokens": 20}})
    with Load(server, body.encode(), clients=8, timeout=40) as load:
        time.sleep(2)
        termed_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(35)
        stopped_in = time.monotonic() - termed_at
        outcomes = load.stop()
    assert code == 0 and stopped_in < 30, (code, stopped_in)
    accepted = [o for o in outcomes if o.started < termed_at - 0.5]
    assert accepted and all(o.ok for o in accepted), summary([o for o in accepted if not o.ok], termed_at)
    late = [o for o in outcomes if o.started >= termed_at - 0.5]
    assert all(o.ok or o.status == 503 or o.status is None for o in late), summary(late, termed_at)
    assert all(o.ended - o.started < 35 for o in outcomes)
    assert wait_until(lambda: not server.leftovers(), 5), server.leftovers()


# -- slow clients -----------------------------------------------------------------------

class Dribbler(threading.Thread):
    """A client that sends ``head`` at ``head_rate`` bytes/s (0: at once), then its body
    one byte every ``interval`` s (or stops sending after ``stall_after`` body bytes).
    Records when the server cut it off (closed, reset or answered early)."""

    def __init__(self, port: int, body: bytes, *, head_rate: float = 0, interval: float = 1.0,
                 stall_after: int | None = None):
        super().__init__(daemon=True)
        self.port, self.body, self.head_rate, self.interval = port, body, head_rate, interval
        self.stall_after = stall_after
        self.head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        self.started = self.cut_after = None
        self.sent = 0
        self.answer = b""
        self.stop = threading.Event()

    def _cut(self, sock) -> bool:
        with contextlib.suppress(BlockingIOError):
            data = sock.recv(4096)
            self.answer += data
            return True  # b"" (closed) or an answer before the request was complete
        return False

    def run(self) -> None:
        self.started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.setblocking(False)
            if not self.head_rate:
                sock.sendall(self.head)
            chunks = [self.head[i:i + 1] for i in range(len(self.head))] if self.head_rate else []
            chunks += [self.body[i:i + 1] for i in range(len(self.body))]
            for index, chunk in enumerate(chunks):
                delay = 1 / self.head_rate if index < len(self.head) and self.head_rate else self.interval
                if self.stall_after is not None and index == self.stall_after:
                    delay = 60
                deadline = time.monotonic() + delay
                while time.monotonic() < deadline and not self.stop.is_set():
                    try:
                        if self._cut(sock):
                            self.cut_after = time.monotonic() - self.started
                            return
                    except OSError:  # reset
                        self.cut_after = time.monotonic() - self.started
                        return
                    time.sleep(0.05)
                if self.stop.is_set():
                    return
                try:
                    sock.send(chunk)
                    self.sent += 1
                except OSError:
                    self.cut_after = time.monotonic() - self.started
                    return


def good_requests_meanwhile(server, count: int = 10) -> list[float]:
    """Latency of ``count`` good requests (each must answer right)."""
    latencies = []
    for _ in range(count):
        started = time.monotonic()
        assert_still_answers(server)
        latencies.append(time.monotonic() - started)
    return latencies


@pytest.mark.parametrize("kind", STACKS)
def test_slow_clients_are_held_by_nginx_and_cut_off_when_they_stall(stack_of, kind):
    """Both stacks have nginx in front. What stock nginx 1.22 can do, with the request timeout
    at 3 s (client_header_timeout, client_body_timeout and send_timeout come from it): a client
    that sends its headers slowly is cut off 3 s after it connected (the header timeout is
    total); one that stops sending its body is cut off 3 s after its last byte. A client that
    keeps sending its body a byte a second is NOT cut off: client_body_timeout is per read, and
    nginx 1.22 has no total limit on a body's time. It costs no gunicorn thread, though: nginx
    buffers the body in its event loop and passes on only complete requests, so 8 such clients
    (twice the 4 request threads) do not slow anyone else down."""
    server = stack_of(kind, env={"SAGEMAKER_MODEL_SERVER_TIMEOUT": "3", "SERVE_HTTP_THREADS": "4"})
    body = json.dumps({"inputs": QUESTION}).encode()
    dribblers = [Dribbler(server.port, body, interval=1.0) for _ in range(8)]
    slow_head = Dribbler(server.port, body, head_rate=2)
    staller = Dribbler(server.port, body, interval=0.1, stall_after=10)
    for client in (*dribblers, slow_head, staller):
        client.start()
    try:
        time.sleep(1)
        latencies = good_requests_meanwhile(server, 20)
        assert max(latencies) < 10, latencies  # blocked behind the slow clients, it would wait ~60 s
        slow_head.join(15)
        staller.join(15)
        assert slow_head.cut_after is not None and slow_head.cut_after < 3 + 2, slow_head.cut_after
        assert slow_head.sent < len(slow_head.head)
        assert staller.cut_after is not None and 3 <= staller.cut_after < 3 + 1 + 2, staller.cut_after
        assert not any(d.cut_after for d in dribblers), "nginx cut a client that was still sending"
    finally:
        for client in (*dribblers, slow_head, staller):
            client.stop.set()
    assert_still_answers(server)


# -- broken model directories -----------------------------------------------------------

# How a model dir is broken -> a word its error must contain.
BROKEN = {"truncated-weights": "model.safetensors", "no-weights": "weights", "no-tokenizer": "tokenizer",
          "no-config": "config.json"}


def broken_model(root: Path, kind: str) -> Path:
    """A copy of the demo model's checkpoint (not its converted copy), broken in one way."""
    model = root / kind
    shutil.copytree(DEMO_MODEL, model, ignore=shutil.ignore_patterns("ctranslate2"))
    weights = model / "model.safetensors"
    if kind == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    elif kind == "no-weights":
        weights.unlink()
    elif kind == "no-tokenizer":
        for name in ("tokenizer.json", "spiece.model"):
            (model / name).unlink()
    elif kind == "no-config":
        (model / "config.json").unlink()
    return model


@pytest.mark.parametrize("kind", STACKS)
@pytest.mark.parametrize("breakage", BROKEN)
def test_a_broken_single_model_exits_non_zero_and_never_pings_200(kind, breakage, tmp_path):
    model, word = broken_model(tmp_path, breakage), BROKEN[breakage]
    log_path = tmp_path / "server.log"
    if kind == "flask":
        server = Server(model_dir=model, log_path=log_path)
    else:
        server = MmsServer("--model-dir", str(model), log_path=log_path)
    server.start()
    try:
        deadline = time.monotonic() + 45
        while server.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                assert requests.get(server.url + "/ping", timeout=5).status_code != 200
            time.sleep(0.2)
        assert server.proc.poll() not in (None, 0), f"still running or exit 0 after 45 s:\n{server.log()}"
        assert word in server.full_log(), server.log()
        assert wait_until(lambda: not server.leftovers(), 10), server.leftovers()
    finally:
        stop_stack(server)


@pytest.fixture(scope="module")
def mme(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    make_model(root, "demo")
    for breakage in BROKEN:
        broken_model(root, breakage)
    server = MmsServer("--multi-model", "--model-root", str(root),
                       log_path=tmp_path_factory.mktemp("log") / "mms.log")
    try:
        server.start().wait_ready()
        assert server.load("demo", root / "demo").status_code == 200
        server.root = root
        yield server
        assert server.stop() == 0
    finally:
        server.kill_leftovers()


@pytest.mark.parametrize("breakage", BROKEN)
def test_loading_a_broken_model_is_4xx_and_the_endpoint_stays_honest(mme, breakage):
    word = BROKEN[breakage]
    r = mme.load(breakage, mme.root / breakage)
    assert 400 <= r.status_code < 500 or r.status_code == 507, (r.status_code, r.text)
    assert r.json()["code"] == r.status_code and word in r.json()["error"], r.text
    assert "Traceback" not in r.text
    assert mme.get("/models/" + breakage).status_code == 404
    assert mme.model_workers(breakage) == []
    assert mme.get("/ping").status_code == 200
    r = mme.invoke("demo", {"inputs": QUESTION})
    assert r.status_code == 200 and r.json() == [{"generated_text": ANSWER}]


# -- load/unload cycles -----------------------------------------------------------------

def server_pss(server) -> int:
    pids = [server.proc.pid, *descendants(server.proc.pid)]
    usage = [memory.process_memory(pid) for pid in pids if alive(pid)]
    return sum(u.pss for u in usage if u is not None)


def test_mme_load_unload_cycles_return_memory_and_processes(tmp_path, capsys):
    """RELIABILITY_MME_CYCLES (default 5; issue 11 asks 100) load/invoke/unload cycles of
    the demo model. Memory is compared after one warm-up cycle (the first load grows Java's
    heap and the front once); it must come back within 5 %, and no process may be left."""
    cycles = int(os.environ.get("RELIABILITY_MME_CYCLES", "5"))
    make_model(tmp_path / "models", "demo")
    server = MmsServer("--multi-model", "--model-root", str(tmp_path / "models"), log_path=tmp_path / "mms.log")
    try:
        server.start().wait_ready()
        pristine = server_pss(server)
        timings = []
        for cycle in range(cycles + 1):
            started = time.monotonic()
            r = server.load("demo", tmp_path / "models" / "demo")
            assert r.status_code == 200, r.text
            workers = server.model_workers("demo")
            r = server.invoke("demo", {"inputs": QUESTION})
            assert r.status_code == 200 and r.json() == [{"generated_text": ANSWER}], r.text
            assert server.delete("/models/demo").status_code == 200
            assert wait_until(lambda: not [p for p in workers if alive(p)], 10), f"cycle {cycle}: workers left"
            timings.append(time.monotonic() - started)
            if cycle == 0:
                baseline = server_pss(server)
        final = server_pss(server)
        with capsys.disabled():
            print(f"\nMME cycles: {cycles} (+1 warm-up), {sum(timings[1:]) / max(cycles, 1):.1f} s per cycle; "
                  f"PSS pristine {pristine / memory.MiB:.0f} MiB, after warm-up {baseline / memory.MiB:.0f} MiB, "
                  f"after {cycles} cycles {final / memory.MiB:.0f} MiB ({(final / baseline - 1) * 100:+.1f} %)")
        assert abs(final - baseline) <= 0.05 * baseline, (pristine, baseline, final)
        assert server.stop() == 0
        assert server.leftovers() == []
    finally:
        server.kill_leftovers()
