"""moto's server (AWS's API on 127.0.0.1, from .venv-sdk: requirements/sdk.txt) and the
environment that points boto3 and the SageMaker SDK at it, with made-up credentials."""

import contextlib
import os
import subprocess
import time
from pathlib import Path

import requests

from tests.procs import REPO, free_port

MOTO_SERVER = REPO / ".venv-sdk" / "bin" / "moto_server"
REGION = "us-east-1"


@contextlib.contextmanager
def moto_server(log_dir: Path):
    """Yields (url, env): env is os.environ without the caller's AWS settings, plus moto's."""
    if not MOTO_SERVER.exists():
        raise RuntimeError(f"{MOTO_SERVER} is missing: run `make venv` (requirements/sdk.txt)")
    port = free_port()
    with open(log_dir / "moto.log", "wb") as log:
        proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url + "/moto-api/", timeout=2)
                break
            except requests.RequestException:
                assert proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ENDPOINT_URL=url, AWS_DEFAULT_REGION=REGION, AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_CONFIG_FILE=os.devnull,
                   AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true",
                   SAGEMAKER_SUPPRESS_V2_WARNING="1",
                   SAGEMAKER_USER_CONFIG_OVERRIDE=str(REPO / "examples" / "sagemaker-defaults.yaml"))
        yield url, env
    finally:
        proc.terminate()
        proc.wait(30)
