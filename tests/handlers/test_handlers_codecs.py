"""Every codec, Accept negotiation and the 400/406/415 errors, through the real demo model:
``service.decode`` -> ``service.predict`` -> ``service.encode``."""

import csv
import io
import json

import pytest

from handlers import HandlerConfig
from handlers.codecs import QA_TEMPLATE
from handlers.errors import BadRequest, InferenceError, NotAcceptable, UnsupportedMediaType
from handlers.service import FlanT5Service

JSON, JSONLINES, CSV, TEXT = "application/json", "application/jsonlines", "text/csv", "text/plain"


def run(service, body, content_type=JSON, accept=None):
    """The flow both stacks use; returns (body, content type)."""
    if not isinstance(body, bytes):
        body = json.dumps(body).encode() if content_type == JSON else body.encode()
    payload = service.decode(body, content_type, accept)
    [result] = service.predict([payload])
    assert not isinstance(result, InferenceError), result
    return service.encode(result, payload)


def run_json(service, body, content_type=JSON, accept=None):
    out, ctype = run(service, body, content_type, accept)
    assert ctype == JSON
    return json.loads(out)


def error_of(service, body, content_type=JSON, accept=None) -> InferenceError:
    if not isinstance(body, bytes):
        body = body.encode()
    with pytest.raises(InferenceError) as info:
        service.decode(body, content_type, accept)
    error = info.value
    assert json.loads(error.body()) == {"error": error.message, "code": error.status}
    return error


def bad_request(service, body, content_type=JSON, accept=None) -> str:
    error = error_of(service, body, content_type, accept)
    assert isinstance(error, BadRequest) and error.status == 400, error
    return error.message


# -- application/json ------------------------------------------------------------------


def test_json_single_input(demo_service, known):
    question, answer = known[0]
    assert run_json(demo_service, {"inputs": question}) == [{"generated_text": answer}]


def test_json_list_input_gives_one_entry_per_input_in_order(demo_service, known):
    pairs = known[:4]
    got = run_json(demo_service, {"inputs": [q for q, _ in pairs]})
    assert got == [{"generated_text": a} for _, a in pairs]


def test_json_bare_string_body(demo_service, known):
    question, answer = known[1]
    assert run_json(demo_service, question) == [{"generated_text": answer}]


def test_json_parameters_are_applied(demo_service, known):
    question, answer = next((q, a) for q, a in known if len(a.split()) >= 2)
    [got] = run_json(demo_service, {"inputs": question, "parameters": {"max_new_tokens": 1}})
    assert got["generated_text"] != answer
    assert answer.startswith(got["generated_text"].strip())


def test_json_question_without_context_is_the_prompt(demo_service, known):
    question, answer = known[2]
    assert run_json(demo_service, {"question": question}) == [{"generated_text": answer}]


def test_json_question_with_context_becomes_a_flan_prompt(demo_service):
    body = {"question": "Where was Ada born?", "context": "Ada was born in London in 1815."}
    payload = demo_service.decode(json.dumps(body).encode(), JSON, None)
    [(prompt, _)] = payload.requests
    assert prompt == QA_TEMPLATE.format(context=body["context"], question=body["question"])
    assert "Ada was born in London in 1815." in prompt and "Where was Ada born?" in prompt
    got = run_json(demo_service, body)
    assert isinstance(got, list) and len(got) == 1 and isinstance(got[0]["generated_text"], str)


def test_json_num_return_sequences_single_input_is_a_flat_list(demo_service, known):
    question, _ = known[0]
    got = run_json(demo_service, {"inputs": question,
                                  "parameters": {"num_beams": 3, "num_return_sequences": 3}})
    assert isinstance(got, list) and len(got) == 3
    assert all(set(item) == {"generated_text"} and isinstance(item["generated_text"], str)
               for item in got)


def test_json_num_return_sequences_list_input_is_nested(demo_service, known):
    questions = [q for q, _ in known[:2]]
    got = run_json(demo_service, {"inputs": questions, "parameters": {
        "do_sample": True, "num_return_sequences": 2, "seed": 5}})
    assert isinstance(got, list) and len(got) == 2
    for per_input in got:
        assert isinstance(per_input, list) and len(per_input) == 2
        assert all(isinstance(item["generated_text"], str) for item in per_input)


def test_json_charset_parameter_is_honoured(demo_service):
    body = json.dumps({"inputs": "Où est né Zoë?"}, ensure_ascii=False).encode("latin-1")
    payload = demo_service.decode(body, "application/json; charset=latin-1", None)
    assert payload.requests[0][0] == "Où est né Zoë?"


def test_missing_content_type_means_json(demo_service, known):
    question, answer = known[0]
    out, ctype = run(demo_service, json.dumps({"inputs": question}).encode(), None, None)
    assert ctype == JSON and json.loads(out) == [{"generated_text": answer}]


# -- application/jsonlines -------------------------------------------------------------


def test_jsonlines_one_output_line_per_input_line_in_order(demo_service, known):
    (q1, a1), (q2, a2), (q3, a3), (q4, a4), (q5, a5) = known[:5]
    body = "\n".join([
        json.dumps({"inputs": q1}),
        json.dumps(q2),                                   # a bare JSON string is a prompt
        "",                                               # blank lines are skipped
        json.dumps({"inputs": [q3, q4]}),
        json.dumps({"inputs": q5, "parameters": {"max_new_tokens": 16}}),
    ]) + "\n"
    out, ctype = run(demo_service, body, JSONLINES)
    assert ctype == JSONLINES
    lines = out.decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"generated_text": a1},
        {"generated_text": a2},
        [{"generated_text": a3}, {"generated_text": a4}],
        {"generated_text": a5},
    ]


def test_jsonlines_many_lines_with_mixed_parameters_keep_order(demo_service, known):
    pairs = known[:10]
    lines = []
    for i, (question, _) in enumerate(pairs):
        params = {"max_new_tokens": 16} if i % 3 == 0 else ({"num_beams": 1} if i % 3 == 1 else None)
        lines.append(json.dumps({"inputs": question, "parameters": params}))
    out, _ = run(demo_service, "\n".join(lines), JSONLINES)
    got = [json.loads(line)["generated_text"] for line in out.decode().splitlines()]
    assert got == [a for _, a in pairs]


def test_jsonlines_num_return_sequences_gives_a_list_on_its_line(demo_service, known):
    body = "\n".join([json.dumps({"inputs": known[0][0]}),
                      json.dumps({"inputs": known[1][0],
                                  "parameters": {"num_beams": 2, "num_return_sequences": 2}})])
    out, _ = run(demo_service, body, JSONLINES)
    first, second = [json.loads(line) for line in out.decode().splitlines()]
    assert first == {"generated_text": known[0][1]}
    assert isinstance(second, list) and len(second) == 2


@pytest.mark.parametrize("alias", ["application/x-jsonlines", "application/jsonl",
                                   "application/x-ndjson"])
def test_jsonlines_aliases(demo_service, known, alias):
    out, ctype = run(demo_service, json.dumps({"inputs": known[0][0]}) + "\n", alias)
    assert ctype == JSONLINES
    assert json.loads(out) == {"generated_text": known[0][1]}


def test_jsonlines_crlf_line_endings(demo_service, known):
    body = json.dumps(known[0][0]) + "\r\n" + json.dumps(known[1][0]) + "\r\n"
    out, _ = run(demo_service, body, JSONLINES)
    assert [json.loads(x) for x in out.decode().splitlines()] == [
        {"generated_text": known[0][1]}, {"generated_text": known[1][1]}]


def test_jsonlines_string_with_unicode_line_separator_stays_one_line(demo_service):
    """JSON Lines are separated by \\n only: a raw U+2028 / U+0085 inside a JSON string
    (json.dumps(..., ensure_ascii=False) writes them raw) is part of that line."""
    first = json.dumps({"inputs": "first\u2028prompt"}, ensure_ascii=False)
    second = json.dumps({"inputs": "second\x85prompt"}, ensure_ascii=False)
    payload = demo_service.decode((first + "\n" + second + "\n").encode(), JSONLINES, None)
    assert [p for p, _ in payload.requests] == ["first\u2028prompt", "second\x85prompt"]


# -- text/csv and text/plain -----------------------------------------------------------


def test_csv_one_prompt_per_line(demo_service, known):
    pairs = known[:4]
    body = "\n".join(q for q, _ in pairs) + "\n"
    out, ctype = run(demo_service, body, CSV)
    assert ctype == CSV
    assert list(csv.reader(io.StringIO(out.decode()))) == [[a] for _, a in pairs]


def test_csv_quoting_and_commas(demo_service):
    body = 'Where was Ada born, and when?\n"a quoted, prompt"\n"two\nlines"\r\n\nlast one\n'
    payload = demo_service.decode(body.encode(), CSV, None)
    assert [p for p, _ in payload.requests] == [
        "Where was Ada born, and when?", "a quoted, prompt", "two\nlines", "last one"]


def test_csv_request_can_answer_json(demo_service, known):
    pairs = known[:3]
    body = "\n".join(q for q, _ in pairs)
    got = run_json(demo_service, body, CSV, JSON)
    assert got == [{"generated_text": a} for _, a in pairs]


def test_text_plain_one_prompt(demo_service, known):
    question, answer = known[3]
    out, ctype = run(demo_service, question, TEXT)
    assert (out.decode(), ctype) == (answer, TEXT)


def test_text_plain_whole_body_is_one_prompt(demo_service):
    payload = demo_service.decode(b"line one\nline two, with a comma", TEXT, None)
    assert [p for p, _ in payload.requests] == ["line one\nline two, with a comma"]


def test_text_plain_latin1_charset(demo_service):
    payload = demo_service.decode("Zoë".encode("latin-1"), "text/plain; charset=ISO-8859-1", None)
    assert payload.requests[0][0] == "Zoë"


# -- Accept negotiation ----------------------------------------------------------------


def test_accept_text_csv_for_json_request(demo_service, known):
    pairs = known[:2]
    out, ctype = run(demo_service, {"inputs": [q for q, _ in pairs]}, JSON, CSV)
    assert ctype == CSV
    assert list(csv.reader(io.StringIO(out.decode()))) == [[a] for _, a in pairs]


def test_accept_text_plain_for_json_request(demo_service, known):
    question, answer = known[0]
    assert run(demo_service, {"inputs": question}, JSON, TEXT) == (answer.encode(), TEXT)


def test_accept_jsonlines_for_json_request(demo_service, known):
    question, answer = known[0]
    out, ctype = run(demo_service, {"inputs": question}, JSON, JSONLINES)
    assert ctype == JSONLINES and [json.loads(x) for x in out.decode().splitlines()] == [
        {"generated_text": answer}]


@pytest.mark.parametrize("content_type,accept,expected", [
    (JSON, None, JSON),
    (JSON, "*/*", JSON),
    (TEXT, None, TEXT),
    (TEXT, "*/*", TEXT),
    (CSV, None, CSV),
    (JSONLINES, None, JSONLINES),
    (JSON, "application/json; charset=utf-8", JSON),
    (JSON, "application/xml, text/csv;q=0.5", CSV),
    (JSON, "text/plain;q=0.2, application/jsonlines;q=0.9", JSONLINES),
    (JSON, "text/*", CSV),
    (TEXT, "text/*", TEXT),
    (JSON, "application/*", JSON),
])
def test_accept_negotiation(demo_service, content_type, accept, expected):
    body = {JSON: b'{"inputs": "x"}', JSONLINES: b'"x"'}.get(content_type, b"x")
    assert demo_service.decode(body, content_type, accept).accept == expected


@pytest.mark.parametrize("accept", ["application/xml", "image/png", "text/csv;q=0",
                                    "application/xml, image/*"])
def test_unsupported_accept_is_406(demo_service, accept):
    error = error_of(demo_service, b'{"inputs": "x"}', JSON, accept)
    assert isinstance(error, NotAcceptable) and error.status == 406
    assert accept in error.message and "application/json" in error.message


@pytest.mark.parametrize("content_type", ["application/xml", "image/png", "application/octet-stream",
                                          "application/x-www-form-urlencoded"])
def test_unsupported_content_type_is_415(demo_service, content_type):
    error = error_of(demo_service, b'{"inputs": "x"}', content_type, None)
    assert isinstance(error, UnsupportedMediaType) and error.status == 415
    assert content_type in error.message and "application/json" in error.message


def test_form_urlencoded_415_hints_at_curl(demo_service):
    error = error_of(demo_service, b"inputs=x", "application/x-www-form-urlencoded", None)
    assert "Content-Type: application/json" in error.message


def test_default_accept_applies_when_no_accept(demo_model, known):
    service = FlanT5Service(demo_model, HandlerConfig(default_accept=JSONLINES))
    question, answer = known[0]
    out, ctype = run(service, {"inputs": question}, JSON, None)
    assert ctype == JSONLINES and json.loads(out) == {"generated_text": answer}
    out, ctype = run(service, {"inputs": question}, JSON, "*/*")
    assert ctype == JSONLINES
    out, ctype = run(service, {"inputs": question}, JSON, TEXT)  # an explicit Accept wins
    assert (out, ctype) == (answer.encode(), TEXT)


def test_default_accept_from_env(demo_model):
    config = HandlerConfig.from_env({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"})
    assert config.default_accept == CSV
    service = FlanT5Service(demo_model, config)
    assert service.decode(b'{"inputs": "x"}', JSON, None).accept == CSV


@pytest.mark.parametrize("default", ["application/x-jsonlines", "application/json; charset=utf-8",
                                     "Text/CSV"])
def test_default_accept_is_normalised(demo_model, default):
    """SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT spelled with an alias, parameters or capitals
    still selects that codec (not a silent fall back to text/plain)."""
    service = FlanT5Service(demo_model, HandlerConfig(default_accept=default))
    payload = service.decode(b'{"inputs": "x"}', JSON, None)
    canonical = {"application/x-jsonlines": JSONLINES, "Text/CSV": CSV}.get(default, JSON)
    assert payload.accept == canonical


def test_unsupported_default_accept_is_refused(demo_model):
    """An unsupported SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT must not be answered as text/plain:
    the request with no Accept gets 406 (or the service refuses the setting)."""
    service = FlanT5Service(demo_model, HandlerConfig(default_accept="application/xml"))
    with pytest.raises(InferenceError) as info:
        payload = service.decode(b'{"inputs": "x"}', JSON, None)
        [result] = service.predict([payload])
        service.encode(result, payload)
    assert info.value.status == 406


# -- 400s: empty, malformed, wrong types, non-UTF-8 --------------------------------------


@pytest.mark.parametrize("content_type", [JSON, JSONLINES, CSV, TEXT])
@pytest.mark.parametrize("body", [b"", b"   \n\t "])
def test_empty_body(demo_service, content_type, body):
    assert "empty" in bad_request(demo_service, body, content_type)


def test_malformed_json_says_where(demo_service):
    message = bad_request(demo_service, b'{"inputs": "x",\n "parameters": {,}}')
    assert "malformed JSON" in message and "line 2" in message and "column" in message


def test_malformed_jsonlines_names_the_line(demo_service):
    body = b'{"inputs": "a"}\n{"inputs": "b"}\n{"inputs": "c"\n'
    message = bad_request(demo_service, body, JSONLINES)
    assert "malformed JSON" in message and "line 3" in message


@pytest.mark.parametrize("body,expected", [
    ({"inputs": 5}, ["'inputs'", "string", "int"]),
    ({"inputs": None}, ["'inputs'", "string"]),
    ({"inputs": ""}, ["'inputs'", "empty"]),
    ({"inputs": []}, ["'inputs'", "empty list"]),
    ({"inputs": ["ok", 3]}, ["'inputs'[1]", "string", "int"]),
    ({"inputs": ["ok", {"a": 1}]}, ["'inputs'[1]", "dict"]),
    ([1, 2], ["JSON object", "list"]),
    (5, ["JSON object", "int"]),
    ({"prompt": "x"}, ["'inputs'"]),
    ({"question": 5}, ["'question'", "string"]),
    ({"question": "q", "context": 7}, ["'context'", "string"]),
    ({"inputs": "x", "parameters": [1]}, ["'parameters'", "object"]),
    ({"inputs": "x", "stream": "yes"}, ["'stream'"]),
])
def test_wrong_types_in_json(demo_service, body, expected):
    message = bad_request(demo_service, json.dumps(body).encode())
    for part in expected:
        assert part in message, (part, message)


def test_wrong_type_in_jsonlines_names_the_line(demo_service):
    body = b'{"inputs": "a"}\n{"inputs": 12}\n'
    message = bad_request(demo_service, body, JSONLINES)
    assert "line 2" in message and "'inputs'" in message and "int" in message


def test_stream_in_jsonlines_is_refused_with_its_line(demo_service):
    body = b'{"inputs": "a"}\n\n{"inputs": "b", "stream": true}\n'
    message = bad_request(demo_service, body, JSONLINES)
    assert "line 3" in message and "stream" in message


def test_parameter_error_in_jsonlines_names_the_line(demo_service):
    body = (b'{"inputs": "a"}\n{"inputs": "b"}\n'
            b'{"inputs": "c", "parameters": {"max_new_tokens": 0}}\n')
    message = bad_request(demo_service, body, JSONLINES)
    assert "max_new_tokens" in message and "line 3" in message


def test_malformed_csv_names_the_line(demo_service):
    body = ("first prompt\nsecond prompt\n" + "x" * 200_000 + "\n").encode()
    message = bad_request(demo_service, body, CSV)
    assert "CSV" in message and "line 3" in message


@pytest.mark.parametrize("content_type", [JSON, TEXT, CSV, JSONLINES])
def test_non_utf8_body(demo_service, content_type):
    body = b'{"inputs": "caf\xe9"}' if content_type in (JSON, JSONLINES) else b"caf\xe9 au lait"
    message = bad_request(demo_service, body, content_type)
    assert "utf-8" in message.lower() and "0xe9" in message and "offset" in message


@pytest.mark.parametrize("content_type", [JSONLINES, CSV])
def test_non_utf8_in_a_later_line_names_the_line(demo_service, content_type):
    if content_type == JSONLINES:
        body = b'{"inputs": "a"}\n{"inputs": "b"}\n{"inputs": "caf\xe9"}\n'
    else:
        body = b"first\nsecond\ncaf\xe9\n"
    message = bad_request(demo_service, body, content_type)
    assert "line 3" in message, message


def test_unknown_charset_is_415(demo_service):
    error = error_of(demo_service, b'{"inputs": "x"}', "application/json; charset=klingon")
    assert error.status == 415 and "klingon" in error.message


# -- streaming (text/event-stream asks for it) -------------------------------------------


def test_stream_yields_the_greedy_answer(demo_service, multiword):
    question, answer = multiword
    payload = demo_service.decode(json.dumps({"inputs": question}).encode(), JSON,
                                  "text/event-stream")
    assert payload.stream
    pieces = list(demo_service.stream(payload, timeout=30))
    assert "".join(pieces).strip() == answer


def test_stream_cuts_at_stop_sequence(demo_service, multiword):
    question, answer = multiword
    stop = answer.split()[1]
    payload = demo_service.decode(json.dumps({"inputs": question, "parameters": {"stop": [stop]}})
                                  .encode(), JSON, "text/event-stream")
    text = "".join(demo_service.stream(payload, timeout=30))
    assert text.strip() == answer[:answer.find(stop)].strip()


# -- hostile JSON: every way to break json.loads is a 400 that says what is wrong ----------

DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize("content_type", [JSON, JSONLINES, "application/json; charset=utf-8", ";;;", None])
def test_deeply_nested_json_is_400(demo_service, content_type):
    error = error_of(demo_service, DEEP, content_type)
    assert error.status == 400 and "nested too deeply" in error.message and "64" in error.message


def test_nesting_limit_is_exact(demo_service):
    from handlers.strict_json import MAX_JSON_DEPTH, loads
    from handlers.strict_json import depth as strict_depth

    assert MAX_JSON_DEPTH == 64
    assert strict_depth(loads("[" * 64 + "]" * 64, "body")) == 64
    nested = '{"inputs": "x", "extra": ' + "[" * 63 + "]" * 63 + "}"  # 64 levels: the object + 63 lists
    assert demo_service.decode(nested.encode(), JSON, None).requests[0][0] == "x"
    with pytest.raises(BadRequest, match="nested too deeply"):
        demo_service.decode(nested.replace("[", "[[", 1).replace("]", "]]", 1).encode(), JSON, None)
    with pytest.raises(BadRequest, match="nested too deeply"):
        loads("[" * 65 + "]" * 65, "body")
    with pytest.raises(BadRequest, match="nested too deeply"):
        loads('{"a":' * 65 + "1" + "}" * 65, "line 2")


def test_deep_nesting_in_a_user_script_body_is_400():
    from handlers.codecs import decode_object

    with pytest.raises(BadRequest, match="nested too deeply"):
        decode_object(DEEP, JSON)


@pytest.mark.parametrize("body, words", [
    (b'{"inputs": "x", "parameters": {"seed": 1' + b"0" * 5000 + b"}}", ["5001 digits", "out of range"]),
    (b'{"inputs": "x", "parameters": {"temperature": -' + b"9" * 309 + b"}}", ["309 digits"]),
    (b'{"inputs": "x", "parameters": {"temperature": 1e999}}', ["'temperature'", "finite"]),
    (b'{"inputs": "x", "parameters": {"temperature": NaN}}', ["'temperature'", "finite"]),
    (b'{"inputs": NaN}', ["'inputs'", "string"]),
    (b'{"inputs": "x", "inputs": "y"}', ["duplicate key 'inputs'"]),
    (b'{"inputs": "x", "parameters": {"top_k": 5, "top_k": 6}}', ["duplicate key 'top_k'"]),
    (b'{"inputs": "\\ud800"}', ["'inputs'", "unpaired surrogate \\ud800"]),
    (b'{"inputs": ["ok", "a\\udfffb"]}', ["'inputs'[1]", "surrogate \\udfff", "character 1"]),
    (b'{"question": "\\ud83d?"}', ["'question'", "surrogate"]),
])
def test_hostile_json_values_are_400(demo_service, body, words):
    """(No more ``float(int)`` OverflowError 500 in parameter checks: found by fuzzing.)"""
    message = bad_request(demo_service, body)
    assert "sys.set_int_max_str_digits" not in message
    for part in words:
        assert part in message, (part, message)


def test_a_surrogate_pair_is_fine(demo_service, known):
    question = known[0][0]
    escaped = json.dumps(question + " \U0001F600").encode()  # ensure_ascii: "\ud83d\ude00"
    assert b"\\ud83d\\ude00" in escaped
    assert isinstance(run_json(demo_service, b'{"inputs": ' + escaped + b"}"), list)


@pytest.mark.parametrize("content_type, body, status, words", [
    ("text/plain; charset=idna", b"xn--", 400, ["idna"]),
    ("text/plain; charset=undefined", b"abc", 400, ["undefined"]),
    ("text/plain; charset=unicode_escape", b"\\ud800", 400, ["surrogate"]),
    ("text/csv; charset=unicode_escape", b"fine\n\\udc00\n", 400, ["line 2", "surrogate"]),
    ("text/plain; charset=utf\x00-8", b"abc", 415, ["charset"]),
    ("text/plain; charset=" + "x" * 5000, b"abc", 415, ["charset"]),
])
def test_odd_charsets_are_clear_4xx(demo_service, content_type, body, status, words):
    error = error_of(demo_service, body, content_type)
    assert error.status == status, error.message
    assert len(error.message) < 300
    for part in words:
        assert part in error.message, (part, error.message)


@pytest.mark.parametrize("content_type, accept", [
    ("image/" + "x" * 10_000, None),
    (JSON, "image/" + "x" * 10_000),
])
def test_absurd_headers_are_not_echoed_whole(demo_service, content_type, accept):
    error = error_of(demo_service, b'{"inputs": "x"}', content_type, accept)
    assert error.status in (406, 415) and len(error.message) < 400
