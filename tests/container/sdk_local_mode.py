"""Run with the SageMaker SDK's venv (.venv-sdk) by test_sdk_local_mode.py: deploys the image
with the SDK's local mode through the deploy guide's own code (examples/), asks what a
scenario asks, deletes the endpoint, and writes what it saw as JSON to --out.

    .venv-sdk/bin/python tests/container/sdk_local_mode.py SCENARIO --image IMAGE \
        --model-data file:///abs/model.tar.gz --port PORT --questions FILE --out FILE [options]
"""

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from examples import batch_transform, realtime  # noqa: E402
from examples.local import local_session  # noqa: E402
from sagemaker.local import image as local_image  # noqa: E402

ROLE = "arn:aws:iam::111122223333:role/SageMakerRole"  # local mode never uses it
_create_docker_host = local_image._SageMakerContainer._create_docker_host


def _create_loopback_docker_host(self, *args, **kwargs):
    """Local mode publishes serving_port on every interface of the host (and the daemon's
    --ip does not reach compose's own network): here it stays on 127.0.0.1."""
    host = _create_docker_host(self, *args, **kwargs)
    host["ports"] = [f"127.0.0.1:{port}" for port in host.get("ports", [])]
    return host


local_image._SageMakerContainer._create_docker_host = _create_loopback_docker_host


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def containers(image: str, *, running: bool = False) -> list[str]:
    return docker("ps", *([] if running else ["-a"]), "--filter", f"ancestor={image}",
                  "--format", "{{.Names}}").split()


def states(names: list[str]) -> list[str]:
    """"exited 0", "running 0", ... for each container."""
    if not names:
        return []
    return docker("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", *names).splitlines()


def invoke(session, endpoint_name: str, body, content_type="application/json", **extra) -> dict:
    """The SDK's local runtime client (what Predictor uses), with the raw response."""
    response = session.sagemaker_runtime_client.invoke_endpoint(
        EndpointName=endpoint_name, Body=body if isinstance(body, (bytes, str)) else json.dumps(body),
        ContentType=content_type, Accept="application/json", **extra)
    raw = response["Body"]
    data = raw.read()
    return {"status": raw.status, "body": json.loads(data) if data.startswith((b"[", b"{")) else data.decode(),
            "custom_attributes": raw.headers.get("X-Amzn-SageMaker-Custom-Attributes")}


def realtime_probes(predictor, session, questions: list[str], port: int) -> dict:
    name = predictor.endpoint_name
    return {
        "one": realtime.ask(predictor, questions[0]),
        "many": realtime.ask(predictor, questions[1:5]),
        "one_token": realtime.ask(predictor, questions[5], max_new_tokens=1),
        "csv": realtime.ask_csv(predictor, questions[6:9]),
        "traced": realtime.ask_traced(predictor, questions[9], "trace_id=local-1"),
        "echo": invoke(session, name, {"inputs": questions[9]}, CustomAttributes="trace_id=local-2"),
        "question_context": invoke(session, name, {"question": questions[10], "context": "the demo biographies"}),
    }


def script_probes(predictor, session, questions: list[str], port: int) -> dict:
    """A model.tar.gz with code/inference.py: the script answers (and fails) its own way."""
    name = predictor.endpoint_name
    return {
        "one": realtime.ask(predictor, questions[0]),
        "many": realtime.ask(predictor, questions[1:5]),
        "raw": invoke(session, name, {"inputs": questions[5]}),
        "question_context": invoke(session, name, {"question": questions[10], "context": "the demo biographies"}),
    }


def env_probes(predictor, session, questions: list[str], port: int) -> dict:
    """Model(env=...) with a 1 s timeout, a 1 MiB payload cap, 2 workers, 4 input tokens."""
    name = predictor.endpoint_name
    slow = {"inputs": questions[:96], "parameters": {"min_new_tokens": 500, "max_new_tokens": 500,
                                                     "num_beams": 4}}
    seen = {
        "too_large": invoke(session, name, b"x" * (1024 * 1024 + 1), "text/plain"),
        "truncated": invoke(session, name, {"inputs": questions[0]}),
        "timeout": invoke(session, name, slow),
        "execution_parameters": json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/execution-parameters", timeout=10).read()),
    }
    for _ in range(60):  # the slow batch still runs on its worker; the server keeps serving
        seen["after_timeout"] = invoke(session, name, {"inputs": questions[1]})
        if seen["after_timeout"]["status"] == 200:
            break
        time.sleep(2)
    return seen


def question_probes(predictor, session, questions: list[str], port: int) -> dict:
    """A model.tar.gz whose own script reads {"question": ...} and answers {"answer": ...}."""
    return {
        "answers": [predictor.predict({"question": q}) for q in questions[:3]],
        "inputs": invoke(session, predictor.endpoint_name, {"inputs": questions[0]}),
    }


PROBES = {"realtime": realtime_probes, "script": script_probes, "env": env_probes, "question": question_probes}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=[*PROBES, "transform"])
    parser.add_argument("--image", required=True)
    parser.add_argument("--model-data", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--questions", type=Path, required=True, help="one question per line")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--instance-type", default="local")
    parser.add_argument("--env", default="{}", help="Model(env=...) as JSON")
    parser.add_argument("--work", type=Path, help="transform: dir for the input and output files")
    args = parser.parse_args()
    questions = args.questions.read_text().splitlines()
    session = local_session(serving_port=args.port)
    env = json.loads(args.env)
    seen: dict = {}
    before = set(containers(args.image))
    if args.scenario == "transform":
        inputs, outputs = args.work / "input", args.work / "output"
        inputs.mkdir(parents=True)
        (inputs / "questions.jsonl").write_text("".join(json.dumps({"inputs": q}) + "\n" for q in questions))
        batch_transform.transform(args.image, args.model_data, ROLE, session, f"file://{inputs}",
                                  f"file://{outputs}", instance_type=args.instance_type, env=env)
        lines = (outputs / "questions.jsonl.out").read_text().splitlines()
        seen["answers"] = [json.loads(line) for line in lines if line.strip()]
    else:
        predictor = realtime.deploy(args.image, args.model_data, ROLE, session,
                                    instance_type=args.instance_type, env=env)
        try:
            seen["containers_while_up"] = [n for n in containers(args.image, running=True)
                                           if n not in before]
            seen.update(PROBES[args.scenario](predictor, session, questions, args.port))
        finally:
            predictor.delete_endpoint()
    seen["containers_after"] = states([n for n in containers(args.image) if n not in before])
    args.out.write_text(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
