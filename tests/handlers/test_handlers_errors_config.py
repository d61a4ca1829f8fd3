"""Error classes (status + JSON body) and HandlerConfig.from_env."""

import dataclasses
import json

import pytest

from handlers import errors
from handlers.config import ConfigError, HandlerConfig

STATUSES = {
    errors.BadRequest: 400, errors.NotFound: 404, errors.MethodNotAllowed: 405,
    errors.NotAcceptable: 406, errors.Conflict: 409, errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415, errors.InternalError: 500, errors.ModelLoadError: 422,
    errors.ServiceUnavailable: 503, errors.GatewayTimeout: 504, errors.InsufficientStorage: 507,
}


@pytest.mark.parametrize("cls,status", STATUSES.items(), ids=[c.__name__ for c in STATUSES])
def test_error_carries_status_and_json_body(cls, status):
    error = cls("something \"quoted\" went wrong: ünïcode")
    assert isinstance(error, errors.InferenceError) and isinstance(error, Exception)
    assert error.status == status
    assert json.loads(error.body()) == {"error": "something \"quoted\" went wrong: ünïcode",
                                        "code": status}
    assert str(error) == error.message


def test_internal_error_from_exception_names_type_and_message():
    error = errors.InternalError.from_exception("generate", ValueError("bad shape"))
    assert error.status == 500 and error.message == "generate raised ValueError: bad shape"


def test_handlers_config_and_errors_import_without_torch():
    import subprocess
    import sys

    code = ("import sys, handlers, handlers.config, handlers.errors; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'transformers' not in sys.modules")
    from tests.handlers.conftest import REPO
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_from_env_defaults():
    config = HandlerConfig.from_env({})
    assert config == HandlerConfig()
    assert (config.default_accept, config.program, config.max_new_tokens, config.max_input_tokens,
            config.max_batch_size, config.dtype, config.device) == (
        None, "inference.py", 512, None, 32, None, None)


def test_from_env_reads_every_variable():
    config = HandlerConfig.from_env({
        "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": " text/csv ",
        "SAGEMAKER_PROGRAM": "serve.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/code",
        "INFERENCE_DEVICE": "cpu",
        "INFERENCE_DTYPE": "bfloat16",
        "INFERENCE_MAX_NEW_TOKENS": "64",
        "INFERENCE_MAX_INPUT_TOKENS": "128",
        "INFERENCE_MAX_BATCH_SIZE": "4",
        "INFERENCE_BACKEND": " CTranslate2 ",
        "CT2_COMPUTE_TYPE": "INT8_float32",
        "CT2_CACHE_DIR": "/var/cache/ct2",
        "INFERENCE_TORCH_THREADS": "3",
        "INFERENCE_MAX_BATCH_WAIT_MS": "7.5",
        "CT2_THREAD_LAYOUT": "Both",
        "OMP_NUM_THREADS": "5",  # torch's own variable: not ours to read
    })
    assert config == HandlerConfig(default_accept="text/csv", program="serve.py",
                                   submit_dir="/opt/ml/code", device="cpu", dtype="bfloat16",
                                   max_new_tokens=64, max_input_tokens=128, max_batch_size=4,
                                   backend="ctranslate2", compute_type="int8_float32",
                                   ct2_cache_dir="/var/cache/ct2", threads=3, max_batch_wait_ms=7.5, thread_layout="both")


def test_from_env_ignores_s3_submit_directory():
    config = HandlerConfig.from_env({"SAGEMAKER_SUBMIT_DIRECTORY": "s3://bucket/code.tar.gz"})
    assert config.submit_dir is None


@pytest.mark.parametrize("name,value", [
    ("INFERENCE_MAX_NEW_TOKENS", "lots"), ("INFERENCE_MAX_NEW_TOKENS", "0"),
    ("INFERENCE_MAX_BATCH_SIZE", "-1"), ("INFERENCE_MAX_INPUT_TOKENS", "1.5"),
    ("INFERENCE_MAX_INPUT_TOKENS", "0"), ("INFERENCE_BACKEND", "onnx"),
    ("INFERENCE_TORCH_THREADS", "two"), ("INFERENCE_MAX_BATCH_WAIT_MS", "-1"), ("CT2_THREAD_LAYOUT", "fast"),
])
def test_from_env_invalid_value_names_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        HandlerConfig.from_env({name: value})


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        HandlerConfig().max_new_tokens = 3
