"""Security checks on the running stacks: model names and urls cannot leave the model root
(``..``, symlinks, absolute paths, url-encoded forms; for load, describe, invoke and
delete), and a hostile model.tar.gz is refused with nothing written outside.

The unit checks of the same rules are in tests/mms/test_units.py (names, urls) and
tests/handlers/test_handlers_artifacts.py (archives); these go through HTTP.
"""

import io
import json
import shutil
import tarfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tests.mms.harness import MmsServer, make_model
from tests.procs import REPO, Server, http_request
from tests.reliability.conftest import ANSWER, QUESTION, stop_stack


def hostile_tarball(folder: Path, kind: str) -> Path:
    """``folder/model.tar.gz``: a real config.json, then one hostile member."""
    folder.mkdir(parents=True)
    archive = folder / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        config = b'{"model_type": "t5"}'
        info = tarfile.TarInfo("config.json")
        info.size = len(config)
        tar.addfile(info, io.BytesIO(config))
        info = tarfile.TarInfo({"dotdot": "../../escaped.txt", "symlink": "weights",
                                "device": "dev-null"}[kind])
        if kind == "dotdot":
            info.size = 5
            tar.addfile(info, io.BytesIO(b"pwned"))
        elif kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info)
    return archive


HOSTILE_TARS = {"dotdot": "../../escaped.txt", "symlink": "weights", "device": "dev-null"}


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict[str, Path]:
    """root/ (the model root): demo, link-out -> ../outside/demo, tar-<kind>/model.tar.gz;
    outside/demo: a loadable model a traversal would reach."""
    base = tmp_path_factory.mktemp("security")
    root, outside = base / "root", base / "outside"
    make_model(root, "demo")
    make_model(outside, "demo")
    (root / "link-out").symlink_to(outside / "demo")
    for kind in HOSTILE_TARS:
        hostile_tarball(root / f"tar-{kind}", kind)
    return {"base": base, "root": root, "outside": outside}


@pytest.fixture(scope="module")
def mme(layout, tmp_path_factory):
    server = MmsServer("--multi-model", "--model-root", str(layout["root"]),
                       log_path=tmp_path_factory.mktemp("log") / "mms.log")
    try:
        server.start().wait_ready()
        assert server.load("demo", layout["root"] / "demo").status_code == 200
        yield server
        assert server.stop() == 0
        assert server.leftovers() == []
    finally:
        server.kill_leftovers()


def loaded(server) -> list[str]:
    return [m["modelName"] for m in server.get("/models").json()["models"]]


def assert_refused(answer_status: int, body: bytes, where: str) -> None:
    assert answer_status in (400, 404), (where, answer_status, body[:300])
    error = json.loads(body)
    assert error["code"] == answer_status and error["error"], where


def test_urls_outside_the_model_root_are_refused(mme, layout):
    outside, root = layout["outside"] / "demo", layout["root"]
    urls = [str(outside), str(outside) + "/", "../outside/demo", "./../outside/demo", "demo/../../outside/demo",
            str(root / "demo" / ".." / ".." / "outside" / "demo"), "link-out", str(root / "link-out"),
            "link-out/", "%2e%2e/outside/demo", "..%2Foutside%2Fdemo", quote(str(outside), safe=""),
            "/etc", "//etc", "/", "..", "file://" + str(outside), "file:" + str(outside), "~/demo",
            "demo\x00/../../outside/demo", "\\..\\outside\\demo"]
    for url in urls:
        r = mme.load("probe", url)
        assert_refused(r.status_code, r.content, repr(url))
    for url in ("../outside/demo", "link-out", str(outside)):  # MMS's query-parameter form
        r = requests.post(f"{mme.url}/models?model_name=probe&url={quote(url, safe='')}", timeout=60)
        assert_refused(r.status_code, r.content, f"query url={url!r}")
    assert loaded(mme) == ["demo"]
    assert mme.model_workers("probe") == []


def test_model_names_that_could_leave_the_root_are_refused(mme, layout):
    names = ["..", "../x", "a/../../b", "demo/../demo", "/abs", "//abs", "%2e%2e", "..%2f..%2fetc",
             "a\\..\\b", ".", "./x", "x/.."]
    for name in names:
        r = mme.load(name, layout["root"] / "demo")
        assert r.status_code == 400, (name, r.status_code, r.text)
    assert loaded(mme) == ["demo"]


@pytest.mark.parametrize("method, template", [("GET", "/models/{}"), ("DELETE", "/models/{}"),
                                              ("POST", "/models/{}/invoke")])
def test_describe_invoke_delete_cannot_reach_past_a_name(mme, method, template):
    """Names sent raw in the path (nothing normalised by the client): every one is 404 (or
    400), the demo model stays loaded, and no file or other model is reached."""
    names = ["..", "../demo", "..%2Fdemo", "%2e%2e%2Fdemo", "%2E%2E", "..%2F..%2Fetc%2Fpasswd",
             "demo%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "demo%00", "demo/..", "./demo",
             "%252e%252e%252Fdemo", "demo%2F"]
    for name in names:
        path = template.format(name)
        body = json.dumps({"inputs": QUESTION}).encode() if method == "POST" else None
        answer = http_request(mme.port, method, path, body, {"Content-Type": "application/json"})
        assert_refused(answer.status, answer.body, f"{method} {path}")
    assert loaded(mme) == ["demo"]
    r = mme.invoke("demo", {"inputs": QUESTION})
    assert r.status_code == 200 and r.json() == [{"generated_text": ANSWER}]


def test_target_model_header_cannot_reach_past_a_name(mme):
    for name in ("../demo", "..", "/etc/passwd", "demo/../demo", "%2e%2e/demo"):
        r = mme.post("/invocations", {"inputs": QUESTION}, headers={"X-Amzn-SageMaker-Target-Model": name})
        assert_refused(r.status_code, r.content, name)


@pytest.mark.parametrize("kind", sorted(HOSTILE_TARS))
def test_a_hostile_model_tar_gz_is_refused_on_load(mme, layout, kind):
    r = mme.load(f"tar-{kind}", layout["root"] / f"tar-{kind}")
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert HOSTILE_TARS[kind] in r.json()["error"], r.text
    assert "Traceback" not in r.text
    assert not list(layout["base"].rglob("escaped.txt"))
    assert mme.model_workers(f"tar-{kind}") == []
    assert mme.get("/ping").status_code == 200


def test_a_model_tar_gz_as_the_single_model_is_what_is_served(tmp_path):
    """``serve --model-dir model.tar.gz`` serves that archive, not the embedded demo model
    (a file path used to count as "empty" and fall back to the demo: so a hostile archive
    was never even opened)."""
    model = make_model(tmp_path / "src", "scripted")
    (model / "code").mkdir(exist_ok=True)
    shutil.copy(REPO / "tests" / "handlers" / "fixtures" / "transform_fn.py", model / "code" / "inference.py")
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model)), recursive=False)
    with Server(model_dir=archive, log_path=tmp_path / "serve.log") as server:
        answer = server.post(json.dumps({"inputs": QUESTION}))
        assert answer.status_code == 200 and answer.json()["answer"] == ANSWER, answer.text


@pytest.mark.parametrize("kind", ["flask", "mms"])
def test_a_hostile_model_tar_gz_as_the_single_model_is_refused(kind, tmp_path):
    """Nothing escapes, the log names the member, /ping is never 200."""
    archive = hostile_tarball(tmp_path / "archive", "dotdot")
    log_path = tmp_path / "server.log"
    server = Server(model_dir=archive, log_path=log_path) if kind == "flask" else \
        MmsServer("--model-dir", str(archive), log_path=log_path)
    server.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.proc.poll() is None:
            try:
                assert requests.get(server.url + "/ping", timeout=5).status_code != 200
            except requests.RequestException:
                pass
            if HOSTILE_TARS["dotdot"] in server.full_log():
                break
            time.sleep(0.2)
        assert HOSTILE_TARS["dotdot"] in server.full_log(), server.log()
        assert not list(tmp_path.parent.rglob("escaped.txt"))
    finally:
        stop_stack(server)
        shutil.rmtree(tmp_path / "archive", ignore_errors=True)
