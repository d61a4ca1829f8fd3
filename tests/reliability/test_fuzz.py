"""Property-based fuzzing of /invocations on both running stacks, over real HTTP.

Invariants, for every generated request: an answer comes back on the connection (never a
dropped connection), it is never a 5xx except 503 (not ready) / 504 (timed out) saying
so, every error is ``{"error": str, "code": status}`` JSON, and a good request answers
correctly right after it. ``HYPOTHESIS_PROFILE=long`` runs 1,000 examples per test.
"""

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from handlers.generation import PARAMETER_NAMES
from tests.mms.harness import MmsServer, make_model
from tests.procs import http_request
from tests.reliability.conftest import ANSWER, QUESTION, assert_still_answers

MEDIA_TYPES = ["application/json", "application/jsonlines", "application/x-ndjson", "text/csv",
               "text/plain", "text/event-stream", "*/*", "image/png", "application/x-www-form-urlencoded",
               "multipart/form-data; boundary=x", ""]
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)

# Header values: known types, with parameters, malformed, absurdly long (nginx allows 8 KiB a line).
header_values = st.one_of(
    st.sampled_from(MEDIA_TYPES),
    st.sampled_from([";;;", ";", "=", "application/json;;;charset", "application/json; charset=",
                     "application/json; charset=utf-16", "application/json; charset=klingon",
                     "text/plain; charset=idna", "text/plain; charset=unicode_escape",
                     "application/json; q=nan", "text/csv;q=inf, application/json;q=-1", "*/*;q=0",
                     "application/*", "text/*;q=0.5, */*;q=0.1", ",,,", "application/json, text/csv"]),
    st.tuples(st.sampled_from(MEDIA_TYPES), st.text(PRINTABLE, max_size=60)).map("; ".join),
    st.text(PRINTABLE, max_size=200),
    st.integers(1000, 7000).map(lambda n: "application/json; x=" + "a" * n),
    st.integers(1, 500).map(lambda n: ", ".join(["text/csv;q=0.1"] * n)),
).map(str.strip)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10 ** 30), 10 ** 30),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)

huge_numbers = st.one_of(
    st.integers(4000, 20000).map(lambda n: "9" * n),
    st.sampled_from(["1e999", "-1e999", "1e-999", "NaN", "Infinity", "-Infinity", "1" + "0" * 400 + ".5",
                     "0." + "0" * 5000 + "1", "-0", "1E+2", "123456789012345678901234567890"]))


def nested(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    if kind == "object":
        return '{"a":' * depth + "1" + "}" * depth
    return "[" * depth  # never closed


@st.composite
def hostile_json_bodies(draw) -> bytes:
    """JSON-ish bodies: deep nesting, huge numbers, duplicate keys, invalid UTF-8,
    surrogates, wrong types at every level of {"inputs", "parameters"}."""
    question = json.dumps(QUESTION)
    kind = draw(st.sampled_from(["deep", "deep-inside", "number", "duplicate", "bytes-in-string",
                                 "surrogate", "top", "inputs", "inputs-item", "parameters", "parameter"]))
    if kind == "deep":
        return nested(draw(st.integers(1, 20000)), draw(st.sampled_from(["list", "object", "open"]))).encode()
    if kind == "deep-inside":
        where = draw(st.sampled_from(["inputs", "parameters", "stop", "extra"]))
        deep = nested(draw(st.integers(30, 5000)), draw(st.sampled_from(["list", "object"])))
        if where == "stop":
            return f'{{"inputs": {question}, "parameters": {{"stop": {deep}}}}}'.encode()
        return f'{{"inputs": {question}, "{where}": {deep}}}'.encode()
    if kind == "number":
        name = draw(st.sampled_from(PARAMETER_NAMES))
        return f'{{"inputs": {question}, "parameters": {{"{name}": {draw(huge_numbers)}}}}}'.encode()
    if kind == "duplicate":
        key = draw(st.sampled_from(['"inputs"', '"parameters"']))
        return f'{{"inputs": {question}, "parameters": {{}}, {key}: {json.dumps(draw(json_values))}}}'.encode()
    if kind == "bytes-in-string":
        return b'{"inputs": "' + draw(st.binary(min_size=1, max_size=40)) + b'"}'
    if kind == "surrogate":
        code = draw(st.integers(0xD800, 0xDFFF))
        return f'{{"inputs": "a\\u{code:04x}b"}}'.encode()
    value = json.dumps(draw(json_values))
    if kind == "top":
        return value.encode()
    if kind == "inputs":
        return f'{{"inputs": {value}}}'.encode()
    if kind == "inputs-item":
        return f'{{"inputs": [{question}, {value}]}}'.encode()
    if kind == "parameters":
        return f'{{"inputs": {question}, "parameters": {value}}}'.encode()
    name = draw(st.sampled_from(PARAMETER_NAMES + ("stream", "max_length", "colour")))
    return f'{{"inputs": {question}, "parameters": {{"{name}": {value}}}}}'.encode()


# Every generation parameter, in range and out of it, alone and combined.
parameter_values = {
    "max_new_tokens": st.one_of(st.integers(-2, 40), st.integers(400, 10 ** 6)),
    "min_new_tokens": st.integers(-2, 40),
    "num_beams": st.integers(-1, 20),
    "num_return_sequences": st.integers(-1, 20),
    "do_sample": st.booleans(),
    "temperature": st.one_of(st.floats(-1, 200), st.sampled_from([1e-300, 1e-30, 5e-324, 0.0])),
    "top_p": st.one_of(st.floats(-0.5, 1.5), st.sampled_from([1e-300, 1e-9])),
    "top_k": st.one_of(st.integers(-1, 2000), st.just(10 ** 30)),
    "repetition_penalty": st.one_of(st.floats(-1, 200), st.sampled_from([1e-300, 1e300])),
    "no_repeat_ngram_size": st.integers(-1, 10),
    "length_penalty": st.floats(-200, 200),
    "early_stopping": st.sampled_from([True, False, "never", "always", 1]),
    "seed": st.one_of(st.integers(-5, 2 ** 64), st.just(2 ** 63 - 1)),
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=20)),
    "stream": st.booleans(),
}


@st.composite
def generation_requests(draw) -> bytes:
    names = draw(st.lists(st.sampled_from(sorted(parameter_values)), min_size=1, max_size=6, unique=True))
    parameters = {name: draw(parameter_values[name]) for name in names}
    parameters["max_new_tokens"] = parameters.get("max_new_tokens", 8)
    inputs = draw(st.one_of(st.just(QUESTION), st.lists(st.just(QUESTION), min_size=1, max_size=4)))
    return json.dumps({"inputs": inputs, "parameters": parameters}).encode()


json_lines = st.one_of(
    st.just(json.dumps({"inputs": QUESTION})), st.just(json.dumps(QUESTION)), st.just(""), st.just("   "),
    st.just("\r"), json_values.map(json.dumps), st.text(max_size=30),
    st.integers(60, 3000).map(lambda n: nested(n, "list")),
    st.just(json.dumps({"inputs": QUESTION, "parameters": {"stream": True}})))

csv_rows = st.one_of(st.just(QUESTION), st.just('"quoted, with comma"'), st.just('"unterminated'),
                     st.just(""), st.just('a,"b""c",d'), st.text(max_size=40),
                     st.just("\x00"), st.integers(100_000, 200_000).map(lambda n: "x" * n))


@st.composite
def line_bodies(draw) -> tuple[bytes, str]:
    if draw(st.booleans()):
        lines = draw(st.lists(json_lines, min_size=1, max_size=8))
        content_type = draw(st.sampled_from(["application/jsonlines", "application/x-ndjson",
                                             "application/jsonl"]))
    else:
        lines = draw(st.lists(csv_rows, min_size=1, max_size=8))
        content_type = "text/csv"
    separator = draw(st.sampled_from(["\n", "\r\n", "\r", "\u2028"]))
    return separator.join(lines).encode("utf-8", "surrogatepass"), content_type


def exchange(server, body: bytes, headers: dict[str, str]) -> None:
    """Send one request; check the answer's invariants and that a good request follows."""
    answer = http_request(server.port, "POST", "/invocations", body, headers, timeout=90)
    status = answer.status
    assert status < 500 or status in (503, 504), (status, answer.body[:500])
    if status >= 400:
        assert answer.headers.get("content-type") == "application/json", answer.headers
        error = json.loads(answer.body)
        assert set(error) == {"error", "code"} and error["code"] == status, error
        assert isinstance(error["error"], str) and error["error"]
        assert "Traceback" not in error["error"]
        if status == 503:
            assert any(w in error["error"] for w in ("not ready", "loading", "starting", "restart")), error
        if status == 504:
            assert "within" in error["error"], error
    else:
        assert answer.headers.get("content-type"), answer.headers
    assert_still_answers(server)


@given(body=st.binary(max_size=3000), content_type=header_values)
@example(body=b"[" * 5000 + b"]" * 5000, content_type="application/json")
@example(body=b"[" * 5000 + b"]" * 5000, content_type=";;;")
@example(body=b"\xff\xfe\x00{", content_type="text/plain")
def test_random_bytes_with_any_content_type(stack, body, content_type):
    exchange(stack, body, {"Content-Type": content_type})


@given(body=hostile_json_bodies(),
       content_type=st.sampled_from(["application/json", "application/jsonlines", ";;;", "",
                                     "application/json; charset=utf-8", "application/x-ndjson"]))
@example(body=b'{"inputs": "x", "parameters": {"seed": 1' + b"0" * 5000 + b"}}", content_type="application/json")
@example(body=b'{"inputs": "\\ud800"}', content_type="application/json")
@example(body=b'{"inputs": "x", "parameters": {"temperature": ' + b"9" * 400 + b"}}", content_type=";;;")
@example(body=b'{"inputs": "x", "inputs": "y"}', content_type="application/json")
def test_hostile_json(stack, body, content_type):
    exchange(stack, body, {"Content-Type": content_type} if content_type else {})


@given(content_type=header_values, accept=header_values)
def test_any_content_type_and_accept(stack, content_type, accept):
    exchange(stack, json.dumps({"inputs": QUESTION}).encode(), {"Content-Type": content_type, "Accept": accept})


@given(body=generation_requests())
@example(body=json.dumps({"inputs": QUESTION, "parameters": {"do_sample": True, "temperature": 1e-300,
                                                              "max_new_tokens": 4}}).encode())
@example(body=json.dumps({"inputs": QUESTION, "parameters": {"top_k": 10 ** 30, "do_sample": True,
                                                              "max_new_tokens": 4}}).encode())
def test_generation_parameters(stack, body):
    exchange(stack, body, {"Content-Type": "application/json"})


@given(shaped=line_bodies(), accept=st.sampled_from(["", "application/json", "application/jsonlines",
                                                      "text/csv", "text/plain"]))
def test_jsonlines_and_csv_shapes(stack, shaped, accept):
    body, content_type = shaped
    exchange(stack, body, {"Content-Type": content_type, **({"Accept": accept} if accept else {})})


@pytest.fixture(scope="module")
def mme(tmp_path_factory):
    """A multi-model endpoint with the demo model loaded as ``demo``."""
    root = tmp_path_factory.mktemp("models")
    make_model(root, "demo")
    server = MmsServer("--multi-model", "--model-root", str(root), log_path=tmp_path_factory.mktemp("mme") / "mms.log")
    try:
        server.start().wait_ready()
        assert server.load("demo", root / "demo").status_code == 200
        yield server
        assert server.stop() == 0
    finally:
        server.kill_leftovers()


@given(body=st.one_of(hostile_json_bodies(), st.binary(max_size=500),
                      json_values.filter(lambda v: not isinstance(v, str))  # a valid name would load
                      .map(lambda v: json.dumps({"model_name": v, "url": "demo"}).encode()),
                      json_values.map(lambda v: json.dumps({"model_name": "fuzz", "url": v}).encode())),
       content_type=st.sampled_from(["application/json", ";;;", "", "text/plain"]))
@example(body=b"[" * 5000 + b"]" * 5000, content_type="application/json")
@example(body=b'{"model_name": "fuzz", "url": ' + b"[" * 5000 + b"]" * 5000 + b"}", content_type="application/json")
def test_model_management_bodies(mme, body, content_type):
    """POST /models on a multi-model endpoint: the front's own JSON parsing."""
    answer = http_request(mme.port, "POST", "/models", body, {"Content-Type": content_type} if content_type else {})
    assert answer.status < 500 or answer.status == 507, (answer.status, answer.body[:300])
    assert answer.headers.get("content-type") == "application/json"
    if answer.status == 200:  # a well-formed load of a real model: undo it
        assert mme.delete("/models/" + json.loads(answer.body)["modelName"]).status_code == 200
    r = mme.invoke("demo", {"inputs": QUESTION})
    assert r.status_code == 200 and r.json() == [{"generated_text": ANSWER}]
