"""Model loading from every layout users ship, broken model dirs, and safe tar extraction."""

import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

from handlers import HandlerConfig, load_model, load_service, predict
from handlers.artifacts import extract_archive, resolve_model_dir
from handlers.errors import ModelLoadError
from handlers.service import FlanT5Service, ScriptService

from tests.handlers.conftest import DEMO_TAR, copy_demo, pack


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Archives extract into ``tempfile.mkdtemp()``: keep those under this test's tmp dir."""
    scratch = tmp_path / "tempdirs"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def answers(model, questions):
    return [r["generated_text"] for r in predict(model, questions)]


@pytest.fixture(scope="module")
def sample(demo_qa):
    return [row["question"] for row in demo_qa[::7]]


# -- the layouts that load -------------------------------------------------------------


def test_pytorch_model_bin_and_safetensors_give_identical_answers(bin_dir, demo_answers, sample):
    assert not (bin_dir / "model.safetensors").exists()
    assert (bin_dir / "training_args.bin").is_file()
    model = load_model(bin_dir)
    assert answers(model, sample) == [demo_answers[q] for q in sample]


def test_pytorch_model_bin_weights_equal_the_safetensors_weights(bin_dir, demo_model):
    import torch

    model = load_model(bin_dir, HandlerConfig(backend="transformers"))
    theirs = demo_model.engine.model.state_dict()
    for name, tensor in model.engine.model.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name


def test_spiece_model_only_tokenizer(spiece_only_dir, demo_model, demo_answers, sample):
    assert not (spiece_only_dir / "tokenizer.json").exists()
    model = load_model(spiece_only_dir, HandlerConfig(backend="transformers"))
    assert answers(model, sample) == [demo_answers[q] for q in sample]
    text = "Where was Zoë Ferrwick born? <extra_id_0>"
    assert model.engine.tokenizer(text).input_ids == demo_model.engine.tokenizer(text).input_ids


def test_model_tar_gz_path_loads(plain_tar, demo_answers, sample, private_tmp):
    model = load_model(plain_tar)
    assert answers(model, sample[:10]) == [demo_answers[q] for q in sample[:10]]
    assert Path(model.model_dir).parent == private_tmp


def test_dir_holding_only_model_tar_gz_loads(tmp_path, plain_tar, demo_answers, sample, private_tmp):
    model_dir = tmp_path / "opt-ml-model"
    model_dir.mkdir()
    shutil.copyfile(plain_tar, model_dir / "model.tar.gz")
    model = load_model(model_dir)
    assert answers(model, sample[:5]) == [demo_answers[q] for q in sample[:5]]


def test_load_service_without_code_is_the_default_service(demo_dir):
    service = load_service(demo_dir)
    assert isinstance(service, FlanT5Service) and service.batchable
    service.start()


def test_shipped_demo_tarball(demo_dir, known, private_tmp):
    """demo/model.tar.gz holds the model files and the seed-style code/inference.py."""
    assert DEMO_TAR.is_file(), "demo/model.tar.gz is missing"
    with tarfile.open(DEMO_TAR) as tar:
        names = set(tar.getnames())
    assert {"config.json", "model.safetensors", "spiece.model", "tokenizer.json",
            "code/inference.py"} <= names
    question, answer = known[0]
    model = load_model(DEMO_TAR)
    assert answers(model, [question]) == [answer]
    for mms_style in (False, True):
        service = load_service(DEMO_TAR, HandlerConfig(), predict_records=mms_style)
        assert isinstance(service, ScriptService) and not service.batchable
        payload = service.decode(json.dumps({"inputs": question}).encode(), "application/json", None)
        [result] = service.predict([payload])
        body, ctype = service.encode(result, payload)
        assert ctype == "application/json"
        assert answer in body.decode()


# -- broken model dirs: the error names the file ----------------------------------------


def _missing_config(d):
    (d / "config.json").unlink()


def _corrupt_config(d):
    (d / "config.json").write_text('{"model_type": "t5", ')


def _config_not_object(d):
    (d / "config.json").write_text("[1, 2]")


def _no_weights(d):
    (d / "model.safetensors").unlink()


def _garbage_safetensors(d):
    (d / "model.safetensors").write_bytes(os.urandom(4096))


def _truncated_safetensors(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:len(data) // 2])


def _empty_safetensors(d):
    (d / "model.safetensors").write_bytes(b"")


def _garbage_bin(d):
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"this is not a pickle" * 50)


def _no_tokenizer(d):
    (d / "tokenizer.json").unlink()
    (d / "spiece.model").unlink()


def _corrupt_tokenizer_json(d):
    (d / "spiece.model").unlink()
    (d / "tokenizer.json").write_text("{ not json")


def _corrupt_spiece(d):
    (d / "tokenizer.json").unlink()
    (d / "spiece.model").write_bytes(os.urandom(2048))


BROKEN = [
    (_missing_config, ["config.json", "missing"]),
    (_corrupt_config, ["config.json", "corrupt"]),
    (_config_not_object, ["config.json"]),
    (_no_weights, ["model.safetensors", "pytorch_model.bin"]),
    (_garbage_safetensors, ["model.safetensors"]),
    (_truncated_safetensors, ["model.safetensors"]),
    (_empty_safetensors, ["model.safetensors"]),
    (_garbage_bin, ["pytorch_model.bin"]),
    (_no_tokenizer, ["tokenizer.json", "spiece.model"]),
    (_corrupt_tokenizer_json, ["tokenizer.json"]),
    (_corrupt_spiece, ["spiece.model"]),
]


@pytest.mark.parametrize("breakage,expected", BROKEN, ids=[b.__name__.strip("_") for b, _ in BROKEN])
def test_broken_model_dir_names_the_file(tmp_path, demo_dir, breakage, expected):
    model_dir = copy_demo(tmp_path / "model")
    breakage(model_dir)
    with pytest.raises(ModelLoadError) as info:
        load_model(model_dir)
    assert info.value.status == 422
    for part in expected:
        assert part in info.value.message, (part, info.value.message)
    with pytest.raises(ModelLoadError):
        load_service(model_dir)


def test_missing_model_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_empty_model_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="empty"):
        load_model(tmp_path)


def test_garbage_archive(tmp_path, private_tmp):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(os.urandom(1000))
    with pytest.raises(ModelLoadError, match="model.tar.gz"):
        load_model(archive)


def test_archive_without_config(tmp_path, private_tmp):
    files = tmp_path / "files"
    files.mkdir()
    (files / "README.md").write_text("no model here")
    archive = pack(files, tmp_path / "model.tar.gz")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(archive)


# -- hostile archives -------------------------------------------------------------------


def _file(name: str, data: bytes = b"pwned") -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, io.BytesIO(data)


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def hostile_members(kind: str, outside: Path) -> tuple[list, str]:
    """(members, the member the error must name). ``outside`` is a path outside the target."""
    if kind == "dotdot":
        return [_file("../escaped.txt")], "../escaped.txt"
    if kind == "nested-dotdot":
        return [_file("code/../../../escaped.txt")], "code/../../../escaped.txt"
    if kind == "absolute":
        return [_file(str(outside / "absolute.txt"))], str(outside / "absolute.txt").lstrip("/")
    if kind == "symlink-outside":
        return [_link("weights", "../../escaped-link-target")], "weights"
    if kind == "symlink-absolute":
        return [_link("weights", "/etc/passwd")], "weights"
    if kind == "symlink-then-write-through":
        return [_link("code", ".."), _file("code/escaped.txt")], "code"
    if kind == "hardlink-outside":
        return [_link("hard", "../../escaped-hard", tarfile.LNKTYPE)], "hard"
    if kind == "hardlink-absolute":
        return [_link("hard", "/etc/passwd", tarfile.LNKTYPE)], "hard"
    if kind in ("device", "block-device", "fifo"):
        name = {"device": "dev-null", "block-device": "dev-sda", "fifo": "pipe"}[kind]
        info = tarfile.TarInfo(name)
        info.type = {"device": tarfile.CHRTYPE, "block-device": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
        info.devmajor, info.devminor = (1, 3) if kind == "device" else (8, 0)
        return [(info, None)], name
    raise AssertionError(kind)


HOSTILE = ["dotdot", "nested-dotdot", "absolute", "symlink-outside", "symlink-absolute",
           "symlink-then-write-through", "hardlink-outside", "hardlink-absolute", "device", "block-device",
           "fifo"]


def build_hostile(kind: str, root: Path) -> tuple[Path, str]:
    """A model.tar.gz with a real config.json first, then the hostile member(s)."""
    members, offender = hostile_members(kind, root / "outside")
    archive = root / "archives" / "model.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.addfile(*_file("config.json", b'{"model_type": "t5"}'))
        for info, data in members:
            tar.addfile(info, data)
    return archive, offender


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_archive_is_refused_and_nothing_escapes(tmp_path, kind):
    root = tmp_path / "root"
    (root / "outside").mkdir(parents=True)
    archive, offender = build_hostile(kind, root)
    target = root / "a" / "b" / "target"
    target.mkdir(parents=True)
    before = {p for p in tree(root) if not p.startswith("a/b/target")}
    with pytest.raises(ModelLoadError) as info:
        extract_archive(archive, target)
    assert offender in info.value.message, info.value.message
    assert "model.tar.gz" in info.value.message
    after = {p for p in tree(root) if not p.startswith("a/b/target")}
    assert after == before, f"written outside the target: {after - before}"
    assert not (root / "outside" / "absolute.txt").exists()
    # nothing in the target is a link leading out of it
    for path in target.rglob("*"):
        assert path.resolve().is_relative_to(target.resolve()), path


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_archive_fails_load_model(tmp_path, kind, private_tmp):
    root = tmp_path / "root"
    (root / "outside").mkdir(parents=True)
    archive, offender = build_hostile(kind, root)
    with pytest.raises(ModelLoadError) as info:
        load_model(archive)
    assert offender in info.value.message
    with pytest.raises(ModelLoadError):
        load_service(archive)
    assert not (root / "outside" / "absolute.txt").exists()
    assert not (private_tmp / "escaped.txt").exists()


def test_resolve_model_dir_keeps_a_real_dir(demo_dir):
    assert resolve_model_dir(demo_dir) == demo_dir
