"""Streamed answers from a real-time endpoint: the text as it is generated (server-sent
events), through boto3's invoke_endpoint_with_response_stream. Local mode cannot stream:
try it against `docker run` with curl -N -H 'Accept: text/event-stream' instead."""

import json

import boto3


def ask_streaming(endpoint_name, question, max_new_tokens=64):
    """Yields the answer's pieces as the endpoint sends them."""
    runtime = boto3.client("sagemaker-runtime")
    response = runtime.invoke_endpoint_with_response_stream(
        EndpointName=endpoint_name,
        ContentType="application/json",
        Accept="text/event-stream",
        Body=json.dumps({"inputs": question, "parameters": {"max_new_tokens": max_new_tokens}}),
    )
    pending = b""
    for event in response["Body"]:
        pending += event.get("PayloadPart", {}).get("Bytes", b"")
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            data = json.loads(line[len(b"data:"):])
            if "error" in data:  # a failure after the answer began: {"error": ..., "code": ...}
                raise RuntimeError(data["error"])
            if "token" in data:
                yield data["token"]["text"]
