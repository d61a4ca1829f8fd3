"""`python -m tools.package`: a training output dir (the seed's layout) -> a clean
model.tar.gz that the servers load, checked before it is written."""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from handlers import load_service
from tools.package import main
from tests.handlers.conftest import REPO, copy_demo

SEED_SCRIPT = REPO / "demo" / "code" / "inference.py"
SERVING_FILES = {"config.json", "generation_config.json", "special_tokens_map.json", "spiece.model",
                 "tokenizer.json", "tokenizer_config.json"}
TRAINING_STATE = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                  "trainer_state.json", "all_results.json")


def training_output(target: Path, *, bin_weights: bool = False) -> Path:
    """What a Seq2SeqTrainer run leaves behind: the final model (weights written 0600, as
    safetensors may write them), its training state, and checkpoint-*/ dirs."""
    copy_demo(target)
    if bin_weights:  # the seed's pytorch_model.bin layout
        torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
        (target / "model.safetensors").unlink()
    for name in TRAINING_STATE:
        (target / name).write_bytes(os.urandom(256))
    for step in (50, 100):
        copy_demo(target / f"checkpoint-{step}")
        (target / f"checkpoint-{step}" / "optimizer.pt").write_bytes(os.urandom(256))
    for path in target.iterdir():
        if path.name.endswith((".safetensors", ".bin")):
            path.chmod(0o600)
    return target


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


def answer(archive: Path, question: str) -> bytes:
    service = load_service(archive)
    payload = service.decode(b'{"inputs": "%s"}' % question.encode(), "application/json", None)
    [result] = service.predict([payload])
    return service.encode(result, payload)[0]


@pytest.mark.parametrize("bin_weights", [False, True], ids=["safetensors", "pytorch_model.bin"])
def test_training_dir_becomes_a_clean_archive_that_serves(tmp_path, qa_pairs, capsys, bin_weights):
    train = training_output(tmp_path / "train", bin_weights=bin_weights)
    out = tmp_path / "model.tar.gz"
    assert main([str(train), str(out), "--question", qa_pairs[0]["question"]]) == 0
    report = capsys.readouterr().out
    weights = "pytorch_model.bin" if bin_weights else "model.safetensors"
    found = members(out)
    assert set(found) == SERVING_FILES | {weights}
    for info in found.values():
        assert (info.mode, info.uid, info.gid, info.mtime) == (0o644, 0, 0, 0), info.name
    # what was left out is named; the check's answer is the model's
    for name in (*TRAINING_STATE, "checkpoint-50/", "checkpoint-100/"):
        assert name in report
    assert f'[{{"generated_text": "{qa_pairs[0]["answer"]}"}}]' in report
    pair = qa_pairs[5]
    assert answer(out, pair["question"]) == f'[{{"generated_text": "{pair["answer"]}"}}]'.encode()


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
    assert f'"generated_text": "{qa_pairs[1]["answer"]}"' in capsys.readouterr().out


def test_the_archive_is_reproducible(tmp_path):
    train = training_output(tmp_path / "train")
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    assert main([str(train), str(first)]) == 0
    assert main([str(train), str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()


def corrupt_weights(train: Path) -> str:
    (train / "model.safetensors").write_bytes(b"\x00" * 64)
    return "model.safetensors"


def drop_tokenizer(train: Path) -> str:
    for name in ("tokenizer.json", "spiece.model"):
        (train / name).unlink()
    return "tokenizer"


def drop_final_weights(train: Path) -> str:
    (train / "model.safetensors").unlink()
    return "checkpoint-100"


def drop_config(train: Path) -> str:
    (train / "config.json").unlink()
    return "config.json"


def failing_script(train: Path) -> str:
    (train / "code").mkdir()
    (train / "code" / "inference.py").write_text(
        "def model_fn(model_dir):\n    raise RuntimeError('weights are on another disk')\n")
    return "weights are on another disk"


@pytest.mark.parametrize("breakage", [corrupt_weights, drop_tokenizer, drop_final_weights, drop_config,
                                      failing_script])
def test_a_broken_model_fails_here_and_nothing_is_written(tmp_path, capsys, breakage):
    train = training_output(tmp_path / "train")
    named = breakage(train)
    out = tmp_path / "model.tar.gz"
    assert main([str(train), str(out)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("package: error: ") and named in last and last.endswith("nothing written")
    assert str(train) in last or "inference.py" in last  # the user's path, not a scratch copy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


def test_command_line(tmp_path):
    """The documented command, as a process."""
    train = training_output(tmp_path / "train")
    out = tmp_path / "model.tar.gz"
    run = subprocess.run([sys.executable, "-m", "tools.package", str(train), str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"wrote {out}" in run.stdout
    assert set(members(out)) == SERVING_FILES | {"model.safetensors"}


def test_code_option_replaces_the_training_dirs_code_and_says_so(tmp_path, capsys):
    train = training_output(tmp_path / "train")
    (train / "code").mkdir()
    shutil.copyfile(SEED_SCRIPT, train / "code" / "inference.py")
    own = tmp_path / "own"
    own.mkdir()
    (own / "inference.py").write_text("# the server's defaults for every hook\n")
    out = tmp_path / "model.tar.gz"
    assert main([str(train), str(out), "--code", str(own)]) == 0
    assert f"code/ (replaced by {own})" in capsys.readouterr().out
    with tarfile.open(out) as tar:
        assert tar.extractfile("code/inference.py").read() == b"# the server's defaults for every hook\n"
