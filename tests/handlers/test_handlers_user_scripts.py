"""User scripts (code/inference.py) in both conventions, run unchanged on the demo model.

Flow, as the stacks run it: ``p = service.decode(body, content_type, accept)``,
``[r] = service.predict([p])``, ``body, ctype = service.encode(r, p)``.
"""

import json
import logging

import pytest

from handlers import HandlerConfig, load_service
from handlers.errors import BadRequest, InferenceError, InternalError, ModelLoadError
from handlers.service import ScriptService

JSON = "application/json"


def flow(service, body, content_type=JSON, accept=None):
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    elif isinstance(body, str):
        body = body.encode()
    payload = service.decode(body, content_type, accept)
    [result] = service.predict([payload])
    assert not isinstance(result, InferenceError), result.message
    return service.encode(result, payload)


def flow_json(service, body, content_type=JSON, accept=None):
    out, ctype = flow(service, body, content_type, accept)
    assert ctype == JSON, ctype
    return json.loads(out)


# -- load_model(model_dir) + predict(model, payload): the seed's shape ---------------------


def test_seed_style_flask_gets_raw_bytes(script_dir, known):
    service = load_service(script_dir("seed_style.py"), HandlerConfig(), predict_records=False)
    assert isinstance(service, ScriptService) and service.batchable is False
    question, answer = known[0]
    got = flow_json(service, {"inputs": question})
    assert got == {"received": "bytes", "answers": [{"generated_text": answer}]}


def test_seed_style_mms_gets_a_list_of_body_dicts(script_dir, known):
    service = load_service(script_dir("seed_style.py"), HandlerConfig(), predict_records=True)
    question, answer = known[0]
    got = flow_json(service, {"inputs": question})
    assert got == {"received": "list", "item_keys": ["body"], "body_type": "bytes",
                   "answers": [{"generated_text": answer}]}


def test_seed_style_several_payloads_in_one_predict_call(script_dir, known):
    service = load_service(script_dir("seed_style.py"), HandlerConfig(), predict_records=False)
    payloads = [service.decode(json.dumps({"inputs": q}).encode(), JSON, None) for q, _ in known[:3]]
    results = service.predict(payloads)
    for (_, answer), result, payload in zip(known[:3], results, payloads):
        body, _ = service.encode(result, payload)
        assert json.loads(body)["answers"] == [{"generated_text": answer}]


def test_seed_style_list_inputs(script_dir, known):
    service = load_service(script_dir("seed_style.py"))
    got = flow_json(service, {"inputs": [q for q, _ in known[:2]]})
    assert got["answers"] == [{"generated_text": a} for _, a in known[:2]]


def test_shipped_demo_script_both_styles(script_dir, known):
    """demo/code/inference.py (the script packed into demo/model.tar.gz), unchanged."""
    from tests.handlers.conftest import REPO

    question, answer = known[0]
    for mms_style in (False, True):
        model_dir = script_dir("seed_style.py", name=f"demo-{mms_style}")
        (model_dir / "code" / "inference.py").write_bytes(
            (REPO / "demo" / "code" / "inference.py").read_bytes())
        service = load_service(model_dir, HandlerConfig(), predict_records=mms_style)
        body, ctype = flow(service, {"inputs": question})
        assert ctype == JSON
        got = json.loads(body)
        got = got if isinstance(got, list) else [got]
        assert got == [{"generated_text": answer}]
        text_body, _ = flow(service, question, "text/plain")
        assert answer in text_body.decode()


# -- model_fn / input_fn / predict_fn / output_fn -----------------------------------------


def test_sagemaker_hooks_without_context(script_dir, known):
    service = load_service(script_dir("sagemaker_hooks.py"))
    assert service.batchable is False
    question, answer = known[0]
    got = flow_json(service, {"inputs": question}, JSON, JSON)
    assert got == {"answers": [answer], "seen_content_type": JSON, "seen_accept": JSON}
    got = flow_json(service, {"inputs": [q for q, _ in known[:3]]}, JSON, JSON)
    assert got["answers"] == [a for _, a in known[:3]]


def test_sagemaker_hooks_default_accept(script_dir, known):
    service = load_service(script_dir("sagemaker_hooks.py"),
                           HandlerConfig(default_accept="application/jsonlines"))
    got = flow_json(service, {"inputs": known[0][0]}, JSON, None)
    assert got["seen_accept"] == "application/jsonlines"


def test_sagemaker_hooks_bad_request_from_input_fn_keeps_400(script_dir):
    service = load_service(script_dir("sagemaker_hooks.py"))
    with pytest.raises(BadRequest, match="only reads application/json") as info:
        service.decode(b"hello", "text/plain", None)
    assert info.value.status == 400


def test_sagemaker_hooks_with_context(script_dir, known):
    model_dir = script_dir("sagemaker_hooks_context.py")
    service = load_service(model_dir)
    question, answer = known[0]
    got = flow_json(service, {"inputs": question}, JSON, JSON)
    assert got == {"text": answer, "hooks_with_context": ["input_fn", "predict_fn", "output_fn"],
                   "context_model_dir": str(model_dir)}


def test_transform_fn(script_dir, known):
    service = load_service(script_dir("transform_fn.py"))
    assert service.batchable is False
    question, answer = known[1]
    got = flow_json(service, {"inputs": question}, JSON, "application/json")
    assert got == {"answer": answer, "body_type": "bytes", "content_type": JSON,
                   "accept": "application/json"}


def test_transform_fn_with_context_and_default_model(script_dir, known):
    model_dir = script_dir("transform_fn_context.py")
    service = load_service(model_dir)
    question, answer = known[1]
    got = flow_json(service, question, "text/plain", None)
    assert got == {"answer": answer, "model_dir": str(model_dir)}


@pytest.mark.parametrize("fixture", ["json_string_output.py", "json_string_transform.py"])
def test_script_returning_a_json_string_is_sent_as_is(script_dir, known, fixture):
    """sagemaker-inference sends a str from output_fn / transform_fn unchanged: a script
    that returns json.dumps(...) must not be JSON-encoded a second time."""
    service = load_service(script_dir(fixture))
    question, answer = known[0]
    body, ctype = flow(service, {"inputs": question}, JSON, JSON)
    assert ctype == JSON
    got = json.loads(body)
    assert isinstance(got, dict), f"double-encoded: {body[:80]!r}"
    assert answer in json.dumps(got)


def test_only_predict_fn_uses_default_input_decoding(script_dir, known):
    service = load_service(script_dir("only_predict_fn.py"))
    assert service.batchable is False
    question, answer = known[2]
    got = flow_json(service, {"inputs": question})
    assert got == {"answer": answer, "data_type": "dict"}


# -- hooks left out: our defaults fill in, batching still works --------------------------


def test_only_input_fn_defaults_fill_in_and_batch(script_dir, known):
    service = load_service(script_dir("only_input_fn.py"))
    assert service.batchable is True
    service.start()
    pairs = known[:4]
    bodies = [{"prompt": pairs[0][0]}, {"prompt": pairs[1][0], "max_tokens": 16},
              {"prompts": [pairs[2][0], pairs[3][0]]}, {"prompt": pairs[0][0]}]
    payloads = [service.decode(json.dumps(b).encode(), JSON, None) for b in bodies]
    results = service.predict(payloads)
    assert len(results) == 4 and not any(isinstance(r, InferenceError) for r in results)
    encoded = [service.encode(r, p) for r, p in zip(results, payloads)]
    assert all(ctype == JSON for _, ctype in encoded)
    got = [json.loads(body) for body, _ in encoded]
    assert got == [[{"generated_text": pairs[0][1]}], [{"generated_text": pairs[1][1]}],
                   [{"generated_text": pairs[2][1]}, {"generated_text": pairs[3][1]}],
                   [{"generated_text": pairs[0][1]}]]


def test_only_input_fn_still_negotiates_accept(script_dir, known):
    """Our encoder answers for a script without output_fn, so Accept is negotiated as for
    the default service: parameters and q-lists are understood, the unknown is 406."""
    service = load_service(script_dir("only_input_fn.py"))
    question, answer = known[0]
    body, ctype = flow(service, {"prompt": question}, JSON, "application/json; charset=utf-8")
    assert ctype == JSON and json.loads(body) == [{"generated_text": answer}]
    body, ctype = flow(service, {"prompt": question}, JSON, "application/xml;q=0.9, text/csv;q=0.5")
    assert ctype == "text/csv" and body.decode().strip() == answer
    with pytest.raises(InferenceError) as info:
        flow(service, {"prompt": question}, JSON, "application/xml")
    assert info.value.status == 406


def test_only_input_fn_bad_result_is_400(script_dir):
    service = load_service(script_dir("only_input_fn.py"))
    with pytest.raises(BadRequest) as info:
        service.decode(b'{"prompt": 5}', JSON, None)
    assert "input_fn result" in info.value.message


def test_only_output_fn_defaults_fill_in_and_batch(script_dir, known):
    service = load_service(script_dir("only_output_fn.py"))
    assert service.batchable is True
    pairs = known[:3]
    payloads = [service.decode(json.dumps({"inputs": q}).encode(), JSON, "application/json")
                for q, _ in pairs]
    list_payload = service.decode(json.dumps({"inputs": [q for q, _ in pairs]}).encode(), JSON, None)
    results = service.predict(payloads + [list_payload])
    for (_, answer), result, payload in zip(pairs, results, payloads):
        body, ctype = service.encode(result, payload)
        assert ctype == "application/vnd.answers+json"
        assert json.loads(body) == {"answers": [answer], "accept": "application/json"}
    body, _ = service.encode(results[3], list_payload)
    assert json.loads(body)["answers"] == [a for _, a in pairs]


def test_only_output_fn_still_validates_with_our_decoder(script_dir):
    service = load_service(script_dir("only_output_fn.py"))
    with pytest.raises(BadRequest, match="num_beams"):
        service.decode(b'{"inputs": "x", "parameters": {"num_beams": 0}}', JSON, None)


def test_script_imports_its_neighbours(script_dir, known):
    model_dir = script_dir({"inference.py": "uses_neighbour.py",
                            "hs_neighbour_helper.py": "hs_neighbour_helper.py"})
    service = load_service(model_dir)
    question, answer = known[0]
    assert flow_json(service, {"inputs": question}) == [f"answer: {answer}"]


def test_missing_requirements_are_reported_not_installed(script_dir, caplog):
    model_dir = script_dir("only_output_fn.py")
    (model_dir / "code" / "requirements.txt").write_text(
        "torch\nsurely-not-installed-package==1.0  # comment\n-r other.txt\n")
    with caplog.at_level(logging.WARNING):
        load_service(model_dir)
    assert "lacks: surely-not-installed-package==1.0." in caplog.text  # torch is installed


# -- SAGEMAKER_PROGRAM -----------------------------------------------------------------


def test_sagemaker_program_names_another_file(script_dir, known):
    model_dir = script_dir({"inference.py": "broken_import.py", "serve_me.py": "other_program.py"})
    service = load_service(model_dir, HandlerConfig(program="serve_me.py"))
    question, answer = known[0]
    got = flow_json(service, {"inputs": question})
    assert got == {"program": "other_program", "answers": [{"generated_text": answer}]}


def test_sagemaker_program_from_env(script_dir):
    config = HandlerConfig.from_env({"SAGEMAKER_PROGRAM": "serve_me.py"})
    assert config.program == "serve_me.py"
    model_dir = script_dir({"serve_me.py": "other_program.py"})
    assert isinstance(load_service(model_dir, config), ScriptService)


def test_sagemaker_program_missing_is_a_load_error(script_dir):
    model_dir = script_dir("other_program.py")
    with pytest.raises(ModelLoadError, match="nope.py"):
        load_service(model_dir, HandlerConfig(program="nope.py"))


def test_submit_directory(tmp_path, demo_dir, known):
    from tests.handlers.conftest import FIXTURES, copy_demo

    model_dir = copy_demo(tmp_path / "plain-model")
    submit = tmp_path / "submit"
    submit.mkdir()
    (submit / "inference.py").write_bytes((FIXTURES / "other_program.py").read_bytes())
    service = load_service(model_dir, HandlerConfig(submit_dir=str(submit)))
    got = flow_json(service, {"inputs": known[0][0]})
    assert got["program"] == "other_program"


# -- failures --------------------------------------------------------------------------


def test_predict_fn_raising_value_error_is_a_500_naming_it(script_dir):
    service = load_service(script_dir("raising_hooks.py"))
    payload = service.decode(b"value error", "text/plain", None)
    [result] = service.predict([payload])
    assert isinstance(result, InferenceError) and result.status == 500
    assert "ValueError" in result.message and "the model is tired" in result.message
    assert "predict_fn" in result.message
    assert "Traceback" not in result.message and "File \"" not in result.message
    assert json.loads(result.body()) == {"error": result.message, "code": 500}


def test_one_failing_payload_does_not_fail_the_others(script_dir, known):
    service = load_service(script_dir("raising_hooks.py"))
    question, answer = known[0]
    payloads = [service.decode(body, "text/plain", None)
                for body in (question.encode(), b"zero division", question.encode())]
    first, failed, last = service.predict(payloads)
    assert isinstance(failed, InternalError) and "ZeroDivisionError" in failed.message
    assert service.encode(first, payloads[0]) == (answer.encode(), "text/plain")
    assert service.encode(last, payloads[2]) == (answer.encode(), "text/plain")


def test_script_raising_bad_request_keeps_400(script_dir):
    service = load_service(script_dir("raising_hooks.py"))
    [result] = service.predict([service.decode(b"bad request", "text/plain", None)])
    assert isinstance(result, BadRequest) and result.status == 400
    assert result.message == "predict_fn refuses this prompt"
    with pytest.raises(BadRequest, match="input_fn refuses this body") as info:
        service.decode(b"reject in input_fn", "text/plain", None)
    assert info.value.status == 400


def test_input_fn_crash_is_a_500(script_dir):
    service = load_service(script_dir("raising_hooks.py"))
    with pytest.raises(InferenceError) as info:
        service.decode(b"crash in input_fn", "text/plain", None)
    assert info.value.status == 500
    assert "input_fn" in info.value.message and "KeyError" in info.value.message


def test_output_fn_crash_is_a_500(script_dir):
    service = load_service(script_dir("raising_hooks.py"))
    payload = service.decode(b"output error", "text/plain", None)
    [result] = service.predict([payload])
    with pytest.raises(InferenceError) as info:
        service.encode(result, payload)
    assert info.value.status == 500
    assert "output_fn" in info.value.message and "RuntimeError" in info.value.message
    assert "cannot serialise boom" in info.value.message


def test_script_failing_to_import_is_a_load_error(script_dir):
    with pytest.raises(ModelLoadError) as info:
        load_service(script_dir("broken_import.py"))
    message = info.value.message
    assert "inference.py" in message and "ModuleNotFoundError" in message
    assert "a_package_this_image_does_not_have" in message


def test_model_fn_raising_is_a_load_error(script_dir):
    with pytest.raises(ModelLoadError) as info:
        load_service(script_dir("model_fn_raises.py"))
    message = info.value.message
    assert "model_fn" in message and "FileNotFoundError" in message and "custom_head.pt" in message
