"""container.handler_service with MMS's own Context, in-process: batch envelopes in and
out, per-request status codes, content types and headers, load reports, answers while
loading."""

import json
import os
import struct

import pytest
from mms.context import Context, RequestProcessor

from container import protocol
from tests.mms.harness import MIB, make_model


@pytest.fixture()
def service(tmp_path, monkeypatch):
    monkeypatch.setenv(protocol.ENV_STATE_DIR, str(tmp_path / "state"))
    from container.handler_service import HandlerService

    model = make_model(tmp_path, "echo", "scripted_inference.py", weights=False)
    svc = HandlerService()
    svc.initialize(Context("echo-123", str(model), None, 1, None, "1.1.11"))
    assert svc.loaded.wait(60)
    return svc


def send(svc, requests: list[tuple[dict, bytes]], context=None) -> tuple[int, str, bytes]:
    """One MMS request carrying ``requests`` as an envelope, as the front sends it (MMS
    passes the context ``initialize`` got; tests that need that pass it)."""
    context = context or Context("echo-123", "/nowhere", None, 1, None, "1.1.11")
    context.request_processor = [RequestProcessor({"content-type": "application/octet-stream"})]
    context.request_ids = {0: "req-0"}
    [answer] = svc.handle([{"body": bytearray(protocol.pack([({"headers": h}, b) for h, b in requests]))}],
                          context)
    return context.get_response_status(0)[0], context.get_response_content_type(0), answer


def test_each_request_of_an_envelope_is_answered_on_its_own(service):
    status, content_type, answer = send(service, [
        ({"content-type": "application/json"}, b'{"echo": 1}'),
        ({"content-type": "application/json"}, b"{broken"),
        ({"content-type": "application/json", "accept": "application/json"}, b'{"echo": 3}'),
    ])
    assert (status, content_type) == (200, protocol.ENVELOPE_TYPE)
    answers = protocol.unpack(answer)
    assert [meta["status"] for meta, _ in answers] == [200, 500, 200]
    assert all(meta["content_type"] == "application/json" for meta, _ in answers)
    assert json.loads(answers[0][1])["echo"] == 1 and json.loads(answers[2][1])["echo"] == 3
    error = json.loads(answers[1][1])
    assert error["code"] == 500 and "JSONDecodeError" in error["error"] and "Traceback" not in error["error"]


def test_user_scripts_see_each_callers_own_headers(tmp_path, monkeypatch):
    monkeypatch.setenv(protocol.ENV_STATE_DIR, str(tmp_path / "state"))
    from container.handler_service import HandlerService

    svc = HandlerService()
    context = Context("ctx-1", str(make_model(tmp_path, "ctx", "context_headers_inference.py", weights=False)),
                      None, 1, None, "1.1.11")
    svc.initialize(context)
    assert svc.loaded.wait(60)
    _, _, answer = send(svc, [
        ({"Content-Type": "text/plain", "X-Amzn-SageMaker-Custom-Attributes": "a=1"}, b"first"),
        ({"Content-Type": "application/json", "X-Amzn-SageMaker-Custom-Attributes": "b=2"}, b"{}"),
    ], context)
    assert [json.loads(body) for _, body in protocol.unpack(answer)] == [
        {"attributes": "a=1", "content_type": "text/plain", "body": "first"},
        {"attributes": "b=2", "content_type": "application/json", "body": "{}"}]


def test_answers_that_do_not_fit_one_envelope_are_sent_back_alone(service):
    big = json.dumps({"echo": "x" * (5 * MIB)}).encode()
    _, _, answer = send(service, [({"content-type": "application/json"}, big)] * 4)
    answers = protocol.unpack(answer)
    assert len(answer) <= protocol.envelope_cap(6 * MIB)
    assert [meta.get("alone", False) for meta, _ in answers] == [False, False, False, True]
    assert all(len(json.loads(body)["echo"]) == 5 * MIB for _, body in answers[:3])


def test_load_reported_to_the_state_dir(service, tmp_path):
    [report] = protocol.read_reports(tmp_path / "state", "echo-123")
    assert report.ok and report.pid == os.getpid() and report.kind == "ScriptService"
    assert report.batchable is False  # the script owns predict: the front sends one at a time


def test_while_loading_the_whole_envelope_gets_503_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(protocol.ENV_STATE_DIR, str(tmp_path / "state"))
    from container.handler_service import HandlerService

    svc = HandlerService()  # initialize() never called: still loading
    status, content_type, answer = send(svc, [({}, b"{}")] * 2)
    assert (status, content_type) == (503, "application/json")
    assert b"still loading" in answer


def test_not_an_envelope_is_refused(service):
    context = Context("echo-123", "/nowhere", None, 1, None, "1.1.11")
    context.request_processor = [RequestProcessor({})]
    context.request_ids = {0: "req-0"}
    [answer] = service.handle([{"body": bytearray(b'{"echo": 1}')}], context)
    assert context.get_response_status(0)[0] == 400 and b"not a batch envelope" in answer


def test_response_header_map_is_sent_empty():
    """The MMS decoder workaround: no response-header map reaches Java (see the module)."""
    import container.handler_service  # noqa: F401 - applies the workaround
    from mms.protocol import otf_message_handler

    assert otf_message_handler.encode_response_headers({"content-type": "x"}) == struct.pack("!i", 0)
