"""Bad inputs to `python -m tools.package`: each gets one clear line on stderr and exit code 1,
and nothing is written (no archive, no partial file)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.handlers.conftest import REPO
from tests.tools.training_dirs import seed_training_dir, training_output


def missing_dir(tmp_path: Path) -> tuple[list[str], str]:
    return [str(tmp_path / "no-such-dir")], "no-such-dir does not exist"


def a_file(tmp_path: Path) -> tuple[list[str], str]:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    return [str(tmp_path / "model.safetensors")], "is not a directory"


def no_config(tmp_path: Path) -> tuple[list[str], str]:
    train = training_output(tmp_path / "train")
    (train / "config.json").unlink()
    return [str(train)], "has no config.json"


def no_final_weights(tmp_path: Path) -> tuple[list[str], str]:
    train = training_output(tmp_path / "train")
    (train / "model.safetensors").unlink()
    return [str(train)], "no model weights (model.safetensors or pytorch_model.bin) at the top of"


def corrupt_weights(tmp_path: Path) -> tuple[list[str], str]:
    train = training_output(tmp_path / "train")
    (train / "model.safetensors").write_bytes(b"\x00" * 64)
    return [str(train)], "model.safetensors"


def no_tokenizer(tmp_path: Path) -> tuple[list[str], str]:
    train = training_output(tmp_path / "train")
    for name in ("tokenizer.json", "spiece.model"):
        (train / name).unlink()
    return [str(train)], "no tokenizer in"


def unreadable_tokenizer(tmp_path: Path) -> tuple[list[str], str]:
    train = training_output(tmp_path / "train")
    for name in ("tokenizer.json", "spiece.model"):
        (train / name).write_text("not a tokenizer\n")
    return [str(train)], "cannot load the tokenizer from"


def script_fails_to_import(tmp_path: Path) -> tuple[list[str], str]:
    train = training_output(tmp_path / "train")
    (train / "code").mkdir()
    (train / "code" / "inference.py").write_text("import a_package_the_image_lacks\n")
    return [str(train)], "inference.py failed to import: ModuleNotFoundError: No module named " \
                         "'a_package_the_image_lacks'"


def script_fails_to_load(tmp_path: Path) -> tuple[list[str], str]:
    train = training_output(tmp_path / "train")
    (train / "code").mkdir()
    (train / "code" / "inference.py").write_text(
        "def model_fn(model_dir):\n    raise RuntimeError('weights are on another disk')\n")
    return [str(train)], "does not load: inference.py model_fn failed: inference.py model_fn raised " \
                         "RuntimeError: weights are on another disk"


def payload_the_script_does_not_expect(tmp_path: Path) -> tuple[list[str], str]:
    """The default check request ({"inputs": ...}) against a script reading {"question": ...}:
    the line says how to pass the script's own request."""
    train = seed_training_dir(tmp_path / "train")
    return [str(train)], "inference.py predict raised KeyError: 'question'; that is the default check " \
                         "request: give the one your script expects, as your callers send it: --body"


def own_payload_the_script_does_not_expect(tmp_path: Path) -> tuple[list[str], str]:
    train = seed_training_dir(tmp_path / "train")
    return [str(train), "--body", '{"query": "Where was Alnor Quarenard born?"}'], \
        'does not answer {"query": "Where was Alnor Quarenard born?"} (application/json): inference.py ' \
        "predict raised KeyError: 'question' (the script's traceback: --verbose)"


def unexpected_answer(tmp_path: Path) -> tuple[list[str], str]:
    train = seed_training_dir(tmp_path / "train")
    return [str(train), "--body", '{"question": "Where was Alnor Quarenard born?"}', "--expect",
            '{"answer": "Paris"}'], \
        """the answer is '{"answer": "Solvi"}', not the expected '{"answer": "Paris"}'"""


def body_file_missing(tmp_path: Path) -> tuple[list[str], str]:
    train = seed_training_dir(tmp_path / "train")
    return [str(train), "--body", f"@{tmp_path / 'request.json'}"], "request.json: No such file or directory"


@pytest.mark.parametrize("bad", [missing_dir, a_file, no_config, no_final_weights, corrupt_weights,
                                 no_tokenizer, unreadable_tokenizer, script_fails_to_import,
                                 script_fails_to_load, payload_the_script_does_not_expect,
                                 own_payload_the_script_does_not_expect, unexpected_answer,
                                 body_file_missing])
def test_one_clear_line_and_nothing_written(tmp_path, bad):
    args, named = bad(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    out = tmp_path / "model.tar.gz"
    done = subprocess.run([sys.executable, "-m", "tools.package", args[0], str(out), *args[1:]], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("package: error: ") and line.endswith("; nothing written"), line
    assert named in line, line
    assert "/tmp/package-" not in line  # the user's paths, not the scratch copies
    assert sorted(tmp_path.rglob("*")) == before  # no archive, no partial file, no scratch left


def test_no_final_weights_names_the_checkpoints(tmp_path):
    train = training_output(tmp_path / "train")
    (train / "model.safetensors").unlink()
    done = subprocess.run([sys.executable, "-m", "tools.package", str(train), str(tmp_path / "m.tar.gz")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "it holds checkpoint-100, checkpoint-50: pass one of them as TRAINING_DIR" in done.stderr


def test_output_dir_must_exist(tmp_path):
    train = training_output(tmp_path / "train")
    done = subprocess.run([sys.executable, "-m", "tools.package", str(train),
                           str(tmp_path / "no" / "m.tar.gz")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stderr) == (1, f"package: error: {tmp_path / 'no'} does not exist; "
                                                 "nothing written\n")
