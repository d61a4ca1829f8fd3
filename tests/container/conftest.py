"""Container tests: the built image (env CPU_IMAGE) run with a real Docker daemon.

Without CPU_IMAGE the tests skip with the reason, except in CI (CI=true), where they fail:
.ci/docker.sh builds the image and exports CPU_IMAGE.
"""

import os

import pytest

from tests.container.docker_run import DOCKER, docker
from tests.container.local_mode import LocalMode, missing

# Facts measured by the tests, printed at the end of the run (cold start, ...).
MEASURED: dict[str, str] = {}


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: .ci/docker.sh must build the image and export CPU_IMAGE)",
                    pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cpu_image() -> str:
    image = os.environ.get("CPU_IMAGE", "").strip()
    if not image:
        _unavailable("CPU_IMAGE is not set: build the image (./build.sh --cpu) and run with "
                     "CPU_IMAGE=flan-t5-sagemaker:<version>-cpu")
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    except FileNotFoundError:
        _unavailable(f"no docker client ({DOCKER})")
    if info.returncode != 0:
        _unavailable(f"no Docker daemon reachable: {info.stderr.strip()[:200]}")
    if docker("image", "inspect", image, check=False).returncode != 0:
        _unavailable(f"image {image} is not in the local Docker daemon")
    return image


@pytest.fixture(scope="module")
def local_mode(cpu_image, tmp_path_factory):
    """The SDK's local mode on the image under test, one per test module."""
    reason = missing()
    if reason:
        _unavailable(reason)
    mode = LocalMode(cpu_image, tmp_path_factory.mktemp("local-mode"))
    try:
        yield mode
    finally:
        mode.remove_containers()  # the SDK's docker-compose leaves them exited


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("container measurements")
        for key, value in MEASURED.items():
            terminalreporter.write_line(f"{key}: {value}")
