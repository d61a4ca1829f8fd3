"""A packaged archive of the t5-small shape (60M parameters, random weights: bench/models.py)
starts the flask stack on CTranslate2 with no conversion: its log names the shipped
ctranslate2/, the conversion cache stays empty, and it answers what the package check answered
from that copy."""

import json
import re
import subprocess
import sys

from bench.models import build_t5
from tests.procs import REPO, Server
from tools.package import DEFAULT_QUESTION


def test_t5_small_shape_archive_starts_on_ctranslate2_without_converting(tmp_path):
    out = tmp_path / "model.tar.gz"
    train = build_t5(tmp_path / "train")
    done = subprocess.run([sys.executable, "-m", "tools.package", str(train), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    converted = re.search(r"^converted: ctranslate2/ \(int8, ([\d,]+) bytes: ", done.stdout, re.M)
    assert converted and 60e6 < int(converted[1].replace(",", "")) < 100e6, done.stdout  # ~1 byte a weight
    checked = re.search(r"^answer from ctranslate2/ \(int8\): (.*)$", done.stdout, re.M)[1]

    cache = tmp_path / "ct2-cache"
    log = tmp_path / "serve.log"
    env = {"INFERENCE_BACKEND": "ctranslate2", "CT2_CACHE_DIR": str(cache)}
    with Server(out, env=env, log_path=log) as srv:
        response = srv.post(json.dumps({"inputs": DEFAULT_QUESTION}))
        assert response.status_code == 200, response.text
        assert response.text == checked
        assert srv.stop() == 0
    text = log.read_text()
    shipped = r"handlers\.ct2_engine: loaded /\S+/ctranslate2 with CTranslate2 \(int8 on cpu"
    assert re.search(shipped, text), text
    assert "converting" not in text
    assert not cache.exists()
