"""A real-time endpoint serving your model.tar.gz, and the ways to ask it.

With sagemaker.Session() and instance_type="ml.m5.xlarge" (the GPU image: "ml.g5.xlarge")
this creates a SageMaker endpoint; with local_session() and instance_type="local" (or
"local_gpu") the SDK runs the same image here, and model_data may be "file://...".
"""

from sagemaker.deserializers import CSVDeserializer, JSONDeserializer
from sagemaker.model import Model
from sagemaker.predictor import Predictor
from sagemaker.serializers import CSVSerializer, JSONSerializer

# The GPU image is CUDA 12: it needs an NVIDIA driver >= 525. SageMaker's GPU hosts (ml.g4dn,
# ml.g5, ml.p3, ml.p4d) run driver 470 unless the endpoint asks for a newer AMI: this one has
# driver 550 (CUDA 12.4). "al2-ami-sagemaker-inference-gpu-2-1" (driver 535) works too.
GPU_AMI = "al2-ami-sagemaker-inference-gpu-3-1"


def inference_ami(instance_type):
    """The AMI for a GPU instance type (ml.g*, ml.p*); None for CPU types and local mode."""
    family = instance_type.split(".")[1] if instance_type.startswith("ml.") else ""
    return GPU_AMI if family[:1] in ("g", "p") else None


def deploy(image_uri, model_data, role, session, instance_type="ml.m5.xlarge", env=None):
    model = Model(
        image_uri=image_uri,
        model_data=model_data,  # "s3://bucket/path/model.tar.gz"
        role=role,
        env=env or {},  # server settings, e.g. {"SAGEMAKER_MODEL_SERVER_TIMEOUT": "30"}
        predictor_cls=Predictor,  # without it, deploy() returns None
        sagemaker_session=session,
    )
    return model.deploy(
        initial_instance_count=1,
        instance_type=instance_type,
        inference_ami_version=inference_ami(instance_type),  # a driver for the GPU image
        serializer=JSONSerializer(),
        deserializer=JSONDeserializer(),
    )


def ask(predictor, questions, **parameters):
    """Answers to one question (a string) or several (a list), e.g. ask(p, q, max_new_tokens=32)."""
    request = {"inputs": questions}
    if parameters:
        request["parameters"] = parameters
    return [answer["generated_text"] for answer in predictor.predict(request)]


def ask_csv(predictor, questions):
    """text/csv: one question per line in, one answer per row out."""
    csv = Predictor(predictor.endpoint_name, predictor.sagemaker_session,
                    serializer=CSVSerializer(), deserializer=CSVDeserializer())
    return [row[0] for row in csv.predict([[question] for question in questions])]


def ask_traced(predictor, question, trace):
    """X-Amzn-SageMaker-Custom-Attributes reaches the server, which echoes it back."""
    answers = predictor.predict({"inputs": question}, custom_attributes=trace)
    return answers[0]["generated_text"]
