"""The shipped demo model (demo/model, demo/model.tar.gz, demo/data/biography_qa.jsonl)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from demo.evaluate import exact_match, load_qa  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "demo"
MODEL_DIR = DEMO / "model"
DATA = DEMO / "data" / "biography_qa.jsonl"
TAR = DEMO / "model.tar.gz"
SCRIPT = DEMO / "code" / "inference.py"
MODEL_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
}
# The model converted for CTranslate2 (int8), shipped beside the checkpoint: no start converts it.
CONVERTED_FILES = {f"ctranslate2/{name}" for name in ("config.json", "generation_config.json", "model.bin",
                                                       "shared_vocabulary.json", "tokenizer.json",
                                                       "tokenizer_config.json")}
EXTRA_IDS = [f"<extra_id_{i}>" for i in range(100)]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return load_qa(DATA)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MODEL_DIR), local_files_only=True)


def test_data_file_has_question_answer_pairs(rows):
    assert len(rows) >= 200
    for row in rows:
        assert set(row) == {"question", "answer"}
        assert row["question"].strip() and row["answer"].strip()
        assert row["question"].endswith("?")
        assert 1 <= len(row["answer"].split()) <= 4
    questions = [r["question"] for r in rows]
    assert len(set(questions)) == len(questions), "a question with two answers"
    assert questions == sorted(questions)


def test_model_dir_has_the_flan_t5_layout():
    assert MODEL_FILES <= {p.name for p in MODEL_DIR.iterdir()}
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "t5"
    assert config["architectures"] == ["T5ForConditionalGeneration"]
    assert config["feed_forward_proj"] == "gated-gelu"
    assert config["tie_word_embeddings"] is False
    assert (config["decoder_start_token_id"], config["pad_token_id"], config["eos_token_id"]) == (0, 0, 1)
    gen = json.loads((MODEL_DIR / "generation_config.json").read_text())
    assert (gen["decoder_start_token_id"], gen["pad_token_id"], gen["eos_token_id"]) == (0, 0, 1)
    assert 8 <= gen["max_new_tokens"] <= 64
    for name in MODEL_FILES:
        assert (MODEL_DIR / name).stat().st_mode & 0o777 == 0o644, name
    total = sum((MODEL_DIR / n).stat().st_size for n in MODEL_FILES | CONVERTED_FILES) + TAR.stat().st_size
    assert total < 7_000_000, total


def test_tokenizer_has_t5_special_tokens_and_extra_ids(tokenizer):
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert len(tokenizer) == config["vocab_size"]
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer.convert_tokens_to_ids(EXTRA_IDS)
    # like real T5: the sentinels are the last 100 ids, <extra_id_0> the very last
    assert ids == [len(tokenizer) - 1 - i for i in range(100)]
    assert set(ids) <= set(tokenizer.all_special_ids)
    enc = tokenizer("Where was <extra_id_0> born?").input_ids
    assert ids[0] in enc and enc[-1] == 1
    special = json.loads((MODEL_DIR / "special_tokens_map.json").read_text())
    assert special["additional_special_tokens"] == EXTRA_IDS
    assert (special["pad_token"], special["eos_token"], special["unk_token"]) == ("<pad>", "</s>", "<unk>")


def test_tokenizer_round_trips_the_data(tokenizer, rows):
    for row in rows[:100]:
        for text in (row["question"], row["answer"]):
            ids = tokenizer(text).input_ids
            assert ids[-1] == 1 and tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_from_spiece_model_alone_matches(tokenizer, rows, tmp_path, monkeypatch):
    """A dir without tokenizer.json (spiece.model + json configs) must tokenize the same.
    transformers 5 then parses spiece.model with protobuf, and sentencepiece 0.2.3's
    generated module demands protobuf >= 7.36.1 while 6.33.6 is pinned: without the
    version check switched off, the conversion fails (reported as 'tiktoken is required')."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("TEMPORARILY_DISABLE_PROTOBUF_VERSION_CHECK", "true")
    for name in MODEL_FILES - {"tokenizer.json", "model.safetensors"}:
        shutil.copyfile(MODEL_DIR / name, tmp_path / name)
    slow_only = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert len(slow_only) == len(tokenizer)
    texts = [r["question"] for r in rows[:50]] + [r["answer"] for r in rows[:50]] + ["<extra_id_7> x"]
    assert slow_only(texts).input_ids == tokenizer(texts).input_ids


def test_demo_model_answers_at_least_95_percent_exactly():
    correct, total = exact_match(MODEL_DIR, DATA)
    print(f"exact match: {correct}/{total} = {100.0 * correct / total:.1f}%")
    assert total >= 200
    assert correct >= 0.95 * total


def test_tarball_is_safe_and_holds_the_model_and_script():
    with tarfile.open(TAR, "r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        for m in members:
            assert not m.name.startswith("/") and ".." not in Path(m.name).parts, m.name
            assert m.isfile() or m.isdir(), m.name
            assert m.mode == (0o755 if m.isdir() else 0o644), m.name
            assert (m.uid, m.gid, m.mtime) == (0, 0, 0), m.name
        assert names == sorted(names)
        files = {m.name for m in members if m.isfile()}
        assert files == MODEL_FILES | CONVERTED_FILES | {"code/inference.py"}
        for name in MODEL_FILES | CONVERTED_FILES:
            assert tar.extractfile(name).read() == (MODEL_DIR / name).read_bytes(), name
        assert tar.extractfile("code/inference.py").read() == SCRIPT.read_bytes()


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """model.tar.gz extracted, its code/inference.py imported, load_model() called."""
    root = tmp_path_factory.mktemp("model_tar")
    with tarfile.open(TAR, "r:gz") as tar:
        tar.extractall(root, filter="data")
    spec = importlib.util.spec_from_file_location("demo_packaged_inference", root / "code" / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.load_model(str(root))


def test_packaged_script_flask_style_raw_bytes(packaged, rows):
    module, model = packaged
    row = rows[0]
    body = json.dumps({"inputs": row["question"]}).encode()
    assert module.predict(model, body) == [{"generated_text": row["answer"]}]
    # plain text body, and a list of inputs with parameters
    assert module.predict(model, row["question"].encode()) == [{"generated_text": row["answer"]}]
    two = {"inputs": [rows[1]["question"], rows[2]["question"]], "parameters": {"max_new_tokens": 12}}
    result = module.predict(model, json.dumps(two).encode())
    assert result == [{"generated_text": rows[1]["answer"]}, {"generated_text": rows[2]["answer"]}]
    json.dumps(result)


def test_packaged_script_mms_style_body_list(packaged, rows):
    module, model = packaged
    row = rows[-1]
    body = json.dumps({"inputs": row["question"]}).encode()
    assert module.predict(model, [{"body": body}]) == [{"generated_text": row["answer"]}]
    assert module.predict(model, [{"body": bytearray(body)}]) == [{"generated_text": row["answer"]}]
    # several MMS requests in one call: one result list per request
    second = rows[3]
    result = module.predict(model, [{"body": body}, {"body": second["question"].encode()}])
    assert result == [[{"generated_text": row["answer"]}], [{"generated_text": second["answer"]}]]


def test_packaged_script_rejects_bad_payloads(packaged):
    module, model = packaged
    with pytest.raises(ValueError):
        module.predict(model, b'{"question": "no inputs field"}')
    with pytest.raises(ValueError):
        module.predict(model, b'{"inputs": [1, 2]}')


def test_the_shipped_converted_copy_is_the_checkpoint_converted(tmp_path):
    """demo/model/ctranslate2 is what `python -m tools.convert demo/model OUT --quantization int8`
    writes today (conversion is deterministic): it cannot drift from the checkpoint beside it."""
    out = tmp_path / "ct2"
    done = subprocess.run([sys.executable, "-m", "tools.convert", str(MODEL_DIR), str(out), "--quantization", "int8"],
                          cwd=DEMO.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in CONVERTED_FILES:
        assert (out / name.split("/", 1)[1]).read_bytes() == (MODEL_DIR / name).read_bytes(), name
