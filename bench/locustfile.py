"""Load test with locust: the demo questions against a server (a URL) or a SageMaker endpoint.

    # a local container, `make serve`, or local mode (locust lives in .venv-sdk: make venv)
    .venv-sdk/bin/locust -f bench/locustfile.py --host http://127.0.0.1:8080 --headless -u 8 -r 8 -t 60s
    # a SageMaker endpoint, through boto3's invoke_endpoint (your AWS credentials and region)
    .venv-sdk/bin/locust -f bench/locustfile.py --endpoint-name NAME --headless -u 8 -r 8 -t 60s

Each user asks its next question as soon as the last is answered (closed loop), so -u is the
concurrency. Options (after -f): --stream (streamed answers: ``Accept: text/event-stream``, or
invoke_endpoint_with_response_stream; the time to the first token is reported as a request
of its own), --max-new-tokens N, --questions FILE (jsonlines with "question" and "answer";
default the demo model's), --check-answers (an answer other than the file's is a failure),
--region, --markdown (the summary as a Markdown table). --csv PREFIX writes CSV files.

With --host, the server's own figures come beside locust's: its /metrics is read every 2 s
(prompts per engine call, queue depth, queue and engine time; bench/server_metrics.py) and
summed up at the end. A SageMaker endpoint shows only its contract's paths: no /metrics.
"""

import json
import random
import sys
import time
from pathlib import Path

import gevent
from locust import User, events, task
from locust.clients import HttpSession
from locust.exception import LocustError
from locust.runners import WorkerRunner

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench import server_metrics  # noqa: E402

DEMO_QUESTIONS = REPO / "demo" / "data" / "biography_qa.jsonl"
SCRAPE_S = 2.0


@events.init_command_line_parser.add_listener
def add_options(parser):
    parser.add_argument("--endpoint-name", default="", help="SageMaker endpoint to invoke instead of --host")
    parser.add_argument("--region", default="", help="AWS region of the endpoint (default: boto3's)")
    parser.add_argument("--stream", action="store_true", help="ask for streamed answers")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="parameters.max_new_tokens")
    parser.add_argument("--questions", default=str(DEMO_QUESTIONS), help="jsonlines: question, answer")
    parser.add_argument("--check-answers", action="store_true", help="a wrong answer is a failure")
    parser.add_argument("--markdown", action="store_true", help="print the summary as a Markdown table")


class ServerWatch:
    """The server's /metrics, read every SCRAPE_S while the test runs."""

    def __init__(self, host: str):
        self.host, self.depths = host, []
        self.first = server_metrics.totals(host)
        self.greenlet = gevent.spawn(self._watch)
        self.figures: dict | None = None

    def _watch(self) -> None:
        while True:
            gevent.sleep(SCRAPE_S)
            now = server_metrics.totals(self.host)
            if now:
                self.depths.append(now.get("serve_queue_depth", 0.0))

    def stop(self) -> None:
        self.greenlet.kill()
        last = server_metrics.totals(self.host)
        if self.first and last:
            self.figures = server_metrics.between(self.first, last, self.depths)


@events.test_start.add_listener
def watch_server(environment, **_):
    options = environment.parsed_options
    if environment.host and not options.endpoint_name and not isinstance(environment.runner, WorkerRunner):
        environment.server_watch = ServerWatch(environment.host)


@events.test_stop.add_listener
def stop_watching(environment, **_):
    watch = getattr(environment, "server_watch", None)
    if watch is not None and watch.figures is None:
        watch.stop()


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


@events.quitting.add_listener
def print_markdown(environment, **_):
    watch = getattr(environment, "server_watch", None)
    server = watch.figures if watch is not None else None
    if server is not None:
        line = (f"server /metrics: {server['requests']:.0f} requests for a model answered, "
                f"{fmt(server['prompts_per_call'], '.2f')} "
                f"prompts per engine call, queue depth max {fmt(server['queue_depth_max'], '.0f')} "
                f"(mean {fmt(server['queue_depth_mean'])}), queue {fmt(server['queue_ms'])} ms, "
                f"engine {fmt(server['engine_ms'])} ms per request")
        print(line, file=sys.stderr)
    if not environment.parsed_options.markdown:
        return
    stats = environment.stats
    print("| request | requests | failures | req/s | p50 ms | p95 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for entry in [*stats.entries.values(), stats.total]:
        p50, p95, p99 = (entry.get_response_time_percentile(q) for q in (0.5, 0.95, 0.99))
        name = f"{entry.method} {entry.name}" if entry.method else entry.name
        print(f"| {name} | {entry.num_requests} | {entry.num_failures} | "
              f"{entry.total_rps:.1f} | {p50:.0f} | {p95:.0f} | {p99:.0f} |")
    if server is not None:
        print("\n| server (/metrics) | requests for a model | prompts per engine call | queue depth max | "
              "queue depth mean | queue ms | engine ms |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        print(f"| {environment.host} | {server['requests']:.0f} | {fmt(server['prompts_per_call'], '.2f')} | "
              f"{fmt(server['queue_depth_max'], '.0f')} | {fmt(server['queue_depth_mean'])} | "
              f"{fmt(server['queue_ms'])} | {fmt(server['engine_ms'])} |")


class WrongAnswer(Exception):
    """The endpoint answered, but not what the questions file expects."""


def streamed_text(lines) -> str:
    """The final text of a server-sent event stream (``data: {"generated_text": ...}``)."""
    text = None
    for line in lines:
        if line.startswith("data:"):
            event = json.loads(line[len("data:"):])
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error']}")
            text = event.get("generated_text", text)
    if text is None:
        raise RuntimeError("the stream ended without a generated_text event")
    return text


class Asker(User):
    """Asks the questions file's questions, one at a time, forever."""

    def on_start(self):
        options = self.environment.parsed_options
        self.stream, self.check = options.stream, options.check_answers
        self.max_new_tokens = options.max_new_tokens
        lines = Path(options.questions).read_text().splitlines()
        self.pairs = [json.loads(line) for line in lines if line.strip()]
        if options.endpoint_name:
            import boto3  # only for endpoints
            self.endpoint = options.endpoint_name
            self.runtime = boto3.session.Session().client("sagemaker-runtime", region_name=options.region or None)
        elif self.host:
            self.endpoint = None
            self.http = HttpSession(self.host, self.environment.events.request, self)
        else:
            raise LocustError("give --host URL (a server) or --endpoint-name NAME (a SageMaker endpoint)")

    def verify(self, pair: dict, text: str) -> None:
        if self.check and text != pair["answer"]:
            raise WrongAnswer(f"{pair['question']!r}: got {text!r}, expected {pair['answer']!r}")

    @task
    def ask(self):
        pair = random.choice(self.pairs)
        body = json.dumps({"inputs": pair["question"],
                           "parameters": {"max_new_tokens": self.max_new_tokens}})
        if self.endpoint:
            self.invoke_endpoint(pair, body)
        else:
            self.post(pair, body)

    def post(self, pair: dict, body: str) -> None:
        accept = "text/event-stream" if self.stream else "application/json"
        started = time.perf_counter()
        with self.http.post("/invocations", data=body, name="/invocations" + (" (stream)" if self.stream else ""),
                            headers={"Content-Type": "application/json", "Accept": accept},
                            stream=self.stream, catch_response=True) as response:
            try:
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
                if self.stream:
                    lines = response.iter_lines(decode_unicode=True)
                    first = next(lines, "")
                    self.first_token(started, len(first))
                    text = streamed_text([first, *lines])
                    # locust times a streamed response to its headers: time the whole answer
                    response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
                else:
                    text = response.json()[0]["generated_text"]
                self.verify(pair, text)
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the user
                response.failure(exc)

    def invoke_endpoint(self, pair: dict, body: str) -> None:
        started, size, failure = time.perf_counter(), 0, None
        try:
            if self.stream:
                response = self.runtime.invoke_endpoint_with_response_stream(
                    EndpointName=self.endpoint, Body=body, ContentType="application/json",
                    Accept="text/event-stream")
                parts = []
                for event in response["Body"]:
                    if not parts:
                        self.first_token(started, 0)
                    parts.append(event.get("PayloadPart", {}).get("Bytes", b""))
                data = b"".join(parts)
                text = streamed_text(data.decode().splitlines())
            else:
                response = self.runtime.invoke_endpoint(EndpointName=self.endpoint, Body=body,
                                                        ContentType="application/json",
                                                        Accept="application/json")
                data = response["Body"].read()
                text = json.loads(data)[0]["generated_text"]
            size = len(data)
            self.verify(pair, text)
        except Exception as exc:  # noqa: BLE001 - botocore's ModelError carries the server's body
            failure = exc
        self.environment.events.request.fire(
            request_type="invoke_endpoint" + ("_with_response_stream" if self.stream else ""),
            name=self.endpoint, response_time=(time.perf_counter() - started) * 1000,
            response_length=size, exception=failure, context={})

    def first_token(self, started: float, size: int) -> None:
        self.environment.events.request.fire(
            request_type="STREAM", name="first token", response_time=(time.perf_counter() - started) * 1000,
            response_length=size, exception=None, context={})
