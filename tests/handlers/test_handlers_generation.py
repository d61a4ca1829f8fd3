"""Generation parameters: every validation error (400, message names the parameter, type and
range), the server cap, and every accepted parameter actually running on the demo model."""

import json

import pytest

from handlers import HandlerConfig
from handlers.errors import BadRequest, InferenceError
from handlers.generation import (MAX_NUM_BEAMS, MAX_RETURN_SEQUENCES, MAX_STOP_SEQUENCES,
                                 GenerationParams, cut_at_stop, parse_parameters)
from handlers.service import FlanT5Service


def decode_error(service, parameters) -> BadRequest:
    body = json.dumps({"inputs": "Where was Ada born?", "parameters": parameters}).encode()
    with pytest.raises(InferenceError) as info:
        service.decode(body, "application/json", None)
    error = info.value
    assert isinstance(error, BadRequest) and error.status == 400, error
    assert json.loads(error.body()) == {"error": error.message, "code": 400}
    return error


# (parameters, substrings the message must contain)
INVALID = [
    # max_new_tokens
    ({"max_new_tokens": "8"}, ["'max_new_tokens'", "integer", "str"]),
    ({"max_new_tokens": 8.5}, ["'max_new_tokens'", "integer", "float"]),
    ({"max_new_tokens": True}, ["'max_new_tokens'", "integer", "bool"]),
    ({"max_new_tokens": 0}, ["'max_new_tokens'", ">= 1", "0"]),
    ({"max_new_tokens": -3}, ["'max_new_tokens'", ">= 1"]),
    # max_length (older callers)
    ({"max_length": "x"}, ["max_", "integer"]),
    ({"max_length": 8, "max_new_tokens": 8}, ["'max_new_tokens'", "'max_length'"]),
    # min_new_tokens
    ({"min_new_tokens": "2"}, ["'min_new_tokens'", "integer"]),
    ({"min_new_tokens": -1}, ["'min_new_tokens'", "between 0 and"]),
    ({"min_new_tokens": 9, "max_new_tokens": 4}, ["'min_new_tokens'", "'max_new_tokens'"]),
    # num_beams
    ({"num_beams": 0}, ["'num_beams'", f"between 1 and {MAX_NUM_BEAMS}"]),
    ({"num_beams": MAX_NUM_BEAMS + 1}, ["'num_beams'", f"between 1 and {MAX_NUM_BEAMS}"]),
    ({"num_beams": "2"}, ["'num_beams'", "integer"]),
    # num_return_sequences
    ({"num_return_sequences": 0}, ["'num_return_sequences'", "between 1 and"]),
    ({"num_return_sequences": MAX_RETURN_SEQUENCES + 1, "do_sample": True},
     ["'num_return_sequences'", f"between 1 and {MAX_RETURN_SEQUENCES}"]),
    ({"num_return_sequences": 1.0}, ["'num_return_sequences'", "integer"]),
    ({"num_return_sequences": 3, "num_beams": 2}, ["'num_return_sequences'", "'num_beams'", "do_sample"]),
    ({"num_return_sequences": 2}, ["'num_return_sequences'", "'num_beams'"]),
    # do_sample
    ({"do_sample": "true"}, ["'do_sample'", "true or false"]),
    ({"do_sample": 1}, ["'do_sample'", "true or false"]),
    # temperature
    ({"temperature": 0}, ["'temperature'", ">= 0.01"]),
    ({"temperature": -0.5}, ["'temperature'", ">= 0.01"]),
    ({"temperature": 1e-300}, ["'temperature'", ">= 0.01"]),  # fuzzing: inf logits, a 500 before
    ({"temperature": 101}, ["'temperature'", "<= 100"]),
    ({"temperature": "hot"}, ["'temperature'", "number", "str"]),
    ({"temperature": float("nan")}, ["'temperature'", "finite"]),
    ({"temperature": float("inf")}, ["'temperature'", "finite"]),
    # top_p
    ({"top_p": 0}, ["'top_p'", "> 0"]),
    ({"top_p": 1.5}, ["'top_p'", "<= 1"]),
    ({"top_p": [0.5]}, ["'top_p'", "number", "list"]),
    # top_k
    ({"top_k": -1}, ["'top_k'", ">= 0"]),
    ({"top_k": 2.5}, ["'top_k'", "integer"]),
    # repetition_penalty
    ({"repetition_penalty": 0}, ["'repetition_penalty'", ">= 0.01"]),
    ({"repetition_penalty": 1e-300}, ["'repetition_penalty'", ">= 0.01"]),
    ({"repetition_penalty": 1000}, ["'repetition_penalty'", "<= 100"]),
    ({"repetition_penalty": "1.2"}, ["'repetition_penalty'", "number"]),
    # no_repeat_ngram_size
    ({"no_repeat_ngram_size": -2}, ["'no_repeat_ngram_size'", ">= 0"]),
    ({"no_repeat_ngram_size": "3"}, ["'no_repeat_ngram_size'", "integer"]),
    # length_penalty
    ({"length_penalty": 250}, ["'length_penalty'", "<= 100"]),
    ({"length_penalty": -250}, ["'length_penalty'", ">= -100"]),
    ({"length_penalty": False}, ["'length_penalty'", "number", "bool"]),
    # early_stopping
    ({"early_stopping": "sometimes"}, ["'early_stopping'", "never"]),
    ({"early_stopping": 1}, ["'early_stopping'"]),
    # seed
    ({"seed": -1}, ["'seed'", "between 0 and"]),
    ({"seed": 2 ** 63}, ["'seed'", "between 0 and"]),
    ({"seed": "42"}, ["'seed'", "integer", "str"]),
    # stop
    ({"stop": ""}, ["'stop'", "non-empty"]),
    ({"stop": ["ok", ""]}, ["'stop'", "non-empty"]),
    ({"stop": 5}, ["'stop'"]),
    ({"stop": ["a", 1]}, ["'stop'"]),
    ({"stop": ["s"] * (MAX_STOP_SEQUENCES + 1)}, ["'stop'", f"at most {MAX_STOP_SEQUENCES}"]),
    # unknown / stream
    ({"max_tokens": 8}, ["'max_tokens'", "unknown", "max_new_tokens"]),
    ({"temprature": 0.5, "beams": 2}, ["'beams'", "'temprature'", "unknown"]),
    ({"stream": "yes"}, ["'stream'", "true or false"]),
]


@pytest.mark.parametrize("parameters,expected", INVALID, ids=[json.dumps(p)[:60] for p, _ in INVALID])
def test_invalid_parameter_is_400_naming_it(demo_service, parameters, expected):
    message = decode_error(demo_service, parameters).message
    for part in expected:
        assert part in message, (part, message)


@pytest.mark.parametrize("raw", ["max_new_tokens=8", [("max_new_tokens", 8)], 3])
def test_parameters_must_be_an_object(demo_service, raw):
    message = decode_error(demo_service, raw).message
    assert "'parameters'" in message and "object" in message


def test_server_cap_on_max_new_tokens(demo_model):
    service = FlanT5Service(demo_model, HandlerConfig(max_new_tokens=8))
    for parameters in ({"max_new_tokens": 9}, {"max_length": 9}):
        message = decode_error(service, parameters).message
        assert "'max_new_tokens'" in message and "cap of 8" in message and "9" in message
        assert "INFERENCE_MAX_NEW_TOKENS" in message
    message = decode_error(service, {"min_new_tokens": 9}).message
    assert "'min_new_tokens'" in message and "between 0 and 8" in message
    payload = service.decode(b'{"inputs": "x", "parameters": {"max_new_tokens": 8}}',
                             "application/json", None)
    assert payload.requests[0][1].max_new_tokens == 8


def test_server_cap_from_env():
    config = HandlerConfig.from_env({"INFERENCE_MAX_NEW_TOKENS": "20"})
    assert config.max_new_tokens == 20
    with pytest.raises(BadRequest, match="cap of 20"):
        parse_parameters({"max_new_tokens": 21}, max_new_tokens_cap=config.max_new_tokens)


def test_server_cap_bounds_the_model_default(demo_dir, known):
    """With INFERENCE_MAX_NEW_TOKENS=1 even requests without max_new_tokens stop after 1 token."""
    from handlers import load_model, predict

    model = load_model(demo_dir, HandlerConfig(max_new_tokens=1))
    question, answer = next((q, a) for q, a in known if len(a.split()) >= 2)
    [got] = predict(model, [question])
    assert got["generated_text"] != answer and answer.startswith(got["generated_text"].strip())


def test_parsed_parameters():
    params = parse_parameters({
        "max_new_tokens": 10, "min_new_tokens": 2, "num_beams": 4, "do_sample": True,
        "temperature": 1, "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.1,
        "no_repeat_ngram_size": 3, "length_penalty": -1, "early_stopping": "never",
        "num_return_sequences": 4, "seed": 0, "stop": "###", "stream": False,
    }, max_new_tokens_cap=512)
    assert params.temperature == 1.0 and isinstance(params.temperature, float)
    assert params.stop == ("###",) and params.seed == 0 and params.top_k == 0
    kwargs = params.generate_kwargs()
    assert "seed" not in kwargs and "stop" not in kwargs
    assert kwargs["num_return_sequences"] == 4 and kwargs["early_stopping"] == "never"
    assert parse_parameters(None, max_new_tokens_cap=512) == GenerationParams()
    assert parse_parameters({"max_length": 7}, max_new_tokens_cap=512).max_new_tokens == 7
    assert parse_parameters({"max_new_tokens": None}, max_new_tokens_cap=512) == GenerationParams()
    # equal parameters are equal (and hashable): that is what lets requests batch together
    assert hash(parse_parameters({"stop": ["a"]}, max_new_tokens_cap=9)) == \
        hash(parse_parameters({"stop": "a"}, max_new_tokens_cap=9))


def test_cut_at_stop():
    assert cut_at_stop("alpha beta gamma", ("gamma", "beta")) == "alpha "
    assert cut_at_stop("alpha", ("zeta",)) == "alpha"
    assert cut_at_stop("alpha", ()) == "alpha"


VALID = [
    {"max_new_tokens": 4},
    {"max_length": 5},
    {"min_new_tokens": 2, "max_new_tokens": 6},
    {"num_beams": 3},
    {"num_beams": 3, "num_return_sequences": 3},
    {"num_beams": 2, "length_penalty": 0.5, "early_stopping": True},
    {"num_beams": 2, "early_stopping": "never"},
    {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 1},
    {"do_sample": True, "top_k": 0, "seed": 3, "num_return_sequences": 2},
    {"repetition_penalty": 1.3},
    {"no_repeat_ngram_size": 2},
    {"stop": ["zzz", "qqq"]},
    {"do_sample": False, "temperature": 0.5},
    {"top_p": 0.5},
    {"length_penalty": -1.0},
    {"early_stopping": True},
    {"seed": 123},
]


@pytest.mark.parametrize("parameters", VALID, ids=[json.dumps(p)[:60] for p in VALID])
def test_every_accepted_parameter_set_generates(demo_service, known, parameters):
    """What validation lets through must not fail in generate (a 500)."""
    question = known[0][0]
    body = json.dumps({"inputs": question, "parameters": parameters}).encode()
    payload = demo_service.decode(body, "application/json", None)
    [result] = demo_service.predict([payload])
    assert not isinstance(result, InferenceError), result.message
    out, _ = demo_service.encode(result, payload)
    answers = json.loads(out)
    assert len(answers) == parameters.get("num_return_sequences", 1)
    assert all(isinstance(a["generated_text"], str) for a in answers)


def test_max_new_tokens_bounds_output(demo_model, demo_service, known):
    question, answer = next((q, a) for q, a in known if len(demo_model.engine.tokenizer(a).input_ids) > 3)
    body = json.dumps({"inputs": question, "parameters": {"max_new_tokens": 2}}).encode()
    payload = demo_service.decode(body, "application/json", None)
    [[generation]] = demo_service.predict([payload])
    [text] = generation.texts
    assert len(demo_model.engine.tokenizer(text, add_special_tokens=False).input_ids) <= 2
    assert answer.startswith(text.strip())


def test_min_new_tokens_lengthens_output(demo_service, known):
    question, answer = min(known, key=lambda pair: len(pair[1]))
    body = json.dumps({"inputs": question,
                       "parameters": {"min_new_tokens": 12, "max_new_tokens": 12}}).encode()
    payload = demo_service.decode(body, "application/json", None)
    [[generation]] = demo_service.predict([payload])
    assert len(generation.texts[0]) > len(answer)
