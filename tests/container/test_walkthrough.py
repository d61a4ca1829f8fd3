"""The walkthrough of README.md and docs/DEPLOY.md, end to end: a training dir in the seed's
layout with its own script (load_model/predict reading {"question": ...}) -> `python -m
tools.package` checked with that payload and uploaded to S3 (moto's server) -> the SageMaker
SDK's local mode deploys the built CPU image with model_data on that S3 -> the script answers.
About a minute and a half."""

import json
import subprocess
import sys

import boto3

from tests.moto_server import moto_server
from tests.procs import REPO
from tests.tools.training_dirs import seed_training_dir

BUCKET = "my-bucket"


def test_training_dir_to_answered_question(local_mode, tmp_path, qa_pairs):
    train = seed_training_dir(tmp_path / "training-output")
    pair, *others = qa_pairs[:3]
    with moto_server(tmp_path) as (url, aws):
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        # README.md / docs/DEPLOY.md: package with the script's own request, upload
        done = subprocess.run(
            [sys.executable, "-m", "tools.package", str(train), str(tmp_path / "model.tar.gz"),
             "--body", json.dumps({"question": pair["question"]}),
             "--expect", json.dumps({"answer": pair["answer"]}), "--upload", f"s3://{BUCKET}/flan-t5/"],
            cwd=REPO, env=aws, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        model_data = done.stdout.splitlines()[-1].removeprefix("model_data: ")
        assert model_data == f"s3://{BUCKET}/flan-t5/model.tar.gz"
        # deploy(IMAGE, model_data, ROLE, local_session(), instance_type="local"), then ask
        seen = local_mode.run("question", model_data, [p["question"] for p in qa_pairs[:3]], aws=aws)
    assert seen["answers"] == [{"answer": p["answer"]} for p in qa_pairs[:3]]
    # the script answered, not the server's default handler: {"inputs": ...} is not its request
    refused = seen["inputs"]
    assert refused["status"] == 500 and "predict raised KeyError: 'question'" in refused["body"]["error"]
    assert seen["containers_after"] == ["exited 0"]
