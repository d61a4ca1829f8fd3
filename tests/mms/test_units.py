"""The MMS stack's pure parts: config rendering, validation, ports, memory readers, the
worker <-> front protocol."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from container import memory, protocol
from container.mms_process import (MMS_MAX_PORT, ConfigValueError, escape_property, java_memory_flags,
                                   pick_internal_port, render_properties)
from container.models import mms_name, resolve_url, validate_name
from handlers.config import HandlerConfig
from handlers.errors import InferenceError
from tests.procs import REPO

MIB = 1024 * 1024


def config(**overrides) -> str:
    values = dict(port=20001, model_store="/opt/ml/models", workers=2, timeout_s=60,
                  max_payload_bytes=6 * MIB)
    return render_properties(**{**values, **overrides})


def parse(text: str) -> dict:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_properties_derive_from_our_settings_only():
    props = parse(config())
    assert props["inference_address"] == props["management_address"] == "http://127.0.0.1:20001"
    # Envelopes of a batch: any one request (6 MiB body + http.server's 100 x 64 KiB of
    # headers) fits, and so do several smaller ones.
    assert props["max_request_size"] == props["max_response_size"] == str(2 * 6 * MIB + 100 * 65536)
    assert props["default_workers_per_model"] == "2"
    assert props["decode_input_request"] == "false"
    assert props["enable_envvars_config"] == "false"
    assert props["default_service_handler"] == "container.handler_service"


@pytest.mark.parametrize("seconds, minutes", [(1, 1), (59, 1), (60, 1), (61, 2), (600, 10), (3601, 61)])
def test_timeout_seconds_become_whole_minutes_rounded_up(seconds, minutes):
    props = parse(config(timeout_s=seconds))
    assert props["default_response_timeout"] == str(minutes)
    assert props["default_response_timeout_seconds"] == str(seconds)


def test_properties_values_cannot_inject_keys():
    assert escape_property(r"C:\dir") == r"C:\\dir"
    assert escape_property(" lead") == r"\ lead"
    assert escape_property("caf\u00e9") == r"caf\u00e9"
    for bad in ("a\nload_models=ALL", "a\rb", "a\x00b"):
        with pytest.raises(ConfigValueError):
            escape_property(bad)
    with pytest.raises(ConfigValueError):
        config(model_store="/models\nload_models=ALL")


@pytest.mark.parametrize("name", ["model", "a", "3f2a9c", "my-model_v2.tar.gz", "team/model.tar.gz", "A" * 255])
def test_good_model_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-lead", ".hidden", "../etc", "a/../b", "a b", "a\nb", "a;rm -rf /",
                                  "$(id)", "a=b", "x" * 256, 42, None, ["a"], "caf\u00e9"])
def test_bad_model_names_are_400(name):
    with pytest.raises(InferenceError) as err:
        validate_name(name)
    assert err.value.status == 400


def test_mms_names_are_safe_and_distinct():
    names = ["a/b", "a_b", "a.b", "A/B" * 40]
    internal = [mms_name(n) for n in names]
    assert len(set(internal)) == len(names)
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") for n in internal)
    assert all(len(n) <= 53 for n in internal)


def test_urls_must_stay_inside_the_model_root(tmp_path):
    root = tmp_path / "models"
    (root / "m1").mkdir(parents=True)
    (root / "file").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert resolve_url(str(root / "m1"), root) == root / "m1"
    assert resolve_url("m1", root) == root / "m1"
    for url, status in [(str(outside), 400), ("../outside", 400), (str(root / "m1/../../outside"), 400),
                        ("link", 400), ("/etc", 400), ("http://example.com/m.tar.gz", 400),
                        ("s3://bucket/m.tar.gz", 400), ("file:///etc", 400), ("", 400), ("m1\n", 400),
                        (None, 400), ("file", 400), ("missing", 404), (str(root / "missing"), 404)]:
        with pytest.raises(InferenceError) as err:
            resolve_url(url, root)
        assert err.value.status == status, url


def test_internal_port_from_the_safe_range_and_below_mms_limit():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        if busy <= MMS_MAX_PORT:
            assert pick_internal_port((busy, busy + 5), set()) != busy
    port = pick_internal_port(None, set())
    assert 1024 < port <= MMS_MAX_PORT
    assert pick_internal_port((20000, 20010), {20000}) in range(20001, 20011)
    with pytest.raises(RuntimeError):
        pick_internal_port((40000, 40010), set())  # MMS cannot bind there at all


def test_memory_readers():
    assert 0 < memory.available_bytes() <= memory.total_bytes()
    mine = memory.process_memory(os.getpid())
    assert mine is not None and 0 < mine.pss <= mine.rss
    assert memory.process_memory(2 ** 22 + 7) is None


def test_weights_bytes(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "config.json").write_text("{}")
    assert memory.weights_bytes(tmp_path) == 1000
    (tmp_path / "model.safetensors").unlink()
    assert memory.weights_bytes(tmp_path) == 2  # no weight files: every file counts


def test_load_report_round_trip(tmp_path: Path):
    report = protocol.LoadReport(pid=12, ok=False, status=500, error="bad", load_seconds=1.5, kind="X",
                                 batchable=False)
    protocol.write_report(tmp_path, "m-1", report)
    assert protocol.read_reports(tmp_path, "m-1") == [report]
    protocol.clear_reports(tmp_path, "m-1")
    assert protocol.read_reports(tmp_path, "m-1") == []


def test_envelope_round_trip_keeps_every_item_apart():
    items = [({"headers": {"content-type": "text/plain"}}, b"a"), ({"status": 200}, b""),
             ({"headers": {}}, bytes(range(256)) * 3)]
    data = protocol.pack(items)
    assert protocol.unpack(data) == [({**meta, "length": len(body)}, body) for meta, body in items]
    for bad in (b"", b"SRVB1", data[:-1], data + b"x", b"{}" + data):
        with pytest.raises(ValueError):
            protocol.unpack(bad)


def test_java_memory_is_bounded_from_the_payload_cap():
    flags = java_memory_flags(6 * MIB)
    for prefix in ("-Xmx", "-XX:MaxDirectMemorySize=", "-XX:MaxMetaspaceSize=", "-XX:ReservedCodeCacheSize="):
        assert any(f.startswith(prefix) for f in flags), prefix
    heap = lambda cap: int(next(f for f in java_memory_flags(cap) if f.startswith("-Xmx"))[4:-1])  # noqa: E731
    assert heap(6 * MIB) < 512 and heap(60 * MIB) > heap(6 * MIB)


def test_the_worker_side_imports_no_torch_itself():
    """container.handler_service and what it imports leave the engine to handlers: with a
    torch-free engine, an MMS worker never loads torch."""
    code = "import sys, container.handler_service, container.mms_worker; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_first_estimate_of_a_worker_follows_the_backend(tmp_path):
    """Before any load has taught it, the policy guesses a torch worker (~400 MiB) or a
    CTranslate2 one (~64 MiB); with CTranslate2 a shipped converted model is what a worker holds.
    With ``auto`` (the default) a T5 model is CTranslate2's, another family torch's."""
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    (tmp_path / "model.safetensors").write_bytes(b"x" * MIB)
    (tmp_path / "ctranslate2").mkdir()
    (tmp_path / "ctranslate2" / "model.bin").write_bytes(b"x" * (MIB // 4))
    torch_policy = memory.MemoryPolicy(0, 300 * MIB, HandlerConfig(backend="transformers"))
    ct2_policy = memory.MemoryPolicy(0, 300 * MIB, HandlerConfig(backend="ctranslate2"))
    auto_policy = memory.MemoryPolicy(0, 300 * MIB)
    assert auto_policy.estimate(tmp_path, 2) == ct2_policy.estimate(tmp_path, 2)
    assert torch_policy.estimate(tmp_path, 2) > 2 * 400 * MIB
    assert ct2_policy.estimate(tmp_path, 2) == 2 * (64 * MIB + int(memory.WEIGHTS_FACTOR * MIB // 4))
    with pytest.raises(InferenceError) as refused:
        torch_policy.check("m", tmp_path, 2, used_bytes=0)
    assert refused.value.status == 507 and "budget" in refused.value.message
    ct2_policy.check("m", tmp_path, 2, used_bytes=0)  # fits
    ct2_policy.learn(tmp_path, 2, pss_bytes=2 * 45 * MIB)  # what a load measured
    assert ct2_policy.worker_fixed_bytes["ctranslate2"] == 45 * MIB - int(memory.WEIGHTS_FACTOR * MIB // 4)
    ct2_policy.learn(tmp_path, 2, pss_bytes=MIB)  # a nonsense measurement keeps a floor
    assert ct2_policy.worker_fixed_bytes["ctranslate2"] == memory.MIN_WORKER_BYTES
    (tmp_path / "config.json").write_text('{"model_type": "bart"}')
    assert auto_policy.estimate(tmp_path, 2) == torch_policy.estimate(tmp_path, 2)
