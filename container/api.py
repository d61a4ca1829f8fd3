"""What the MMS stack answers on each path: SageMaker's contract in front of MMS.

Why a front at all (MMS 1.1.11 binds the public port itself in sagemaker-inference):
- ``/invocations`` with ``X-Amzn-SageMaker-Target-Model``: MMS ignores the header, and
  routes ``/invocations`` only to models named on its command line, never to one loaded
  through its management API.
- ``GET /models`` pages with ``page_size`` / ``next_page_token`` here; MMS takes ``limit``
  and answers ``nextPageToken``.
- MMS answers 200 to a load whose Python side failed, and ``/ping`` 200 while the default
  model is broken; it downloads ``http(s)://`` urls and loads any path on the disk.
- MMS parses form and multipart bodies itself; here every body reaches the handler as
  sent, with the caller's own headers.
- MMS cannot batch safely (see ``container.protocol``): the front batches each model's
  requests (``container.dispatch``).
"""

import json
import time
from urllib.parse import unquote

from container.front import Reply, Request
from container.mms_client import MmsUnavailable
from handlers.errors import BadRequest, GatewayTimeout, NotFound, ServiceUnavailable

TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length", "expect"}
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
ANSWER_GRACE_S = 0.5  # past its deadline a caller waits this much longer for the sender's verdict


class Api:
    def __init__(self, stack):
        """``stack``: ``settings``, ``default_model`` (single-model), ``registry`` (None until
        MMS is up), ``not_ready()`` (None, or why a request would fail now)."""
        self.stack, self.settings = stack, stack.settings

    def routes(self, path: str) -> dict:
        """``{method: handler}`` for ``path``; NotFound for a path this server does not answer."""
        if path == "/ping":
            return {"GET": self.ping}
        if path == "/execution-parameters":
            return {"GET": self.execution_parameters}
        if path == "/invocations":
            return {"POST": self.invocations}
        if path == "/models" or path.startswith("/models/"):
            if not self.settings.multi_model:
                raise NotFound("the model management API exists only on multi-model endpoints "
                               "(SAGEMAKER_MULTI_MODEL=true)")
            rest = path[len("/models/"):]
            if path == "/models":
                return {"GET": self.list_models, "POST": self.load}
            if rest.endswith("/invoke"):
                return {"POST": lambda request: self.invoke(request, unquote(rest[:-len("/invoke")]))}
            name = unquote(rest)
            return {"GET": lambda request: self.describe(name), "DELETE": lambda request: self.unload(name)}
        raise NotFound(f"no such path: {path[:200]}")

    def _registry(self):
        reason = self.stack.not_ready()
        if self.stack.registry is None or (reason and not self.settings.multi_model):
            raise ServiceUnavailable(reason or "the model server is starting")
        return self.stack.registry

    # Health.
    def ping(self, request: Request) -> Reply:
        reason = self.stack.not_ready()
        if reason is None:
            try:
                resp = self.stack.registry.client.ping()
                if resp.status != 200:
                    reason = f"the model server reports {resp.message()}"
            except MmsUnavailable as exc:
                reason = str(exc)
        if reason:
            raise ServiceUnavailable(reason)
        return Reply.json(200, {"status": "Healthy"})

    def execution_parameters(self, request: Request) -> Reply:
        return Reply.json(200, {"MaxConcurrentTransforms": max(2, self.settings.workers * 2),
                                "BatchStrategy": "MULTI_RECORD",
                                "MaxPayloadInMB": max(1, self.settings.max_payload_bytes // (1024 * 1024))})

    # Inference.
    def invocations(self, request: Request) -> Reply:
        if not self.settings.multi_model:
            return self.invoke(request, self.stack.default_model)
        target = request.headers.get(TARGET_MODEL)
        if not target:
            raise BadRequest(f"this is a multi-model endpoint: name the model in the {TARGET_MODEL} "
                             "header or POST /models/{name}/invoke")
        return self.invoke(request, target)

    def invoke(self, request: Request, name: str) -> Reply:
        started = time.monotonic()
        body = request.read_body()
        record = self._registry().get(name)
        if record is None:
            raise NotFound(f"model {name[:255]!r} is not loaded")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        deadline = started + self.settings.timeout_s
        future = record.queue.submit(headers, body, deadline)
        try:
            answer = future.result(timeout=deadline - time.monotonic() + ANSWER_GRACE_S)
        except TimeoutError:
            future.cancel()
            answer = None
        extra = {}
        if CUSTOM_ATTRIBUTES in request.headers:  # echoed only when sent
            extra[CUSTOM_ATTRIBUTES] = request.headers[CUSTOM_ATTRIBUTES]
        if answer is None:
            exc = GatewayTimeout(f"model {name!r} did not answer within {self.settings.timeout_s} s")
            return Reply(exc.status, exc.body(), headers=extra)
        return Reply(answer.status, answer.body, answer.content_type, extra)

    # Model management (multi-model endpoints).
    def load(self, request: Request) -> Reply:
        raw = request.read_body()
        registry = self._registry()
        if raw.strip():
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):
                raise BadRequest('POST /models takes a JSON body {"model_name": ..., "url": ...}') from None
            if not isinstance(body, dict):
                raise BadRequest('POST /models takes a JSON object {"model_name": ..., "url": ...}')
        else:  # MMS's query-parameter form
            body = {k: v[0] for k, v in request.query.items()}
        if "model_name" not in body or "url" not in body:
            raise BadRequest("POST /models needs model_name and url")
        record = registry.load(body["model_name"], body["url"])
        return Reply.json(200, {"status": f"model {record.name!r} loaded", **record.describe()})

    def list_models(self, request: Request) -> Reply:
        query = request.query
        size_raw = (query.get("page_size") or query.get("limit") or [str(DEFAULT_PAGE_SIZE)])[0]
        token_raw = (query.get("next_page_token") or ["0"])[0]
        if not size_raw.isdigit() or not 1 <= int(size_raw) <= MAX_PAGE_SIZE:
            raise BadRequest(f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}")
        if not token_raw.isdigit():
            raise BadRequest("invalid next_page_token")
        start, size = int(token_raw), int(size_raw)
        registry = self._registry()
        names = registry.names()
        models = [{"modelName": r.name, "modelUrl": r.url}
                  for r in map(registry.get, names[start:start + size]) if r is not None]
        out = {"models": models}
        if start + size < len(names):
            out["next_page_token"] = str(start + size)
        return Reply.json(200, out)

    def describe(self, name: str) -> Reply:
        record = self._registry().get(name)
        if record is None:
            raise NotFound(f"model {name[:255]!r} is not loaded")
        return Reply.json(200, record.describe())

    def unload(self, name: str) -> Reply:
        record = self._registry().unload(name)
        return Reply.json(200, {"status": f"model {record.name!r} unloaded"})
