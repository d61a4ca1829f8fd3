"""What the server says of itself at ``/metrics``, beside what a load test measures outside:
prompts per engine call, queue depth, queue and engine time (see README.md, "Metrics").

``totals(url)`` is one scrape, each sample summed over its labels (models, statuses);
``between(earlier, later)`` turns two scrapes into the figures of the time between them.
Parsed with prometheus_client's own parser (requirements/cpu.txt; sdk.txt for locust's venv).
"""

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families


def totals(url: str, timeout: float = 5.0) -> dict[str, float]:
    """{sample name: value summed over its label sets}, histogram buckets left out; {} when
    the server does not answer (a load test goes on without its figures)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "le" not in sample.labels:
                out[sample.name] += sample.value
    return dict(out)


def ratio(later: dict, earlier: dict, name: str, scale: float = 1.0) -> float | None:
    """Mean of histogram ``name`` over the interval (its _sum over its _count), or None."""
    count = later.get(f"{name}_count", 0) - earlier.get(f"{name}_count", 0)
    total = later.get(f"{name}_sum", 0) - earlier.get(f"{name}_sum", 0)
    return total / count * scale if count > 0 else None


def between(earlier: dict, later: dict, depths: list[float] = ()) -> dict:
    """The server's own figures for the interval between two scrapes; ``depths``: queue-depth
    samples taken in it."""
    return {
        "requests": later.get("serve_request_duration_seconds_count", 0)  # requests for a model
        - earlier.get("serve_request_duration_seconds_count", 0),
        "prompts_per_call": ratio(later, earlier, "serve_batch_size"),
        "queue_ms": ratio(later, earlier, "serve_queue_duration_seconds", 1000),
        "engine_ms": ratio(later, earlier, "serve_engine_duration_seconds", 1000),
        "queue_depth_max": max(depths) if depths else None,
        "queue_depth_mean": sum(depths) / len(depths) if depths else None,
        "generated_tokens": later.get("serve_generated_tokens_total", 0)
        - earlier.get("serve_generated_tokens_total", 0),
    }
