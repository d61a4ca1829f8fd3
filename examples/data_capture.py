"""A real-time endpoint that records its traffic to S3 (SageMaker data capture, what Model
Monitor reads): every request and every answer, JSON and CSV bodies kept as text. Not in local
mode: the SDK's local session has no data capture."""

from sagemaker.deserializers import JSONDeserializer
from sagemaker.model import Model
from sagemaker.model_monitor import DataCaptureConfig
from sagemaker.predictor import Predictor
from sagemaker.serializers import JSONSerializer


def capture_everything(destination_s3_uri):
    return DataCaptureConfig(
        enable_capture=True,
        sampling_percentage=100,  # every request; lower it for heavy traffic
        destination_s3_uri=destination_s3_uri,  # "s3://bucket/capture/"
        capture_options=["REQUEST", "RESPONSE"],
        json_content_types=["application/json", "application/jsonlines"],  # stored as text
        csv_content_types=["text/csv"],  # other types (text/event-stream) are stored base64-encoded
    )


def deploy_with_capture(image_uri, model_data, role, session, destination_s3_uri,
                        instance_type="ml.m5.xlarge", env=None):
    model = Model(image_uri=image_uri, model_data=model_data, role=role, env=env or {},
                  predictor_cls=Predictor, sagemaker_session=session)
    return model.deploy(
        initial_instance_count=1,
        instance_type=instance_type,
        data_capture_config=capture_everything(destination_s3_uri),
        serializer=JSONSerializer(),
        deserializer=JSONDeserializer(),
    )
