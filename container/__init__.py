"""The multi-model stack: multi-model-server (Java) behind a small front that keeps the
SageMaker contract. Entry point: ``container.mms_server.run`` (see its module doc)."""
