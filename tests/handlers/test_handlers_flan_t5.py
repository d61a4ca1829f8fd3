"""The Flan-T5 interceptor on the real demo model: answers, batching, grouping, truncation,
stop sequences, seeds, dtype, and the ``python -c`` level API."""

import os
import subprocess
import sys

import pytest
import torch

from handlers import HandlerConfig, load_model, predict
from handlers.errors import BadRequest, ModelLoadError
from handlers.flan_t5 import FlanT5Model
from handlers.generation import GenerationParams

from tests.handlers.conftest import REPO


def texts(results):
    return [r["generated_text"] for r in results]


def test_python_c_level_use(demo_dir, known):
    question, answer = known[0]
    code = ("from handlers import load_model, predict; "
            f"m = load_model({os.path.relpath(demo_dir, REPO)!r}); "
            f"print(predict(m, [{question!r}])[0]['generated_text'])")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == answer


def test_demo_model_exact_match_on_its_data(demo_qa, demo_answers):
    correct = sum(demo_answers[row["question"]] == row["answer"] for row in demo_qa)
    assert len(demo_qa) >= 100
    assert correct / len(demo_qa) >= 0.95, f"exact match {correct}/{len(demo_qa)}"


def test_predict_string_and_object_requests(demo_model, known):
    (q1, a1), (q2, a2), (q3, a3), (q4, a4) = known[:4]
    got = predict(demo_model, [
        q1,
        {"inputs": q2},
        {"inputs": q3, "parameters": {"max_new_tokens": 16}},
        {"inputs": [q4, q1]},
    ])
    assert got == [
        {"generated_text": a1},
        [{"generated_text": a2}],
        [{"generated_text": a3}],
        [{"generated_text": a4}, {"generated_text": a1}],
    ]


def test_predict_bad_request_raises(demo_model):
    with pytest.raises(BadRequest, match="max_new_tokens"):
        predict(demo_model, [{"inputs": "x", "parameters": {"max_new_tokens": -1}}])
    with pytest.raises(BadRequest, match="request 1"):
        predict(demo_model, ["fine", {"inputs": 3}])


def test_batch_equals_one_by_one(demo_model, demo_qa):
    # include questions the model gets wrong too: batching must not change any answer
    questions = [row["question"] for row in demo_qa[::37]][:12]
    batched = texts(predict(demo_model, questions))
    alone = [predict(demo_model, [q])[0]["generated_text"] for q in questions]
    assert batched == alone


def test_small_max_batch_size_gives_the_same_answers(demo_dir, demo_answers):
    model = load_model(demo_dir, HandlerConfig(max_batch_size=2))
    questions = list(demo_answers)[:7]
    assert texts(predict(model, questions)) == [demo_answers[q] for q in questions]


def test_mixed_parameters_are_grouped_and_keep_order(demo_model, known):
    pairs = known[:9]
    parameter_sets = [None, {"max_new_tokens": 1}, {"num_beams": 2}]
    requests = [{"inputs": q, "parameters": parameter_sets[i % 3]} for i, (q, _) in enumerate(pairs)]
    together = predict(demo_model, requests)
    alone = [predict(demo_model, [r])[0] for r in requests]
    assert together == alone
    # the greedy ones (no parameters) are the known answers, in their places
    assert [together[i][0]["generated_text"] for i in range(0, 9, 3)] == [pairs[i][1] for i in range(0, 9, 3)]
    # the 1-token ones are cut short
    for i in range(1, 9, 3):
        assert pairs[i][1].startswith(together[i][0]["generated_text"].strip())


def test_generate_groups_requests_with_equal_parameters(demo_model, known):
    questions = [q for q, _ in known[:6]]
    short = GenerationParams(max_new_tokens=1)
    requests = [(q, short if i % 2 else GenerationParams()) for i, q in enumerate(questions)]
    results = demo_model.generate(requests)
    assert [r.texts[0] for r in results[::2]] == [a for _, a in known[:6]][::2]
    assert all(len(r.texts) == 1 and not r.truncated for r in results)


def test_truncation_is_reported(demo_dir, known):
    model = load_model(demo_dir, HandlerConfig(backend="transformers", max_input_tokens=8))
    assert model.max_input_tokens == 8
    long_question = next(q for q, _ in known if len(model.engine.tokenizer(q).input_ids) > 8)
    short = "born"
    assert len(model.engine.tokenizer(short).input_ids) <= 8
    long_result, short_result = predict(model, [
        {"inputs": long_question}, {"inputs": short}])
    assert long_result[0].get("truncated") is True
    assert "truncated" not in short_result[0]
    [generation] = model.generate([(long_question, GenerationParams())])
    assert generation.truncated


def test_default_max_input_is_the_models_limit(demo_model):
    assert demo_model.max_input_tokens == 512
    very_long = " ".join(["Where was Ada born?"] * 200)
    [result] = predict(demo_model, [{"inputs": very_long}])
    assert result[0].get("truncated") is True


def test_stop_sequences_cut_output(demo_model, multiword):
    question, answer = multiword
    stop = answer.split()[1]
    expected = answer[:answer.find(stop)]
    [got] = predict(demo_model, [{"inputs": question, "parameters": {"stop": stop}}])
    assert got == [{"generated_text": expected}]
    [got] = predict(demo_model, [{"inputs": question, "parameters": {"stop": ["zzzz", stop]}}])
    assert got == [{"generated_text": expected}]
    [got] = predict(demo_model, [{"inputs": question, "parameters": {"stop": ["zzzz"]}}])
    assert got == [{"generated_text": answer}]


SAMPLING = {"do_sample": True, "temperature": 3.0, "top_k": 0, "num_return_sequences": 3}


def test_seed_makes_sampling_reproducible(demo_model, known):
    question = known[0][0]
    request = {"inputs": question, "parameters": {**SAMPLING, "seed": 1234}}
    first = predict(demo_model, [request])
    assert predict(demo_model, [request]) == first
    outputs = {tuple(texts(predict(demo_model, [{"inputs": question, "parameters": {**SAMPLING, "seed": s}}])[0]))
               for s in range(3)}
    assert len(outputs) > 1, "different seeds all gave the same hot samples"


def test_seeded_result_does_not_depend_on_batch_companions(demo_model, known):
    """A seeded request must give the same text whatever else shares its batch (the
    dynamic batcher puts concurrent requests with equal parameters together)."""
    for seed in range(4):
        params = {**SAMPLING, "seed": seed}
        target = {"inputs": known[0][0], "parameters": params}
        alone = predict(demo_model, [target])[0]
        companion = {"inputs": known[1][0], "parameters": params}
        with_companion = predict(demo_model, [companion, target])[1]
        assert texts(with_companion) == texts(alone), f"seed {seed}"


@pytest.mark.parametrize("dtype", ["float16", "fp16", "half", "FLOAT16"])
def test_fp16_is_refused(demo_dir, dtype):
    with pytest.raises(ModelLoadError, match="float16|fp16") as info:
        load_model(demo_dir, HandlerConfig(backend="transformers", dtype=dtype))
    assert info.value.status == 422


def test_unknown_dtype_is_refused(demo_dir):
    with pytest.raises(ModelLoadError, match="int8"):
        load_model(demo_dir, HandlerConfig(backend="transformers", dtype="int8"))


def test_dtype_override_and_cpu_default(demo_dir, demo_model, known):
    assert demo_model.engine.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        assert next(demo_model.engine.model.parameters()).dtype == torch.float32
    model = load_model(demo_dir, HandlerConfig(backend="transformers", dtype="bfloat16", device="cpu"))
    assert next(model.engine.model.parameters()).dtype == torch.bfloat16
    assert model.engine.device == torch.device("cpu")
    [got] = predict(model, [known[0][0]])
    assert isinstance(got["generated_text"], str)


def test_model_is_in_eval_mode_and_loads_without_network(demo_model):
    assert demo_model.engine.model.training is False
    assert isinstance(demo_model, FlanT5Model)


def test_warm_up(demo_model):
    demo_model.start()
