"""``GET /metrics`` of a running server, parsed with prometheus_client's own parser."""

from prometheus_client.parser import text_string_to_metric_families

from tests.procs import http_request


class Samples(dict):
    """{(sample name, ((label, value), ...)): value} of one scrape."""

    def value(self, name: str, **labels) -> float:
        """The sample with exactly these labels (0 when absent, as Prometheus reads a missing counter)."""
        return self.get((name, tuple(sorted(labels.items()))), 0.0)

    def series(self, name: str) -> dict[tuple, float]:
        return {labels: v for (n, labels), v in self.items() if n == name}

    def names(self) -> set[str]:
        return {name for name, _ in self}

    def minus(self, before: "Samples") -> "Samples":
        return Samples({key: value - before.get(key, 0.0) for key, value in self.items()})


def scrape(port: int) -> Samples:
    answer = http_request(port, "GET", "/metrics", timeout=30)
    assert answer.status == 200, answer.body[:300]
    assert answer.headers["content-type"].startswith("text/plain; version="), answer.headers
    samples = Samples()
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"{key} twice in one scrape"
            samples[key] = sample.value
    return samples
