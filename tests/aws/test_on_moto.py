"""What local mode cannot run, against moto's server (AWS's API, on 127.0.0.1): the deploy
guide's serverless, asynchronous, multi-model, autoscaling and data-capture code, and the load
test's endpoint mode (boto3 invoke_endpoint). moto checks the calls, not the serving: the server
side of those is tested over HTTP (tests/container, tests/mms)."""

import csv
import json
import subprocess

import pytest
import requests

from tests.moto_server import REGION, moto_server
from tests.procs import REPO

SDK_BIN = REPO / ".venv-sdk" / "bin"


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """A moto server and the environment that points the AWS SDKs at it."""
    if not (SDK_BIN / "moto_server").exists():
        pytest.fail(f"{SDK_BIN / 'moto_server'} is missing: run `make venv` (requirements/sdk.txt)")
    with moto_server(tmp_path_factory.mktemp("moto")) as (url, env):
        yield url, env


def test_guide_examples_make_the_intended_aws_calls(moto, tmp_path):
    _, env = moto
    out = tmp_path / "seen.json"
    run = subprocess.run([str(SDK_BIN / "python"), "tests/aws/examples_on_moto.py", str(out)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(out.read_text())

    serverless = seen["serverless"]
    assert serverless["variant"]["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 4}
    assert serverless["container"]["Environment"] == {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "4",
                                                      "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                                                      "SAGEMAKER_MODEL_SERVER_TIMEOUT": "60"}

    asynchronous = seen["async"]
    assert asynchronous["predictor"] == "AsyncPredictor"
    assert "InferenceAmiVersion" not in asynchronous["variant"]  # ml.m5: a CPU instance takes the default
    # GPU instance types ask for an AMI whose driver runs the CUDA 12 image (SageMaker's default is 470)
    for name, instance_type in (("realtime_gpu", "ml.g4dn.xlarge"), ("async_gpu", "ml.g4dn.12xlarge")):
        assert seen[name]["variant"]["InstanceType"] == instance_type
        assert seen[name]["variant"]["InferenceAmiVersion"] == "al2-ami-sagemaker-inference-gpu-3-1"
    assert asynchronous["async"]["OutputConfig"]["S3OutputPath"] == "s3://flan-t5-deploy-guide/async/"
    assert asynchronous["async"]["ClientConfig"] == {"MaxConcurrentInvocationsPerInstance": 4}
    assert asynchronous["container"]["Environment"]["SAGEMAKER_MODEL_SERVER_TIMEOUT"] == "3600"

    capture = seen["data_capture"]
    assert capture["status"] == "InService" and capture["variant"]["InstanceType"] == "ml.m5.xlarge"
    assert capture["capture"] == {
        "EnableCapture": True, "InitialSamplingPercentage": 100,
        "DestinationS3Uri": "s3://flan-t5-deploy-guide/capture/",
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"],
                                     "JsonContentTypes": ["application/json", "application/jsonlines"]},
    }

    multi = seen["multi_model"]
    assert multi["container"]["Mode"] == "MultiModel"
    assert multi["container"]["ModelDataUrl"] == "s3://flan-t5-deploy-guide/models/"
    assert multi["container"]["Environment"] == {"SAGEMAKER_MULTI_MODEL": "true"}
    assert multi["models"] == ["support-v2.tar.gz"]
    assert multi["objects"] == ["models/support-v2.tar.gz"]

    scaling = seen["autoscaling"]
    resource = f"endpoint/{scaling['endpoint']}/variant/AllTraffic"
    [target] = scaling["targets"]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (resource, 1, 6)
    [policy] = scaling["policies"]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["ResourceId"] == resource and tracking["TargetValue"] == 600.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == \
        "SageMakerVariantInvocationsPerInstance"


def test_locust_endpoint_mode(moto, tmp_path):
    """--endpoint-name: boto3 invoke_endpoint, reported per endpoint. moto answers every new
    request body with the next queued result (here, answers in our JSON shape)."""
    url, env = moto
    results = [{"Body": json.dumps([{"generated_text": "canned"}]), "ContentType": "application/json",
                "InvokedProductionVariant": "AllTraffic", "CustomAttributes": ""}] * 1000
    requests.post(url + "/moto-api/static/sagemaker/endpoint-results", timeout=10,
                  json={"results": results, "region": REGION}).raise_for_status()
    prefix = tmp_path / "report"
    run = subprocess.run([str(SDK_BIN / "locust"), "-f", "bench/locustfile.py", "--headless",
                          "--endpoint-name", "flan-t5-endpoint", "--region", REGION, "-u", "2", "-r", "2",
                          "-t", "3s", "--only-summary", "--csv", str(prefix)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}
    row = rows[("invoke_endpoint", "flan-t5-endpoint")]
    assert int(row["Request Count"]) > 2 and int(row["Failure Count"]) == 0
