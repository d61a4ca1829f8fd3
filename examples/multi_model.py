"""A multi-model endpoint: many fine-tuned models behind one endpoint (the CPU image). Each
model.tar.gz under the S3 prefix is loaded on its first request and unloaded when memory
runs short; a request names its model with target_model (X-Amzn-SageMaker-Target-Model)."""

from sagemaker.deserializers import JSONDeserializer
from sagemaker.multidatamodel import MultiDataModel
from sagemaker.predictor import Predictor
from sagemaker.serializers import JSONSerializer


def deploy_multi_model(image_uri, model_data_prefix, role, session, instance_type="ml.m5.xlarge"):
    endpoint = MultiDataModel(
        name="flan-t5-models",
        model_data_prefix=model_data_prefix,  # "s3://bucket/models/"
        image_uri=image_uri,
        role=role,
        env={"SAGEMAKER_MULTI_MODEL": "true"},
        predictor_cls=Predictor,
        sagemaker_session=session,
    )
    predictor = endpoint.deploy(initial_instance_count=1, instance_type=instance_type,
                                serializer=JSONSerializer(), deserializer=JSONDeserializer())
    return endpoint, predictor


def add_model(endpoint, model_data, name):
    """Copy a model.tar.gz under the prefix as NAME (e.g. "support-v2.tar.gz")."""
    endpoint.add_model(model_data_source=model_data, model_data_path=name)


def ask_model(predictor, name, question):
    answers = predictor.predict({"inputs": question}, target_model=name)
    return answers[0]["generated_text"]
