"""A serverless endpoint: no instance to pick, billed per request; CPU only (the CPU image),
at most 6 GB of memory and a 4 MB request body. Cold starts reload the model: keep it small."""

from sagemaker.deserializers import JSONDeserializer
from sagemaker.model import Model
from sagemaker.predictor import Predictor
from sagemaker.serializers import JSONSerializer
from sagemaker.serverless import ServerlessInferenceConfig

SERVERLESS_ENV = {
    "SAGEMAKER_MAX_PAYLOAD_IN_MB": "4",  # serverless refuses bigger bodies before the server
    "SAGEMAKER_MODEL_SERVER_WORKERS": "1",  # one process: one copy of the model in memory
    "SAGEMAKER_MODEL_SERVER_TIMEOUT": "60",  # serverless answers within 60 s
}


def deploy_serverless(image_uri, model_data, role, session, memory_mb=3072, max_concurrency=4):
    model = Model(image_uri=image_uri, model_data=model_data, role=role, env=SERVERLESS_ENV,
                  predictor_cls=Predictor, sagemaker_session=session)
    return model.deploy(
        serverless_inference_config=ServerlessInferenceConfig(
            memory_size_in_mb=memory_mb,  # 1024-6144 in steps of 1024; about 3x the weights' size
            max_concurrency=max_concurrency,
        ),
        serializer=JSONSerializer(),
        deserializer=JSONDeserializer(),
    )
