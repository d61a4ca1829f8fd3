"""The check asks what the user's callers ask: their body (inline or @file), Content-Type and
Accept, in the single-model stack's convention (raw body) or the MMS stack's ([{"body": ...}]),
held to an expected answer or pattern; or, on request, nothing at all (with a warning)."""

import json
import subprocess
import sys

import pytest

from handlers import load_service
from tools.package import main
from tests.handlers.conftest import REPO
from tests.tools.training_dirs import SEED_FILES, members, seed_training_dir, training_output

CONVENTION_SCRIPT = '''
def load_model(model_dir):
    return None


def predict(model, payload):
    """Says what the server handed over."""
    if isinstance(payload, list):
        return {"got": "list", "body": payload[0]["body"].decode()}
    return {"got": type(payload).__name__, "body": payload.decode()}
'''


def test_seed_script_with_its_own_payload(tmp_path, qa_pairs, capsys):
    """The seed's training dir and script ({"question": ...} -> {"answer": ...}) packages with the
    script's own request; the archive answers it as an endpoint would."""
    train = seed_training_dir(tmp_path / "train")
    pair = qa_pairs[2]
    out = tmp_path / "model.tar.gz"
    request = json.dumps({"question": pair["question"]})
    expect = json.dumps({"answer": pair["answer"]})
    assert main([str(train), str(out), "--body", request, "--expect", expect]) == 0
    report = capsys.readouterr().out
    assert f"sending {request} (application/json)" in report
    assert f'\nanswer: {{"answer": "{pair["answer"]}"}}\n' in report
    assert "leaving out: training_args.bin" in report
    assert set(members(out)) == {*SEED_FILES, "pytorch_model.bin", "code", "code/inference.py"}
    service = load_service(out)  # what the single-model stack runs: the raw body to predict()
    other = qa_pairs[7]
    payload = service.decode(json.dumps({"question": other["question"]}).encode(), "application/json", None)
    [result] = service.predict([payload])
    assert json.loads(service.encode(result, payload)[0]) == {"answer": other["answer"]}


def test_body_from_a_file_with_its_content_type_and_accept(tmp_path, qa_pairs, capsys):
    pairs = qa_pairs[:2]
    body = tmp_path / "questions.csv"
    body.write_text("".join(p["question"] + "\n" for p in pairs))
    expected = "".join(json.dumps({"generated_text": p["answer"]}) + "\n" for p in pairs)
    out = tmp_path / "model.tar.gz"
    assert main([str(training_output(tmp_path / "train")), str(out), "--body", f"@{body}",
                 "--content-type", "text/csv", "--accept", "application/jsonlines", "--expect-match",
                 f'^{{"generated_text": "{pairs[0]["answer"]}"}}\\n']) == 0
    report = capsys.readouterr().out
    questions = "\\n".join(p["question"] for p in pairs)
    assert f"sending {questions}\\n (text/csv, Accept application/jsonlines)" in report
    assert f"answer: {expected}" in report  # one JSON line per CSV line
    assert f"answer from ctranslate2/ (int8): {expected}" in report


@pytest.mark.parametrize("mms_style", [False, True], ids=["single-model", "mms"])
def test_predict_gets_the_body_in_the_stack_convention(tmp_path, capsys, mms_style):
    train = training_output(tmp_path / "train")
    (train / "code").mkdir()
    (train / "code" / "inference.py").write_text(CONVENTION_SCRIPT)
    got = "list" if mms_style else "bytes"
    args = [str(train), str(tmp_path / "model.tar.gz"), "--body", "hello", "--content-type", "text/plain",
            "--expect", json.dumps({"got": got, "body": "hello"})]
    assert main(args + (["--mms-style"] if mms_style else [])) == 0
    assert f'answer: {{"got": "{got}", "body": "hello"}}' in capsys.readouterr().out


def test_no_check_writes_with_a_warning(tmp_path):
    """--no-check: for a script that cannot run where the archive is made."""
    train = training_output(tmp_path / "train")
    (train / "code").mkdir()
    (train / "code" / "inference.py").write_text("import a_package_only_the_image_has\n")
    out = tmp_path / "model.tar.gz"
    done = subprocess.run([sys.executable, "-m", "tools.package", str(train), str(out), "--no-check"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "warning: --no-check: the archive was neither loaded nor asked anything" in done.stdout
    assert "code/inference.py" in members(out) and "ctranslate2" not in members(out)


@pytest.mark.parametrize("args, says", [
    (["--no-check", "--expect", "x", "--mms-style"],
     "--no-check sends no request: drop --expect, --mms-style"),
    (["--content-type", "text/plain"], "--content-type goes with --body"),
    (["--body", "{}", "--expect-match", "("], "--expect-match '(': missing ), unterminated subpattern"),
    (["--body", "{}", "--question", "q"], "argument --question: not allowed with argument --body"),
    (["--ctranslate2", "float16"], "argument --ctranslate2: invalid choice: 'float16'"),
])
def test_flags_that_do_not_go_together(tmp_path, args, says):
    done = subprocess.run([sys.executable, "-m", "tools.package", str(tmp_path), str(tmp_path / "m.tar.gz"),
                           *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []
