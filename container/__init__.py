"""multi-model-server as the app's backend: the backend the app calls (``backend``), the queues
and registry of loaded models, MMS's process and config, and what runs inside MMS's worker
processes (``handler_service``, ``mms_worker``). Also the images' entrypoint."""
