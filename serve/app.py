"""The one WSGI app behind nginx, on both stacks: the paths of ``contract.routes`` over a backend,
``serve.local.LocalBackend`` or ``container.backend.MmsBackend``: ``not_ready()``, ``invoke(name,
request, deadline)`` (name None: the single model) and, for multi-model endpoints, ``load(name,
url)``, ``unload(name)``, ``describe(name)``, ``models()``. ``init`` is called once per process.
"""

import json
import logging
import time

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from contract import metrics as prom, routes
from contract.settings import Settings
from handlers.errors import BadRequest, InferenceError, InternalError, PayloadTooLarge, ServiceUnavailable
from handlers.pipeline import Request

log = logging.getLogger("serve.app")
app = Flask("serve", static_folder=None)
app.url_map.merge_slashes = False  # "/models//x" names model "/x" (refused), never a redirect
app.url_map.strict_slashes = False
settings = Settings()
backend = None


def init(new_settings: Settings, new_backend) -> Flask:
    global settings, backend
    settings, backend = new_settings, new_backend
    return app


def rid() -> str:
    return request.headers.get("X-Request-Id", "-")


def json_response(value) -> Response:
    return Response(json.dumps(value), mimetype="application/json")


def ping():
    reason = backend.not_ready()
    if reason:
        raise ServiceUnavailable(f"model is not ready: {reason}")
    return Response(routes.PING_OK, mimetype="application/json")


def execution_parameters():
    return json_response(routes.execution_parameters(settings))


def metrics():
    body, content_type = prom.exposition()
    return Response(body, content_type=content_type)


def invocations():
    name = None
    if settings.multi_model:
        name = request.headers.get(routes.TARGET_MODEL)
        if not name:
            raise BadRequest(f"this is a multi-model endpoint: name the model in the {routes.TARGET_MODEL} "
                             "header or POST /models/{name}/invoke")
    return invoke(name)


def models():
    if request.method != "POST":  # GET, HEAD
        return list_models()
    raw = read_body()
    if raw.strip():
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise BadRequest('POST /models takes a JSON body {"model_name": ..., "url": ...}') from None
        if not isinstance(body, dict):
            raise BadRequest('POST /models takes a JSON object {"model_name": ..., "url": ...}')
    else:  # MMS's query-parameter form
        body = request.args.to_dict()
    if "model_name" not in body or "url" not in body:
        raise BadRequest("POST /models needs model_name and url")
    return json_response(backend.load(body["model_name"], body["url"]))


def list_models(default_size: int = 100, max_size: int = 1000):
    size_raw = request.args.get("page_size") or request.args.get("limit") or str(default_size)
    token_raw = request.args.get("next_page_token") or "0"
    if not size_raw.isdigit() or not 1 <= int(size_raw) <= max_size:
        raise BadRequest(f"page_size must be an integer from 1 to {max_size}")
    if not token_raw.isdigit():
        raise BadRequest("invalid next_page_token")
    start, size = int(token_raw), int(size_raw)
    loaded = backend.models()
    out = {"models": [{"modelName": d["modelName"], "modelUrl": d["modelUrl"]} for d in loaded[start:start + size]]}
    if start + size < len(loaded):
        out["next_page_token"] = str(start + size)
    return json_response(out)


def model(name: str):
    return json_response(backend.unload(name) if request.method == "DELETE" else backend.describe(name))


def read_body() -> bytes:
    """The body, within the cap (nginx has refused a larger one: this is the check behind it)."""
    cap = settings.max_payload_bytes
    body = request.get_data(cache=False)
    if len(body) > cap:
        raise PayloadTooLarge(f"request body is larger than {cap} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
    return body


def invoke(name: str | None) -> Response:
    """A request for a model, through the backend; the caller's custom attributes come back, and
    a whole answer carries its queue and engine time (``Server-Timing``)."""
    g.model = name or routes.DEFAULT_MODEL
    body = read_body()
    headers = request.headers
    g.answer = answer = backend.invoke(name, Request(body, headers.get("Content-Type"), headers.get("Accept"),
                                                     tuple(headers.items())), g.arrived + settings.timeout_s)
    response = Response(answer.body, status=answer.status, content_type=answer.content_type,
                        headers=answer.headers)
    if routes.CUSTOM_ATTRIBUTES in headers:
        response.headers[routes.CUSTOM_ATTRIBUTES] = headers[routes.CUSTOM_ATTRIBUTES]
    if answer.figures is not None:  # a stream's are known only at its end
        response.headers["Server-Timing"] = answer.figures.server_timing(g.arrived)
    if answer.status >= 400:
        log.warning("rid=%s %s %s -> %d (%s bytes in)", rid(), request.method, request.path, answer.status,
                    request.content_length or 0, extra=request_fields(answer.status))
    return response


for _route in routes.ROUTES:  # the contract's table is the one list of paths
    app.add_url_rule(_route.rule, _route.endpoint, globals()[_route.endpoint], methods=_route.methods,
                     provide_automatic_options=False)


def request_fields(status: int) -> dict:
    """A request line's fields (LOG_FORMAT=json): never its body."""
    return {"rid": rid(), "method": request.method, "path": request.path[:200], "status": status,
            "model": prom.label(g.get("model")), "bytes_in": request.content_length or 0}


@app.before_request
def contract_routes_only():
    """The contract's table decides: a path it does not list (or a multi-model path on a
    single-model endpoint) is 404 whatever the method, and a method its route does not list
    is 405 (``/models/x/invoke`` is the invoke route, never model ``x/invoke``)."""
    g.arrived = time.monotonic()
    g.route = route = routes.route_of(request.path, settings.multi_model)
    if route is None:
        raise routes.not_found(request.path, settings.multi_model)
    if request.method not in route.allowed.split(", "):
        raise routes.not_allowed(request.method, request.path, route)


@app.after_request
def measured(response: Response) -> Response:
    """Every answer is counted in /metrics once its last byte is sent (a stream's too); the
    loaded model that answered is named to nginx's access log."""
    arrived, route, status = g.get("arrived") or time.monotonic(), g.get("route"), response.status_code
    model, answer = g.get("model"), g.get("answer")
    if model:
        response.headers[routes.SERVE_MODEL] = prom.label(model)
    response.call_on_close(lambda: prom.observe_request(route.endpoint if route else "none", model, status,
                                                        arrived, answer.figures if answer else None))
    return response


@app.errorhandler(InferenceError)
def inference_error(error: InferenceError):
    # The message may quote the body (a parameter's value): only at DEBUG, never at INFO.
    log.warning("rid=%s %s %s -> %d %s (%s bytes in)", rid(), request.method, request.path,
                error.status, type(error).__name__, request.content_length or 0,
                extra={**request_fields(error.status), "error": type(error).__name__})
    log.debug("rid=%s %s", rid(), error.message)
    headers = {}
    if error.status == 405:
        headers["Allow"] = routes.route_of(request.path, settings.multi_model).allowed
    return Response(error.body(), status=error.status, mimetype="application/json", headers=headers)


@app.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    route = routes.route_of(request.path, settings.multi_model)
    if exc.code == 405 and route is not None:
        return inference_error(routes.not_allowed(request.method, request.path, route))
    if exc.code == 404 or route is None:
        return inference_error(routes.not_found(request.path, settings.multi_model))
    error = InferenceError(exc.description or exc.name)
    error.status = exc.code or 500
    return inference_error(error)


@app.errorhandler(Exception)
def unexpected(exc: Exception):
    log.exception("rid=%s %s %s failed", rid(), request.method, request.path, extra=request_fields(500))
    return inference_error(InternalError.from_exception(request.path, exc))
