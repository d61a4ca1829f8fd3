"""The real SageMaker Python SDK (v2) deploys the built CPU image in local mode
(instance_type="local": the SDK unpacks model.tar.gz and runs the image with docker-compose),
through the deploy guide's own code in examples/, as a notebook would. Each deploy takes
about a minute. The model.tar.gz files are made with `python -m tools.package`.

What local mode cannot do (multi-model endpoints, serverless, async) is covered over direct
HTTP by test_multi_model.py and test_single_model.py; docs/DEPLOY.md says so.
"""

import pytest

from tools.package import package
from tests.procs import DEMO_MODEL, REPO

MODEL_FN_CODE = REPO / "tests" / "container" / "fixtures" / "model_fn_code"


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict:
    """The demo model packaged three ways: alone, with the seed's code/inference.py
    (load_model/predict), with a model_fn/predict_fn script."""
    archives = {}
    for name, code in (("plain", None), ("seed", REPO / "demo" / "code"), ("model_fn", MODEL_FN_CODE)):
        # A dir each: local mode unpacks a file:// model.tar.gz next to itself and mounts that dir.
        archives[name] = tmp_path_factory.mktemp(name) / "model.tar.gz"
        package(DEMO_MODEL, archives[name], code, report=lambda *_: None)
    return archives


@pytest.fixture(scope="module")
def pairs(qa_pairs) -> list[dict]:
    """Demo questions; the sixth has an answer of several words (a one-token answer is a prefix)."""
    multi_word = next(p for p in qa_pairs if len(p["answer"].split()) >= 3)
    rest = [p for p in qa_pairs if p is not multi_word]
    return rest[:5] + [multi_word] + rest[5:]


def answers(pairs: list[dict]) -> list[str]:
    return [p["answer"] for p in pairs]


def questions(pairs: list[dict]) -> list[str]:
    return [p["question"] for p in pairs]


def test_realtime_endpoint(local_mode, archives, pairs):
    seen = local_mode.run("realtime", archives["plain"], questions(pairs[:11]))
    assert seen["one"] == answers(pairs[:1])
    assert seen["many"] == answers(pairs[1:5])
    full = pairs[5]["answer"]
    [short] = seen["one_token"]
    assert short and full.startswith(short) and short != full, (short, full)
    assert seen["csv"] == answers(pairs[6:9])
    assert seen["traced"] == pairs[9]["answer"]
    assert seen["echo"] == {"status": 200, "body": [{"generated_text": pairs[9]["answer"]}],
                            "custom_attributes": "trace_id=local-2"}
    assert seen["question_context"]["status"] == 200, seen["question_context"]
    assert len(seen["containers_while_up"]) == 1
    # predictor.delete_endpoint() stops the container (the SDK's docker-compose leaves it exited)
    assert seen["containers_after"] == ["exited 0"]


def test_seed_style_script_load_model_predict(local_mode, archives, pairs):
    seen = local_mode.run("script", archives["seed"], questions(pairs[:11]))
    assert seen["one"] == answers(pairs[:1])
    assert seen["many"] == answers(pairs[1:5])
    assert seen["raw"]["body"] == [{"generated_text": pairs[5]["answer"]}]
    # The seed's script, not the server's default (which reads question/context), answered:
    refused = seen["question_context"]
    assert refused["status"] == 500, refused
    assert 'JSON body needs an "inputs" field' in refused["body"]["error"]
    assert seen["containers_after"] == ["exited 0"]


def test_model_fn_predict_fn_script(local_mode, archives, pairs):
    seen = local_mode.run("script", archives["model_fn"], questions(pairs[:11]))
    assert seen["one"] == answers(pairs[:1])
    assert seen["many"] == answers(pairs[1:5])
    assert seen["raw"]["body"] == [{"generated_text": pairs[5]["answer"], "by": "predict_fn"}]
    refused = seen["question_context"]
    assert refused["status"] == 500 and "predict_fn" in refused["body"]["error"], refused
    assert seen["containers_after"] == ["exited 0"]


def test_model_env_takes_effect(local_mode, archives, qa_pairs):
    env = {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "1", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1",
           "SAGEMAKER_MODEL_SERVER_WORKERS": "2", "INFERENCE_MAX_INPUT_TOKENS": "4"}
    seen = local_mode.run("env", archives["plain"], questions(qa_pairs[:96]), env=env)
    too_large = seen["too_large"]
    assert too_large["status"] == 413 and "1048576 bytes" in too_large["body"]["error"], too_large
    truncated = seen["truncated"]
    assert truncated["status"] == 200 and truncated["body"][0]["truncated"] is True, truncated
    timeout = seen["timeout"]
    assert timeout["status"] == 504 and "1 s" in timeout["body"]["error"], timeout
    # workers: /execution-parameters offers two concurrent transforms per worker
    assert seen["execution_parameters"]["MaxConcurrentTransforms"] == 4
    assert seen["execution_parameters"]["MaxPayloadInMB"] == 1
    assert seen["after_timeout"]["status"] == 200, seen["after_timeout"]
    assert seen["containers_after"] == ["exited 0"]


def test_batch_transform_jsonlines(local_mode, archives, qa_pairs):
    chosen = qa_pairs[:40]
    seen = local_mode.run("transform", archives["plain"], questions(chosen))
    assert [line["generated_text"] for line in seen["answers"]] == answers(chosen)
    assert seen["containers_after"] == ["exited 0"]
