"""container.handler_service with MMS's own Context, in-process: whole batches, per-item
status codes and content types, load reports, answers while loading."""

import json
import os
import struct

import pytest
from mms.context import Context, RequestProcessor

from container import load_status
from container.mms_config import ENV_STATE_DIR
from tests.mms.harness import make_model


@pytest.fixture()
def service(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_STATE_DIR, str(tmp_path / "state"))
    from container.handler_service import HandlerService

    model = make_model(tmp_path, "echo", "scripted_inference.py", weights=False)
    svc = HandlerService()
    context = Context("echo-123", str(model), None, 8, None, "1.1.11")
    svc.initialize(context)
    assert svc.loaded.wait(60)
    return svc


def batch(context_items: list[dict]) -> tuple[Context, list[dict]]:
    context = Context("echo-123", "/nowhere", None, 8, None, "1.1.11")
    context.request_processor = [RequestProcessor(item["headers"]) for item in context_items]
    context.request_ids = {i: f"req-{i}" for i in range(len(context_items))}
    return context, [{"body": item["body"]} for item in context_items]


def test_each_item_of_a_batch_is_answered_on_its_own(service):
    items = [
        {"headers": {"Content-Type": "application/json"}, "body": bytearray(b'{"echo": 1}')},
        {"headers": {"content-type": "application/json"}, "body": bytearray(b"{broken")},
        {"headers": {"X-Serve-Content-Type": "application/json", "Content-Type": "application/octet-stream"},
         "body": bytearray(b'{"echo": 3}')},
    ]
    context, data = batch(items)
    answers = service.handle(data, context)
    assert len(answers) == 3
    assert json.loads(answers[0])["echo"] == 1 and json.loads(answers[2])["echo"] == 3
    assert context.get_response_status(0)[0] == context.get_response_status(2)[0] == 200
    assert context.get_response_status(1) == (500, "Internal Server Error")
    assert json.loads(answers[1])["code"] == 500 and "Traceback" not in answers[1].decode()
    assert all(context.get_response_content_type(i) == "application/json" for i in range(3))


def test_load_reported_to_the_state_dir(service, tmp_path):
    [report] = load_status.read_all(tmp_path / "state", "echo-123")
    assert report.ok and report.pid == os.getpid() and report.kind == "ScriptService"


def test_while_loading_every_item_gets_503_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_STATE_DIR, str(tmp_path / "state"))
    from container.handler_service import HandlerService

    svc = HandlerService()  # initialize() never called: still loading
    context, data = batch([{"headers": {}, "body": bytearray(b"{}")}] * 2)
    answers = svc.handle(data, context)
    assert [context.get_response_status(i)[0] for i in range(2)] == [503, 503]
    assert b"still loading" in answers[0]


def test_response_header_map_is_sent_empty():
    """The MMS decoder workaround: no response-header map reaches Java (see the module)."""
    import container.handler_service  # noqa: F401 - applies the workaround
    from mms.protocol import otf_message_handler

    assert otf_message_handler.encode_response_headers({"content-type": "x"}) == struct.pack("!i", 0)
