"""507 when a load would not fit (measured against real free memory, and against a
configured budget), and what a loaded model costs and an unload returns."""

import json
from pathlib import Path

import pytest

from container import memory
from tests.mms.harness import MIB, MmsServer, make_model, wait_until
from tests.procs import alive


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    model = make_model(root, "echo", "scripted_inference.py", weights=False)
    (model / "behaviour.json").write_text(json.dumps({}))
    return root


def start(root: Path, tmp_path: Path, *args: str) -> MmsServer:
    srv = MmsServer("--multi-model", "--model-root", str(root), *args, log_path=tmp_path / "mms.log")
    return srv.start().wait_ready()


def test_507_when_free_memory_would_drop_below_the_reserve(root, tmp_path):
    reserve_mb = memory.total_bytes() // MIB  # no load can leave this much free
    srv = start(root, tmp_path, "--memory-reserve-mb", str(reserve_mb))
    try:
        r = srv.load("echo", root / "echo")
        assert r.status_code == 507, r.text
        assert "MiB are free" in r.json()["error"] and r.json()["code"] == 507
        assert srv.get("/models").json()["models"] == []
        assert srv.get("/ping").status_code == 200
        assert srv.stop() == 0
    finally:
        srv.kill_leftovers()


def test_507_over_the_budget_then_unload_returns_memory(root, tmp_path):
    # Enough for the first load's estimate (the default worker cost, ~400 MiB); a worker for
    # this scripted model imports no torch (~25 MiB PSS), so a dozen or so fit after it.
    srv = start(root, tmp_path, "--memory-budget-mb", "450", "--memory-reserve-mb", "0", "--workers", "1")
    try:
        r = srv.load("echo", root / "echo")
        assert r.status_code == 200, r.text
        pss = r.json()["memoryPssBytes"]
        assert pss > 0
        # The first load taught the server what one more costs; keep loading until the
        # budget says no, never beyond it.
        loaded = ["echo"]
        for i in range(30):
            r = srv.load(f"echo-{i}", root / "echo")
            if r.status_code == 507:
                break
            assert r.status_code == 200, r.text
            loaded.append(f"echo-{i}")
        assert r.status_code == 507 and "budget" in r.json()["error"], r.text
        total = sum(srv.get(f"/models/{n}").json()["memoryPssBytes"] for n in loaded)
        assert total <= 450 * MIB
        pids = [p for n in loaded for p in srv.model_workers(n)]
        for name in loaded:
            assert srv.delete(f"/models/{name}").status_code == 200
        assert wait_until(lambda: not [p for p in pids if alive(p)], 10)
        # With the memory back, a load fits again.
        assert srv.load("again", root / "echo").status_code == 200
        assert srv.stop() == 0
        assert srv.leftovers() == []
    finally:
        srv.kill_leftovers()
