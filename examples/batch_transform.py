"""Batch transform: answer a jsonlines file, one {"inputs": "..."} per line. The answers land
in OUTPUT_PATH/<input file name>.out, one line per input line, in the same order."""

from sagemaker.model import Model


def transform(image_uri, model_data, role, session, input_path, output_path,
              instance_type="ml.m5.xlarge", env=None):
    model = Model(image_uri=image_uri, model_data=model_data, role=role, env=env or {},
                  sagemaker_session=session)
    transformer = model.transformer(
        instance_count=1,
        instance_type=instance_type,
        output_path=output_path,  # "s3://bucket/answers/"
        strategy="MultiRecord",  # many lines per request, up to max_payload MB
        max_payload=6,
        assemble_with="Line",
        accept="application/jsonlines",
    )
    transformer.transform(
        data=input_path,  # "s3://bucket/questions/" (every file in it)
        content_type="application/jsonlines",
        split_type="Line",
        logs=False,  # with logs=True the SDK reads CloudWatch, which local mode has not
    )
    return transformer
