"""The CTranslate2 engine against the transformers engine, on real models: the same answers
(greedy, beam search, every parameter it accepts), 400 for what it cannot honour, sampling,
streaming, user scripts' default hooks."""

import json
import os
import shutil
import time

import pytest

from handlers import HandlerConfig, load_model, load_service, predict
from handlers.errors import BadRequest, ModelLoadError
from handlers.generation import GenerationParams, parse_parameters

from tests.handlers.conftest import copy_demo, engine_ids


def texts(results):
    return [r["generated_text"] for r in results]


def test_float32_greedy_answers_equal_transformers_on_the_whole_qa_set(ct2_demo, demo_qa, demo_answers):
    questions = [row["question"] for row in demo_qa]
    assert ct2_demo.engine.name == "ctranslate2"
    assert texts(predict(ct2_demo, questions)) == [demo_answers[q] for q in questions]  # 100 %


def test_int8_exact_match_within_two_points_of_transformers(demo_dir, ct2_config, demo_qa, demo_answers):
    compute_type = "int8"
    model = load_model(demo_dir, ct2_config(compute_type))
    questions = [row["question"] for row in demo_qa]
    answers = texts(predict(model, questions))
    exact = sum(a == row["answer"] for a, row in zip(answers, demo_qa)) / len(demo_qa)
    reference = sum(demo_answers[row["question"]] == row["answer"] for row in demo_qa) / len(demo_qa)
    print(f"exact match: ctranslate2 {compute_type} {exact:.1%}, transformers float32 {reference:.1%}")
    assert exact >= reference - 0.02


# Every parameter on the whole demo set: CTranslate2 float32 against transformers, the share of
# identical answers (docs/BENCHMARKS.md, "Parameters", has the table and the t5-small shape's).
AGREEMENT = [
    ({"num_beams": 2}, 1.0),  # early_stopping false, the model's default: patience 2
    ({"num_beams": 4}, 1.0),
    ({"num_beams": 3, "early_stopping": True}, 0.95),
    ({"num_beams": 3, "early_stopping": "never"}, 1.0),
    ({"num_beams": 3, "length_penalty": 0.0}, 1.0),
    ({"num_beams": 3, "length_penalty": 2.0}, 1.0),
    ({"num_beams": 3, "repetition_penalty": 1.5}, 0.95),
    ({"num_beams": 3, "repetition_penalty": 0.7}, 0.95),
    ({"num_beams": 3, "no_repeat_ngram_size": 2}, 0.99),
    ({"num_beams": 2, "do_sample": True}, 0.95),  # the model is sure of its answers: samples agree
    ({"do_sample": True, "temperature": 0.7, "top_k": 20}, 0.95),
    ({"repetition_penalty": 1.5}, 0.95),
    ({"no_repeat_ngram_size": 1}, 0.95),
    ({"max_new_tokens": 3}, 1.0),
    ({"do_sample": True, "top_k": 1, "num_return_sequences": 2}, 1.0),  # top_k 1 sampling is greedy
]


def agreement(reference, model, questions, parameters, first_only=False) -> float:
    requests = [{"inputs": q, "parameters": parameters} for q in questions]
    pairs = list(zip(predict(reference, requests), predict(model, requests)))
    if first_only:
        pairs = [(a[0], b[0]) for a, b in pairs]
    return sum(a == b for a, b in pairs) / len(pairs)


@pytest.mark.parametrize("parameters, floor", AGREEMENT, ids=[json.dumps(p) for p, _ in AGREEMENT])
def test_every_parameter_gives_transformers_answers(demo_model, ct2_demo, demo_qa, parameters, floor):
    share = agreement(demo_model, ct2_demo, [row["question"] for row in demo_qa], parameters)
    print(f"{json.dumps(parameters)}: {share:.1%} identical")
    assert share >= floor


def test_where_answers_differ_the_best_sequence_still_agrees(demo_model, ct2_demo, demo_qa):
    """The cases below 95 % (README, "CTranslate2 backend"; docs/BENCHMARKS.md, "Parameters"):
    the 2nd and 3rd best sequences of a beam search (near-ties between unlikely sequences), and
    min_new_tokens in a beam search (CTranslate2 takes </s> out before the softmax, so the other
    tokens' probabilities grow; transformers after): the best sequence agrees, and in greedy
    search min_new_tokens gives transformers' answers."""
    questions = [row["question"] for row in demo_qa]
    for parameters in ({"num_beams": 4, "num_return_sequences": 2}, {"num_beams": 4, "num_return_sequences": 3}):
        assert agreement(demo_model, ct2_demo, questions, parameters, first_only=True) >= 0.95
    assert agreement(demo_model, ct2_demo, questions, {"min_new_tokens": 5}) >= 0.95


def test_t5_small_shape_float32_greedy_token_ids_equal(t5_small_dirs, demo_qa):
    hf_dir, ct2_dir = t5_small_dirs
    reference = load_model(hf_dir, HandlerConfig(backend="transformers"))
    model = load_model(ct2_dir, HandlerConfig(backend="ctranslate2", compute_type="float32"))
    reference.start(), model.start()
    inputs, _ = reference._encode([row["question"] for row in demo_qa[:24]])
    for parameters in ({"max_new_tokens": 16, "min_new_tokens": 16}, {"max_new_tokens": 16}):
        params = parse_parameters(parameters, max_new_tokens_cap=512)
        expected = engine_ids(reference, inputs, params)
        assert len({token for ids in expected for token in ids}) > 100  # random weights, varied tokens
        assert engine_ids(model, inputs, params) == expected


def test_seed_is_the_one_parameter_ctranslate2_refuses(ct2_demo, demo_model, known):
    request = {"inputs": known[0][0], "parameters": {"do_sample": True, "seed": 3}}
    with pytest.raises(BadRequest, match="'seed' is not supported on the CTranslate2 engine") as info:
        predict(ct2_demo, [request])
    assert info.value.status == 400
    predict(demo_model, [request])  # transformers runs it


def test_a_refused_group_fails_alone(ct2_demo, known):
    (q1, a1), (q2, _) = known[:2]
    results = ct2_demo.generate([(q1, GenerationParams()), (q2, GenerationParams(seed=1))])
    assert results[0].texts == (a1,)
    assert isinstance(results[1], BadRequest)


def test_a_top_p_too_small_for_float32_keeps_the_likeliest_token(ct2_demo, known):
    """Found by fuzzing: a top_p like 1e-211 is 0 as CTranslate2's float32 (which it refuses with a
    ValueError, a 500); it samples the most likely token, as any tiny top_p does."""
    question, answer = known[0]
    request = {"inputs": question, "parameters": {"do_sample": True, "top_p": 1.4572034493501215e-211}}
    assert texts(predict(ct2_demo, [request])[0]) == [answer]


def test_unseeded_sampling_samples(ct2_demo, known):
    request = {"inputs": known[0][0], "parameters": {"do_sample": True, "temperature": 50.0, "top_k": 0,
                                                      "num_return_sequences": 3, "max_new_tokens": 4}}
    samples = [tuple(texts(predict(ct2_demo, [request])[0])) for _ in range(4)]
    assert all(len(s) == 3 for s in samples)
    assert len({t for s in samples for t in s}) > 6  # near-uniform over 1,100 tokens


def test_sampling_defaults_come_from_the_models_generation_config(tmp_path, ct2_demo, demo_model, known):
    """do_sample and top_k 1 in generation_config.json: both engines sample from one token."""
    model_dir = copy_demo(tmp_path / "model")
    shutil.copytree(ct2_demo.engine.path, model_dir / "ctranslate2")
    for path in (model_dir / "generation_config.json", model_dir / "ctranslate2" / "generation_config.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "do_sample": True, "top_k": 1}))
    questions = [q for q, _ in known[:8]]
    ct2_model = load_model(model_dir, HandlerConfig(backend="ctranslate2", compute_type="float32"))
    assert ct2_model.engine.defaults["top_k"] == 1
    assert texts(predict(ct2_model, questions)) == [a for _, a in known[:8]]
    assert texts(predict(load_model(model_dir, HandlerConfig(backend="transformers")), questions)) == \
        [a for _, a in known[:8]]


def run_stream(model, prompt: str, **parameters) -> list[str]:
    return list(model.stream(prompt, parse_parameters(parameters, max_new_tokens_cap=512), timeout=30))


@pytest.mark.parametrize("engine", ["demo_model", "ct2_demo"])
def test_stream_pieces_add_up_to_the_answer(request, engine, multiword):
    model = request.getfixturevalue(engine)
    question, answer = multiword
    pieces = run_stream(model, question)
    assert len(pieces) > 1 and "".join(pieces) == answer
    stop = answer.split()[1]
    assert "".join(run_stream(model, question, stop=stop)) == answer[:answer.find(stop)]


def test_stream_refuses_what_ctranslate2_cannot_honour(ct2_demo, known):
    with pytest.raises(BadRequest, match="seed"):
        ct2_demo.stream(known[0][0], GenerationParams(do_sample=True, seed=2), timeout=5)


def test_user_script_default_hooks_run_on_ctranslate2(script_dir, ct2_config, known):
    service = load_service(script_dir("only_predict_fn.py"), ct2_config())
    assert service.model.engine.name == "ctranslate2"
    service.start()
    question, answer = known[0]
    payload = service.decode(json.dumps({"inputs": question}).encode(), "application/json", None)
    [result] = service.predict([payload])
    assert json.loads(service.encode(result, payload)[0]) == {"answer": answer, "data_type": "dict"}


def test_compute_types_are_checked(demo_dir, ct2_config):
    with pytest.raises(ModelLoadError, match="CT2_COMPUTE_TYPE=float16 is refused"):
        load_model(demo_dir, ct2_config("float16"))
    with pytest.raises(ModelLoadError, match="CT2_COMPUTE_TYPE='int4'"):
        load_model(demo_dir, ct2_config("int4"))
    with pytest.raises(ModelLoadError, match="bfloat16 is not available on cpu"):
        load_model(demo_dir, ct2_config("bfloat16", device="cpu"))


def test_a_ctranslate2_only_dir_is_served_by_default_and_refused_by_transformers(ct2_demo, tmp_path, known):
    converted = shutil.copytree(ct2_demo.engine.path, tmp_path / "converted")
    with pytest.raises(ModelLoadError, match="INFERENCE_BACKEND=ctranslate2"):
        load_model(converted, HandlerConfig(backend="transformers"))
    model = load_model(converted)  # auto
    assert model.engine.name == "ctranslate2"
    assert texts(predict(model, [known[0][0]])) == [known[0][1]]


def test_decoding_equals_transformers_for_any_ids(ct2_demo, demo_model):
    """The tokenizers-only decoder (with transformers' clean-up of spaces) on random ids."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    size = demo_model.engine.tokenizer.vocab_size

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(st.lists(st.integers(0, size - 1), max_size=40), min_size=1, max_size=4))
    def check(sequences):
        assert ct2_demo.engine.detokenize(sequences) == demo_model.engine.detokenize(sequences)

    check()


def test_lone_prompts_on_all_threads_answer_as_the_replicas(demo_dir, ct2_config, known):
    """CT2_THREAD_LAYOUT=both keeps a copy on all the threads for a prompt alone (what the
    start-up measurement keeps where it is faster): the same answers, and a lone prompt runs
    on it while batches run on the one-thread replicas."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: there is no other layout")
    model = load_model(demo_dir, ct2_config(thread_layout="both"))
    model.start()
    assert model.engine.lone is not None
    used = []
    for name in ("translator", "lone"):
        translator = getattr(model.engine, name)
        setattr(model.engine, name, Spy(translator, used, name))
    questions = [q for q, _ in known[:6]]
    deadline = time.monotonic() + 5
    while model.engine.running and time.monotonic() < deadline:  # the warm-up's batch is answered before it ends
        time.sleep(0.01)
    assert texts(predict(model, [questions[0]])) == [known[0][1]]
    assert used[-1] == "lone"
    assert texts(predict(model, questions)) == [a for _, a in known[:6]]
    replicas = load_model(demo_dir, ct2_config(thread_layout="replicas"))
    replicas.start()
    assert replicas.engine.lone is None


class Spy:
    def __init__(self, translator, used: list, name: str):
        self.translator, self.used, self.name = translator, used, name

    def translate_batch(self, *args, **kwargs):
        self.used.append(self.name)
        return self.translator.translate_batch(*args, **kwargs)
