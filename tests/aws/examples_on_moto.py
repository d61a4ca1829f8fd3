"""Run with the SDK's venv (.venv-sdk) by test_on_moto.py, with AWS_ENDPOINT_URL pointing at a
moto server: the deploy guide's code for what local mode cannot run (serverless, async,
multi-model, autoscaling, data capture, a GPU instance type's AMI) makes its SageMaker, S3 and Application
Auto Scaling calls, which
botocore checks against the real API's shapes; writes what AWS (moto) then describes, as
JSON, to the file named by the first argument."""

import functools
import json
import sys
from pathlib import Path

import boto3
import sagemaker

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from examples import async_inference, autoscaling, data_capture, multi_model, realtime, serverless  # noqa: E402

IMAGE = "111122223333.dkr.ecr.us-east-1.amazonaws.com/flan-t5-sagemaker:0.1.0-cpu"
GPU_IMAGE = "111122223333.dkr.ecr.us-east-1.amazonaws.com/flan-t5-sagemaker:0.1.0-gpu"
ROLE = "arn:aws:iam::111122223333:role/SageMakerRole"
BUCKET = "flan-t5-deploy-guide"
# moto's endpoints are InService at once: the SDK need not wait 30 s before looking.
sagemaker.Session.wait_for_endpoint = functools.partialmethod(sagemaker.Session.wait_for_endpoint, poll=1)


def described(sm, endpoint_name: str) -> dict:
    endpoint = sm.describe_endpoint(EndpointName=endpoint_name)
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variant = config["ProductionVariants"][0]
    model = sm.describe_model(ModelName=variant["ModelName"])
    return {"status": endpoint["EndpointStatus"], "variant": variant, "async": config.get("AsyncInferenceConfig"),
            "capture": config.get("DataCaptureConfig"), "container": model["PrimaryContainer"]}


def main() -> int:
    s3, sm = boto3.client("s3"), boto3.client("sagemaker")
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(REPO / "demo" / "model.tar.gz"), BUCKET, "flan-t5/model.tar.gz")
    model_data = f"s3://{BUCKET}/flan-t5/model.tar.gz"
    session = sagemaker.Session(default_bucket=BUCKET)
    seen = {}

    predictor = serverless.deploy_serverless(IMAGE, model_data, ROLE, session)
    seen["serverless"] = described(sm, predictor.endpoint_name)

    predictor = async_inference.deploy_async(IMAGE, model_data, ROLE, session, f"s3://{BUCKET}/async/")
    seen["async"] = {**described(sm, predictor.endpoint_name), "predictor": type(predictor).__name__}

    predictor = data_capture.deploy_with_capture(IMAGE, model_data, ROLE, session, f"s3://{BUCKET}/capture/")
    seen["data_capture"] = described(sm, predictor.endpoint_name)

    # GPU instance types (moto's list has no ml.g5): the AMI the GPU image needs
    predictor = realtime.deploy(GPU_IMAGE, model_data, ROLE, session, instance_type="ml.g4dn.xlarge")
    seen["realtime_gpu"] = described(sm, predictor.endpoint_name)
    predictor = async_inference.deploy_async(GPU_IMAGE, model_data, ROLE, session, f"s3://{BUCKET}/async-gpu/",
                                             instance_type="ml.g4dn.12xlarge")
    seen["async_gpu"] = described(sm, predictor.endpoint_name)

    endpoint, predictor = multi_model.deploy_multi_model(IMAGE, f"s3://{BUCKET}/models/", ROLE, session)
    multi_model.add_model(endpoint, model_data, "support-v2.tar.gz")
    seen["multi_model"] = {**described(sm, predictor.endpoint_name), "models": list(endpoint.list_models()),
                           "objects": [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="models/")
                                       .get("Contents", [])]}

    autoscaling.autoscale(predictor.endpoint_name, max_instances=6)
    scaling = boto3.client("application-autoscaling")
    seen["autoscaling"] = {
        "targets": scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"],
        "policies": scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"],
        "endpoint": predictor.endpoint_name,
    }
    Path(sys.argv[1]).write_text(json.dumps(seen, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
