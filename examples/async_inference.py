"""Asynchronous inference: requests wait in a queue (bodies up to 1 GB, up to an hour each),
answers are written to S3. For long generations and large batches of questions."""

from sagemaker.async_inference import AsyncInferenceConfig, WaiterConfig
from sagemaker.deserializers import JSONDeserializer
from sagemaker.model import Model
from sagemaker.predictor import Predictor
from sagemaker.serializers import JSONSerializer

from examples.realtime import inference_ami  # the AMI a GPU instance type needs (driver >= 525)


def deploy_async(image_uri, model_data, role, session, output_path, instance_type="ml.m5.xlarge"):
    model = Model(image_uri=image_uri, model_data=model_data, role=role, predictor_cls=Predictor,
                  env={"SAGEMAKER_MODEL_SERVER_TIMEOUT": "3600"}, sagemaker_session=session)
    return model.deploy(  # an AsyncPredictor
        initial_instance_count=1,
        instance_type=instance_type,
        inference_ami_version=inference_ami(instance_type),
        async_inference_config=AsyncInferenceConfig(
            output_path=output_path,  # "s3://bucket/async-answers/"
            max_concurrent_invocations_per_instance=4,
        ),
        serializer=JSONSerializer(),
        deserializer=JSONDeserializer(),
    )


def ask_async(predictor, questions):
    response = predictor.predict_async({"inputs": questions})  # the body goes to S3 first
    answers = response.get_result(WaiterConfig(max_attempts=120, delay=5))
    return [answer["generated_text"] for answer in answers]
