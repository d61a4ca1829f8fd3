"""The SageMaker SDK's local mode, driven from the tests: what it needs (the SDK's own venv,
docker-compose, an offline telemetry opt-out), and one deploy as a process."""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.container.docker_run import docker
from tests.procs import REPO, free_port

SDK_PYTHON = REPO / ".venv-sdk" / "bin" / "python"
DRIVER = Path(__file__).with_name("sdk_local_mode.py")
# Local mode runs `docker-compose up IMAGE`, which pulls an image it does not find by name:
# the image under test gets a plain local tag.
LOCAL_TAG = "flan-t5-sagemaker-local-mode:test"
# The SDK's defaults file of the deploy guide: no telemetry (offline, every call would wait).
SDK_DEFAULTS = REPO / "examples" / "sagemaker-defaults.yaml"


def missing() -> str | None:
    """Why local mode cannot run here, or None."""
    if not SDK_PYTHON.exists():
        return f"{SDK_PYTHON} is missing: make venv (requirements/sdk.txt)"
    if shutil.which("docker-compose") is None:
        return "docker-compose is not installed (apt-get install docker-compose; .ci/docker.sh does)"
    return None


class LocalMode:
    def __init__(self, image: str, work: Path):
        docker("tag", image, LOCAL_TAG)
        self.image, self.work, self.runs = LOCAL_TAG, work, 0
        self.env = dict(os.environ, SAGEMAKER_USER_CONFIG_OVERRIDE=str(SDK_DEFAULTS),
                        SAGEMAKER_SUPPRESS_V2_WARNING="1", AWS_DEFAULT_REGION="us-east-1",
                        AWS_ACCESS_KEY_ID="local-mode", AWS_SECRET_ACCESS_KEY="local-mode",
                        AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
        self.env.pop("AWS_SESSION_TOKEN", None)
        self.env.pop("AWS_PROFILE", None)

    def run(self, scenario: str, model_data: Path | str, questions: list[str], *, env: dict | None = None,
            instance_type: str = "local", timeout: float = 600, aws: dict | None = None) -> dict:
        """One driver run (deploy, ask, delete); what it saw. ``model_data``: a local archive, or
        an s3:// URI the SDK downloads (``aws``: the environment that points it at moto)."""
        self.runs += 1
        work = self.work / f"{self.runs}-{scenario}"
        work.mkdir()
        (work / "questions.txt").write_text("\n".join(questions) + "\n")
        cmd = [str(SDK_PYTHON), str(DRIVER), scenario, "--image", self.image,
               "--model-data", model_data if isinstance(model_data, str) else f"file://{model_data}",
               "--port", str(free_port()),
               "--questions", str(work / "questions.txt"), "--out", str(work / "seen.json"),
               "--instance-type", instance_type, "--env", json.dumps(env or {}),
               "--work", str(work / "files")]
        with open(work / "driver.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env={**self.env, **(aws or {})}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the SDK's docker-compose with it
                proc.wait()
                code = "timeout"
        if code != 0:
            raise AssertionError(f"local mode {scenario} failed ({code}):\n"
                                 f"{(work / 'driver.log').read_text(errors='replace')[-6000:]}")
        seen = json.loads((work / "seen.json").read_text())
        seen["log"] = (work / "driver.log").read_text(errors="replace")  # the container's too
        return seen

    def remove_containers(self) -> None:
        ids = docker("ps", "-aq", "--filter", f"ancestor={self.image}").stdout.split()
        if ids:
            docker("rm", "-f", *ids)
