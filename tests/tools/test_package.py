"""`python -m tools.package`: a training output dir (the seed's layout) -> a clean
model.tar.gz that the servers load, checked before it is written, with the model converted for
CTranslate2 beside it."""

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from handlers import HandlerConfig, load_service
from tools.package import main
from tests.handlers.conftest import REPO
from tests.tools.training_dirs import TRAINING_STATE, members, training_output

SEED_SCRIPT = REPO / "demo" / "code" / "inference.py"
SERVING_FILES = {"config.json", "generation_config.json", "special_tokens_map.json", "spiece.model",
                 "tokenizer.json", "tokenizer_config.json"}
CONVERTED = {"ctranslate2", *(f"ctranslate2/{name}" for name in (
    "config.json", "generation_config.json", "model.bin", "shared_vocabulary.json", "tokenizer.json",
    "tokenizer_config.json"))}


def answer(archive: Path, question: str, config: HandlerConfig | None = None) -> bytes:
    service = load_service(archive, config)
    payload = service.decode(b'{"inputs": "%s"}' % question.encode(), "application/json", None)
    [result] = service.predict([payload])
    return service.encode(result, payload)[0]


def run(*args: str) -> subprocess.CompletedProcess:
    """The documented command, as a process."""
    return subprocess.run([sys.executable, "-m", "tools.package", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("bin_weights", [False, True], ids=["safetensors", "pytorch_model.bin"])
def test_training_dir_becomes_a_clean_archive_that_serves(tmp_path, qa_pairs, capsys, bin_weights):
    train = training_output(tmp_path / "train", bin_weights=bin_weights)
    out = tmp_path / "model.tar.gz"
    assert main([str(train), str(out), "--question", qa_pairs[0]["question"]]) == 0
    report = capsys.readouterr().out
    weights = "pytorch_model.bin" if bin_weights else "model.safetensors"
    found = members(out)
    assert set(found) == SERVING_FILES | {weights} | CONVERTED
    for info in found.values():
        mode = 0o755 if info.isdir() else 0o644
        assert (info.mode, info.uid, info.gid, info.mtime) == (mode, 0, 0, 0), info.name
    # what was left out is named; the check's answers are the model's, from both copies
    for name in (*TRAINING_STATE, "checkpoint-50/", "checkpoint-100/"):
        assert name in report
    expected = f'[{{"generated_text": "{qa_pairs[0]["answer"]}"}}]'
    assert f"\nanswer: {expected}\n" in report
    assert f"\nanswer from ctranslate2/ (int8): {expected}\n" in report
    converted_bytes = sum(info.size for name, info in found.items() if name.startswith("ctranslate2/"))
    assert f"converted: ctranslate2/ (int8, {converted_bytes:,d} bytes: config.json, " in report
    pair = qa_pairs[5]
    assert answer(out, pair["question"]) == f'[{{"generated_text": "{pair["answer"]}"}}]'.encode()


def test_the_converted_copy_is_what_the_ctranslate2_backend_serves(tmp_path, qa_pairs):
    """An endpoint on CTranslate2 starts from ctranslate2/ in the archive: nothing is converted
    into its cache."""
    out = tmp_path / "model.tar.gz"
    assert main([str(training_output(tmp_path / "train")), str(out)]) == 0
    cache = tmp_path / "ct2-cache"
    config = HandlerConfig(backend="ctranslate2", ct2_cache_dir=str(cache))
    pair = qa_pairs[3]
    assert answer(out, pair["question"], config) == f'[{{"generated_text": "{pair["answer"]}"}}]'.encode()
    assert not cache.exists()
    with tarfile.open(out) as tar:  # int8 weights: a quarter of the float32 checkpoint's
        assert tar.getmember("ctranslate2/model.bin").size < tar.getmember("model.safetensors").size / 3


@pytest.mark.parametrize("quantization", ["float32", "bfloat16"])
def test_ctranslate2_precision_is_a_flag(tmp_path, capsys, quantization):
    out = tmp_path / "model.tar.gz"
    assert main([str(training_output(tmp_path / "train")), str(out), "--ctranslate2", quantization]) == 0
    assert f"answer from ctranslate2/ ({quantization}): [" in capsys.readouterr().out
    with tarfile.open(out) as tar:
        size = tar.getmember("ctranslate2/model.bin").size
        weights = tar.getmember("model.safetensors").size
    # float32 stores the checkpoint's 4 bytes a weight, bfloat16 2 (headers and vocabulary aside)
    assert abs(size - weights * (1 if quantization == "float32" else 0.5)) < weights * 0.1, (size, weights)


def test_ctranslate2_none_ships_the_checkpoint_alone(tmp_path, capsys):
    out = tmp_path / "model.tar.gz"
    assert main([str(training_output(tmp_path / "train")), str(out), "--ctranslate2", "none"]) == 0
    assert set(members(out)) == SERVING_FILES | {"model.safetensors"}
    report = capsys.readouterr().out
    assert "converted" not in report and "ctranslate2/" not in report


def test_code_dir_is_packed_and_its_script_is_what_the_check_runs(tmp_path, qa_pairs, capsys):
    train = training_output(tmp_path / "train")
    code = tmp_path / "code"
    code.mkdir()
    shutil.copyfile(SEED_SCRIPT, code / "inference.py")
    (code / "requirements.txt").write_text("sentencepiece\n")
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "inference.cpython-311.pyc").write_bytes(b"stale")
    out = tmp_path / "model.tar.gz"
    assert main([str(train), str(out), "--code", str(code), "--question", qa_pairs[1]["question"]]) == 0
    found = members(out)
    assert {"code", "code/inference.py", "code/requirements.txt"} <= set(found)
    assert not any("__pycache__" in name for name in found)
    assert found["code"].mode == 0o755 and found["code"].isdir()
    service = load_service(out)
    assert type(service).__name__ == "ScriptService"  # the seed script's load_model/predict
    report = capsys.readouterr().out
    assert f'"generated_text": "{qa_pairs[1]["answer"]}"' in report
    # its own load_model loads the model: no server would use a converted copy
    assert "not converted: the user script loads its own model (load_model / model_fn)" in report
    assert not any(name.startswith("ctranslate2") for name in found)


def test_the_archive_is_reproducible(tmp_path):
    train = training_output(tmp_path / "train")
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    assert main([str(train), str(first)]) == 0
    assert main([str(train), str(second)]) == 0
    assert "ctranslate2/model.bin" in members(first)
    assert first.read_bytes() == second.read_bytes()


def test_command_line(tmp_path):
    train = training_output(tmp_path / "train")
    out = tmp_path / "model.tar.gz"
    done = run(train, out)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    assert done.stderr == ""
    assert set(members(out)) == SERVING_FILES | {"model.safetensors"} | CONVERTED


def test_code_option_replaces_the_training_dirs_code_and_says_so(tmp_path, capsys):
    train = training_output(tmp_path / "train")
    (train / "code").mkdir()
    shutil.copyfile(SEED_SCRIPT, train / "code" / "inference.py")
    own = tmp_path / "own"
    own.mkdir()
    (own / "inference.py").write_text("# the server's defaults for every hook\n")
    out = tmp_path / "model.tar.gz"
    assert main([str(train), str(out), "--code", str(own)]) == 0
    report = capsys.readouterr().out
    assert f"code/ (replaced by {own})" in report
    with tarfile.open(out) as tar:
        assert tar.extractfile("code/inference.py").read() == b"# the server's defaults for every hook\n"
    # a script without a loader of its own: the default loader serves the model, so it is converted
    assert "answer from ctranslate2/ (int8)" in report and "ctranslate2/model.bin" in members(out)
