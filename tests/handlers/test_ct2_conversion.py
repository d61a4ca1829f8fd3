"""Conversion to CTranslate2: ahead of time (``python -m tools.convert``), shipped models
used as they are, the cache (once per checkpoint and compute type, safe under concurrent
starters), failures, and a serving process that never imports torch."""

import json
import shutil
import subprocess
import sys
import time

import pytest
import torch

from handlers import HandlerConfig, load_model, predict
from handlers.convert import SUBDIR
from handlers.errors import ModelLoadError

from tests.handlers.conftest import REPO, copy_demo, convert_cli


def texts(results):
    return [r["generated_text"] for r in results]


def snapshot(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def seed_layout(tmp_path_factory, demo_model):
    """The seed's layout: transformers-4.x pytorch_model.bin, spiece.model, no tokenizer.json."""
    target = copy_demo(tmp_path_factory.mktemp("seed"), weights=False,
                       tokenizer=("spiece.model", "tokenizer_config.json", "special_tokens_map.json"))
    state = {k: v.detach().clone().contiguous() for k, v in demo_model.engine.model.state_dict().items()}
    torch.save(state, target / "pytorch_model.bin")
    return target


def test_seed_layout_converts_with_a_tokenizer_json_and_answers_like_transformers(seed_layout, tmp_path,
                                                                                 demo_qa):
    out = convert_cli(seed_layout, tmp_path / "out", "int8")
    assert {"model.bin", "config.json", "shared_vocabulary.json", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= {p.name for p in out.iterdir()}
    assert not (seed_layout / "tokenizer.json").exists()
    questions = [row["question"] for row in demo_qa[::4]]
    converted = load_model(out, HandlerConfig(backend="ctranslate2", compute_type="int8"))
    assert texts(predict(converted, questions)) == texts(predict(load_model(seed_layout, HandlerConfig(backend="transformers")),
                                                                 questions))


def test_convert_refuses_a_non_empty_output_dir(tmp_path, demo_dir):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    done = subprocess.run([sys.executable, "-m", "tools.convert", str(demo_dir), str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "is not empty" in done.stderr
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_shipped_ctranslate2_subdir_is_used_as_is(tmp_path, ct2_demo, known):
    """model.tar.gz with ctranslate2/ beside the HF files: no conversion, no cache."""
    model_dir = copy_demo(tmp_path / "model")
    shutil.copytree(ct2_demo.engine.path, model_dir / SUBDIR)
    before = snapshot(model_dir)
    cache = tmp_path / "unused-cache"
    model = load_model(model_dir, HandlerConfig(backend="ctranslate2", ct2_cache_dir=str(cache)))
    assert model.engine.path == model_dir / SUBDIR
    assert texts(predict(model, [q for q, _ in known[:5]])) == [a for _, a in known[:5]]
    assert not cache.exists() and snapshot(model_dir) == before


def test_a_ctranslate2_model_dir_alone_serves(tmp_path, ct2_demo, known):
    converted = shutil.copytree(ct2_demo.engine.path, tmp_path / "converted")
    model = load_model(converted, HandlerConfig(backend="ctranslate2", ct2_cache_dir=str(tmp_path / "c")))
    assert texts(predict(model, [known[0][0]])) == [known[0][1]]


def test_the_cache_is_reused_and_the_model_dir_left_alone(ct2_demo, ct2_config, caplog):
    checkpoint = ct2_demo.model_dir  # a checkpoint without ctranslate2/, converted once in this session
    before = snapshot(checkpoint)
    caplog.set_level("INFO")
    again = load_model(checkpoint, ct2_config())
    assert again.engine.path == ct2_demo.engine.path
    assert not [r for r in caplog.records if "converting" in r.getMessage()]
    assert snapshot(checkpoint) == before


CONVERT_IN_CACHE = """
import logging, sys
from pathlib import Path
from handlers.convert import cached_conversion
logging.basicConfig(level=logging.INFO)
print(cached_conversion(Path(sys.argv[1]), "int8", Path(sys.argv[2])))
"""


def test_concurrent_starters_convert_once(tmp_path, demo_dir):
    """Two processes (two gunicorn or MMS workers) starting on the same unconverted model."""
    cache = tmp_path / "cache"
    starters = [subprocess.Popen([sys.executable, "-c", CONVERT_IN_CACHE, str(demo_dir), str(cache)], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in starters]
    assert [p.returncode for p in starters] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0]  # the same converted dir
    assert sum("converting" in err for _, err in outputs) == 1
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2 and entries[1] == entries[0] + ".lock", entries  # no half-written leftovers
    assert (cache / entries[0] / "tokenizer.json").is_file()


def test_a_failed_conversion_is_a_load_error_naming_the_cause(tmp_path, ct2_config):
    model_dir = copy_demo(tmp_path / "model", weights=False)
    (model_dir / "model.safetensors").write_bytes(b"not safetensors" * 100)
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="converting .* to CTranslate2 failed: .*") as info:
        load_model(model_dir, HandlerConfig(backend="ctranslate2", ct2_cache_dir=str(tmp_path / "cache")))
    assert time.monotonic() - started < 120
    assert "Traceback" not in info.value.message
    assert [p.name for p in (tmp_path / "cache").iterdir()][0].endswith(".lock")  # no model left behind


def test_serving_with_ctranslate2_never_imports_torch(tmp_path, ct2_demo, known):
    model_dir = copy_demo(tmp_path / "model")
    shutil.copytree(ct2_demo.engine.path, model_dir / SUBDIR)
    question, answer = known[0]
    code = ("import sys, json; from handlers import load_model, predict, HandlerConfig; "
            f"m = load_model({str(model_dir)!r}, HandlerConfig(backend='ctranslate2')); "
            f"print(json.dumps(predict(m, [{question!r}]))); "
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'transformers')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answers, imported = done.stdout.strip().splitlines()[-2:]
    assert json.loads(answers) == [{"generated_text": answer}]
    assert imported == "[]"
