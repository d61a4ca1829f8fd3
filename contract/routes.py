"""What each path answers, on both stacks: the routes and their methods (the app registers
them, nginx's map is rendered from them), and the contract's own answers: ``/ping``,
``/execution-parameters``, the 404 and 405 texts, the headers SageMaker sends and expects."""

import re
from dataclasses import dataclass

from contract.settings import Settings
from handlers.errors import MethodNotAllowed, NotFound

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"  # echoed back only when sent
TARGET_MODEL = "X-Amzn-SageMaker-Target-Model"  # multi-model: which model /invocations runs
PING_OK = b'{"status": "healthy"}'
DEFAULT_MODEL = "model"  # a single-model endpoint's model: its name on the MMS stack and in /metrics
SERVE_MODEL = "X-Serve-Model"  # the app tells nginx's access log which loaded model answered; never sent on


@dataclass(frozen=True)
class Route:
    rule: str  # flask's rule
    endpoint: str  # the app's view function
    methods: tuple[str, ...]  # HEAD is answered wherever GET is
    multi_model: bool = False  # only on multi-model endpoints

    @property
    def pattern(self) -> str:
        return "^" + re.sub(r"<path:\w+>", ".+", self.rule) + "$"

    @property
    def allowed(self) -> str:
        return ", ".join(sorted({*self.methods, *(["HEAD"] if "GET" in self.methods else [])}))


ROUTES = (
    Route("/ping", "ping", ("GET",)),
    Route("/execution-parameters", "execution_parameters", ("GET",)),
    Route("/invocations", "invocations", ("POST",)),
    Route("/metrics", "metrics", ("GET",)),  # Prometheus (not SageMaker's: docker run, ECS, Kubernetes)
    Route("/models", "models", ("GET", "POST"), multi_model=True),
    Route("/models/<path:name>/invoke", "invoke", ("POST",), multi_model=True),
    Route("/models/<path:name>", "model", ("GET", "DELETE"), multi_model=True),
)


def route_of(path: str, multi_model: bool) -> Route | None:
    return next((r for r in ROUTES if re.match(r.pattern, path) and (multi_model or not r.multi_model)), None)


def not_found(path: str, multi_model: bool) -> NotFound:
    if route_of(path, multi_model=True) is not None:  # a multi-model path, on a single-model endpoint
        return NotFound("the model management API exists only on multi-model endpoints "
                        "(SAGEMAKER_MULTI_MODEL=true)")
    return NotFound(f"no such path: {path[:200]} (this server answers {served_paths(multi_model)})")


def served_paths(multi_model: bool) -> str:
    return "/ping, /execution-parameters, /invocations, /metrics and /models" if multi_model else \
        "/ping, /execution-parameters, /invocations and /metrics"


def not_allowed(method: str, path: str, route: Route) -> MethodNotAllowed:
    return MethodNotAllowed(f"{method[:32]} is not allowed on {path[:200]}; allowed: {route.allowed}")


def execution_parameters(settings: Settings) -> dict:
    """For batch transform. Concurrency: twice the engine threads of all workers (the cores on
    either stack by default: 1 worker x cores threads, or cores MMS workers x 1), enough requests
    in flight to keep every engine thread's batches full."""
    threads = settings.workers * (settings.handler.threads or 1)
    return {"MaxConcurrentTransforms": max(2, 2 * threads),
            "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": settings.max_payload_mb}


def nginx_methods_map(multi_model: bool) -> str:
    """The body of nginx's ``map $uri $allowed_methods`` (regexes are tried in this order)."""
    lines = []
    for route in ROUTES:
        if multi_model or not route.multi_model:
            key = route.rule if "<" not in route.rule else f"~{route.pattern}"
            lines.append(f'        "{key}" "{route.allowed}";')
    return "\n".join(lines)
