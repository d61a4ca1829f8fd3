"""A model dir the server may not read (SageMaker local mode mounts a root-only dir; an image
run with --user then cannot list it): one clear log line naming the path, the uid and the fix,
then exit 2 - never a traceback. And a model.tar.gz given as the model dir is served."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contract.settings import Settings, first_unreadable
from tests.procs import DEMO_MODEL, REPO

OTHER_UID = 65534  # nobody: owns the model where the test runs as root
# Root reads everything through these capabilities; without them it is held to the file modes,
# as in a container whose capabilities are dropped (Kubernetes: drop ALL).
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def deny_read(path: Path, mode: int) -> None:
    """``path`` becomes unreadable to the server: another uid's, mode ``mode`` (as root), or
    mode 000 (as any other user, who owns it)."""
    if os.geteuid() == 0:
        os.chown(path, OTHER_UID, OTHER_UID)
        path.chmod(mode)
    else:
        path.chmod(0)


def serve_without_read_rights(model_dir: Path) -> subprocess.CompletedProcess:
    """``python -m serve --model-dir MODEL_DIR``, as root without the capabilities that
    bypass file modes (as another user, plainly)."""
    prefix = NO_DAC if os.geteuid() == 0 else []
    return subprocess.run([*prefix, sys.executable, "-m", "serve", "--model-dir", str(model_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, SERVE_BIND_HOST="127.0.0.1"))


@pytest.fixture
def model_copy(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    yield model
    for path in (model, *model.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)  # so that pytest may remove it


def assert_one_clear_line(run: subprocess.CompletedProcess, path: Path) -> None:
    assert run.returncode == 2, run.stderr
    output = run.stdout + run.stderr
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1, output
    assert f"cannot read {path} as uid {os.geteuid()} (gid {os.getegid()})" in errors[0]
    assert "run the container as root" in errors[0] and "chmod -R a+rX" in errors[0]


def test_model_dir_only_its_owner_may_read(model_copy):
    deny_read(model_copy, 0o700)
    assert_one_clear_line(serve_without_read_rights(model_copy), model_copy)


def test_weights_only_their_owner_may_read(model_copy):
    """safetensors may write 0600 files: the dir lists, the weights do not open."""
    weights = model_copy / "model.safetensors"
    deny_read(weights, 0o600)
    assert_one_clear_line(serve_without_read_rights(model_copy), weights)


def test_first_unreadable(model_copy):
    assert first_unreadable(str(model_copy)) is None
    assert first_unreadable(str(model_copy / "missing")) is None  # the loader names it
    assert first_unreadable(str(REPO / "demo" / "model.tar.gz")) is None


def test_a_model_tar_gz_is_the_model_not_an_empty_dir(tmp_path):
    archive = REPO / "demo" / "model.tar.gz"
    assert Settings.from_env({}, str(archive)).model_dir == str(archive)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".keep").touch()
    default = {"SM_DEFAULT_MODEL_DIR": str(DEMO_MODEL)}
    assert Settings.from_env(default, str(empty)).model_dir == str(DEMO_MODEL)
    assert Settings.from_env(default, str(tmp_path / "missing")).model_dir == str(DEMO_MODEL)
