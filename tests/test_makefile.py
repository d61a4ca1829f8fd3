"""What `make serve` and `make test` would build on a fresh checkout (`make -n`: print, run
nothing): a newcomer's first `make serve` builds only what serving needs."""

import shutil
import subprocess

import pytest

from tests.procs import REPO


def dry_run(tmp_path, target: str) -> str:
    """``make -n TARGET`` in a copy of the Makefile and requirements, with no venv yet."""
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    shutil.copytree(REPO / "requirements", tmp_path / "requirements")
    run = subprocess.run(["make", "-n", target], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_serve_builds_the_runtime_venv_only(tmp_path):
    serve = dry_run(tmp_path, "serve")
    assert "pip install --disable-pip-version-check -q -r requirements/test.txt" in serve
    assert "-m serve" in serve
    assert ".venv-sdk" not in serve and "requirements/sdk.txt" not in serve


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_also_builds_the_sdk_venv(tmp_path):
    test = dry_run(tmp_path, "test")
    assert ".venv-sdk/bin/pip install --disable-pip-version-check -q -r requirements/sdk.txt" in test
    assert "-m pytest" in test
