"""Local mode: the SDK runs the image on this machine with docker-compose, as an endpoint
would run it. Pass this session and instance_type="local" (or "local_gpu")."""

from sagemaker.local import LocalSession


def local_session(serving_port=8080):
    session = LocalSession()
    session.config = {"local": {"serving_port": serving_port}}  # the host port of /ping, /invocations
    return session
