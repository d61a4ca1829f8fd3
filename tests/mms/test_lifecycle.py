"""The MMS stack's plumbing, for real (front + Java + Python workers), with models that need
no weights: ports, private paths, timeouts, load reporting, payload cap, SIGTERM, orphans."""

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from container import protocol
from tests.mms.harness import MIB, MmsServer, group_members, make_model, wait_until
from tests.procs import cmdline, descendants

TIMEOUT_S = 4
CAP = 6 * MIB


def scripted(root: Path, name: str, **behaviour) -> Path:
    model = make_model(root, name, "scripted_inference.py", weights=False)
    (model / "behaviour.json").write_text(json.dumps(behaviour))
    return model


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    scripted(root, "echo")
    scripted(root, "echo2")
    scripted(root, "slowload", load_sleep=TIMEOUT_S + 2)
    scripted(root, "loadfail", load_error="weights.bin is truncated (fixture)")
    return root


@pytest.fixture(scope="module")
def safe_range() -> tuple[int, int]:
    low = 20000 + (os.getpid() * 7) % 9000
    return low, low + 99


@pytest.fixture(scope="module")
def tmpdir_base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("t")


@pytest.fixture(scope="module")
def server(root, safe_range, tmpdir_base, tmp_path_factory):
    srv = MmsServer("--multi-model", "--model-root", str(root), "--timeout", str(TIMEOUT_S),
                    "--safe-port-range", f"{safe_range[0]}-{safe_range[1]}",
                    log_path=tmp_path_factory.mktemp("log") / "mms.log", env={"TMPDIR": str(tmpdir_base)})
    srv.start().wait_ready()
    try:
        assert srv.load("echo", root / "echo").status_code == 200
        yield srv
        assert srv.stop() == 0
        assert wait_until(lambda: not srv.leftovers(), 10) or srv.leftovers() == []
    finally:
        srv.kill_leftovers()


def listening_ports(pids: list[int]) -> set[int]:
    """TCP ports the processes ``pids`` listen on, from /proc/net/tcp{,6} and their fds."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_internal_ports_come_from_the_safe_port_range(server, safe_range):
    server.remember_processes()
    ports = listening_ports(group_members(server.java_pid))
    assert ports, "MMS listens on no TCP port?"
    assert all(safe_range[0] <= p <= safe_range[1] for p in ports), ports
    # nginx has the public port; every other port of the server (gunicorn's) is in the range too
    front = listening_ports([pid for pid in descendants(server.proc.pid) if pid not in group_members(server.java_pid)])
    assert server.port in front and all(safe_range[0] <= p <= safe_range[1] for p in front - {server.port}), front


def test_private_config_and_sockets_no_fixed_paths(server, tmpdir_base):
    java = cmdline(server.java_pid)
    config = Path(re.search(r" -f (\S+)", java).group(1))
    tmp = re.search(r"-Djava\.io\.tmpdir=(\S+)", java).group(1)
    assert config.parent.parent == tmpdir_base and tmp.startswith(str(config.parent))
    props = dict(line.split("=", 1) for line in config.read_text().splitlines() if "=" in line)
    assert props["max_request_size"] == props["max_response_size"] == str(protocol.envelope_cap(CAP))
    assert props["default_response_timeout"] == "1"  # minutes, rounded up from 4 s
    assert props["default_response_timeout_seconds"] == str(TIMEOUT_S)
    assert props["inference_address"] == props["management_address"]
    assert props["inference_address"].startswith("http://127.0.0.1:")
    sockets = [p.name for p in Path(tmp).iterdir()]
    assert any(name.startswith(".mms.sock.") for name in sockets), sockets
    assert not Path("/tmp/.model_server.pid").exists()


def test_a_load_slower_than_the_request_timeout_still_loads(server, root):
    started = time.monotonic()
    r = server.load("slowload", root / "slowload")
    assert r.status_code == 200, r.text
    assert time.monotonic() - started >= TIMEOUT_S
    assert server.invoke("slowload", {"echo": 1}).json()["echo"] == 1
    assert server.delete("/models/slowload").status_code == 200


def test_a_failed_load_is_reported_with_the_python_reason(server, root):
    r = server.load("loadfail", root / "loadfail")
    assert r.status_code == 422, r.text
    assert r.json()["code"] == 422
    assert "weights.bin is truncated (fixture)" in r.json()["error"]
    assert "Traceback" not in r.text
    assert "loadfail" not in [m["modelName"] for m in server.get("/models").json()["models"]]
    assert server.invoke("loadfail", {}).status_code == 404
    assert server.get("/ping").status_code == 200
    assert server.invoke("echo", {"echo": "still here"}).json()["echo"] == "still here"


def test_payload_cap_is_exactly_6_mib(server):
    pad = lambda n: json.dumps({"pad": "x" * (n - len('{"pad": ""}'))})  # noqa: E731
    assert len(pad(CAP)) == CAP
    assert server.invoke("echo", pad(CAP)).status_code == 200
    r = server.invoke("echo", pad(CAP + 1))
    assert r.status_code == 413 and r.json()["code"] == 413
    chunks = (pad(CAP + 1).encode()[i:i + MIB] for i in range(0, CAP + 1, MIB))
    r = requests.post(server.url + "/models/echo/invoke", data=chunks, timeout=60,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_form_bodies_reach_the_handler_untouched(server):
    # MMS itself would parse this as a form and hand the worker no body at all.
    r = server.invoke("echo", "a=1&b=2", "application/x-www-form-urlencoded")
    assert r.status_code == 500  # the script's json.loads fails on the raw body...
    assert "JSONDecodeError" in r.json()["error"]  # ...which proves it got the raw body
    assert "Traceback" not in r.text


def test_concurrent_requests_each_get_their_own_answer(server):
    bodies = [json.dumps({"echo": i}) if i % 3 else "{broken" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: server.invoke("echo", b), bodies))
    for i, r in enumerate(answers):
        if i % 3:
            assert r.status_code == 200 and r.json()["echo"] == i, r.text
        else:
            assert r.status_code == 500 and r.headers["Content-Type"] == "application/json"


def test_custom_attributes_echoed_only_when_sent(server):
    r = server.invoke("echo", {"echo": 1}, headers={"X-Amzn-SageMaker-Custom-Attributes": "trace=1"})
    assert r.headers["X-Amzn-SageMaker-Custom-Attributes"] == "trace=1"
    assert "X-Amzn-SageMaker-Custom-Attributes" not in server.invoke("echo", {"echo": 1}).headers


def test_a_request_over_the_timeout_is_504_and_the_model_recovers(server):
    started = time.monotonic()
    r = server.invoke("echo", {"sleep": TIMEOUT_S + 3})
    assert r.status_code == 504, r.text
    assert time.monotonic() - started < TIMEOUT_S + 3
    # MMS restarts the worker (reloading the model): 503 "still loading" until then.
    ok = wait_until(lambda: server.invoke("echo", {"echo": "back"}).status_code == 200, 60, 0.5)
    assert ok, server.log()


def test_two_servers_side_by_side(server, root, tmp_path):
    other = MmsServer("--model-dir", str(root / "echo2"), log_path=tmp_path / "other.log")
    try:
        other.start().wait_ready()
        answer = other.post("/invocations", {"echo": "other"}).json()
        assert (answer["model"], answer["echo"]) == ("echo2", "other")
        assert server.invoke("echo", {"echo": "first"}).json()["echo"] == "first"
        assert other.stop() == 0
        assert other.leftovers() == []
    finally:
        other.kill_leftovers()
    assert server.invoke("echo", {"echo": "first"}).json()["echo"] == "first"


def test_sigterm_drains_in_flight_requests_and_leaves_no_process(root, tmp_path):
    srv = MmsServer("--model-dir", str(root / "echo2"), log_path=tmp_path / "mms.log")
    try:
        srv.start().wait_ready()
        assert group_members(srv.java_pid), "no MMS process group?"
        result = {}
        worker = threading.Thread(target=lambda: result.update(r=srv.post("/invocations", {"sleep": 2, "echo": 7})))
        worker.start()
        time.sleep(0.7)
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(40) == 0
        worker.join(10)
        assert result["r"].status_code == 200 and result["r"].json()["echo"] == 7
        assert time.monotonic() - started < 30
        assert srv.leftovers() == [], srv.log()
        assert group_members(srv.java_pid) == []
        with pytest.raises(requests.ConnectionError):
            requests.get(srv.url + "/ping", timeout=2)
    finally:
        srv.kill_leftovers()


def test_a_dead_java_is_not_swallowed(root, tmp_path):
    srv = MmsServer("--model-dir", str(root / "echo2"), log_path=tmp_path / "mms.log")
    try:
        srv.start().wait_ready()
        os.kill(srv.java_pid, signal.SIGKILL)
        assert srv.proc.wait(30) == 1
        assert wait_until(lambda: not srv.leftovers(), 10), srv.leftovers()
    finally:
        srv.kill_leftovers()


def test_single_model_that_fails_to_load_stops_the_server(root, tmp_path):
    """As on the flask stack: /ping never says 200, the reason is logged, exit code 1."""
    srv = MmsServer("--model-dir", str(root / "loadfail"), log_path=tmp_path / "mms.log")
    try:
        srv.start()
        pings = []
        deadline = time.monotonic() + 90
        while srv.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                pings.append(srv.get("/ping", timeout=5).status_code)
            time.sleep(0.2)
        assert srv.proc.wait(5) == 1, srv.log()
        assert 200 not in pings and 503 in pings, pings
        assert "weights.bin is truncated (fixture)" in srv.log(None)
        assert wait_until(lambda: srv.leftovers() == [], 10), srv.leftovers()
    finally:
        srv.kill_leftovers()
