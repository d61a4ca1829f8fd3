import json

import pytest

from tests.procs import REPO


@pytest.fixture(scope="session")
def qa_pairs() -> list[dict]:
    lines = (REPO / "demo" / "data" / "biography_qa.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
