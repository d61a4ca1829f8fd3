"""Shared fixtures for the handlers tests: the real demo model (loaded once) and model
directories built from it the way users ship theirs. No mocks anywhere."""

import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "demo" / "model"
DEMO_TAR = REPO / "demo" / "model.tar.gz"
DEMO_DATA = REPO / "demo" / "data" / "biography_qa.jsonl"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def copy_demo(target: Path, *, weights: bool = True, tokenizer: tuple[str, ...] = TOKENIZER_FILES,
              config: tuple[str, ...] = CONFIG_FILES) -> Path:
    """A fresh copy of (parts of) demo/model in ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    names = list(config) + list(tokenizer) + (["model.safetensors"] if weights else [])
    for name in names:
        shutil.copyfile(DEMO_MODEL / name, target / name)
    return target


def pack(model_dir: Path, archive: Path) -> Path:
    """``model_dir``'s contents at the root of a gzipped tarball, as SageMaker expects."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return archive


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    if not (DEMO_MODEL / "model.safetensors").is_file():
        pytest.fail(f"{DEMO_MODEL} has no model.safetensors: run python demo/build_demo_model.py")
    return DEMO_MODEL


@pytest.fixture(scope="session")
def demo_qa() -> list[dict]:
    return [json.loads(line) for line in DEMO_DATA.read_text(encoding="utf-8").splitlines()
            if line.strip()]


@pytest.fixture(scope="session")
def demo_model(demo_dir):
    """The demo model on transformers (the reference engine), loaded once through the public
    API, started (placed, warmed up)."""
    from handlers import HandlerConfig, load_model

    model = load_model(demo_dir, HandlerConfig(backend="transformers"))
    model.start()
    return model


@pytest.fixture(scope="session")
def demo_answers(demo_model, demo_qa) -> dict[str, str]:
    """question -> what the loaded demo model answers (greedy, one batched predict call)."""
    from handlers import predict

    questions = [row["question"] for row in demo_qa]
    started = time.monotonic()
    answers = predict(demo_model, questions)
    assert time.monotonic() - started < 60, "greedy answers for the demo set took over a minute"
    return {q: a["generated_text"] for q, a in zip(questions, answers)}


@pytest.fixture(scope="session")
def known(demo_qa, demo_answers) -> list[tuple[str, str]]:
    """(question, answer) pairs the demo model answers exactly, in data order."""
    pairs = [(row["question"], row["answer"]) for row in demo_qa
             if demo_answers[row["question"]] == row["answer"]]
    assert len(pairs) >= 20, "the demo model answers too few of its own questions"
    return pairs


@pytest.fixture(scope="session")
def multiword(known) -> tuple[str, str]:
    """A question whose (exact) answer has at least three words."""
    return next((q, a) for q, a in known if len(a.split()) >= 3)


@pytest.fixture(scope="session")
def demo_service(demo_model):
    """The default Flan-T5 service around the already loaded demo model."""
    from handlers import FlanT5Service, HandlerConfig

    return FlanT5Service(demo_model, HandlerConfig())


@pytest.fixture(scope="session")
def bin_dir(tmp_path_factory, demo_model) -> Path:
    """A fine-tuned Flan-T5 as users ship it: pytorch_model.bin (a torch.save'd state_dict,
    as the Trainer writes it) plus training_args.bin, no safetensors."""
    import torch

    target = copy_demo(tmp_path_factory.mktemp("bin-model"), weights=False)
    state = {k: v.detach().clone().contiguous() for k, v in demo_model.engine.model.state_dict().items()}
    torch.save(state, target / "pytorch_model.bin")
    torch.save({"learning_rate": 3e-4, "num_train_epochs": 3, "per_device_train_batch_size": 8,
                "output_dir": "/opt/ml/model"}, target / "training_args.bin")
    return target


@pytest.fixture(scope="session")
def spiece_only_dir(tmp_path_factory, demo_dir) -> Path:
    """Tokenizer as spiece.model only (no tokenizer.json): the older Flan-T5 layout."""
    return copy_demo(tmp_path_factory.mktemp("spiece-model"),
                     tokenizer=("spiece.model", "tokenizer_config.json", "special_tokens_map.json"))


@pytest.fixture(scope="session")
def plain_tar(tmp_path_factory, demo_dir) -> Path:
    """model.tar.gz of the demo model files, without code/."""
    root = tmp_path_factory.mktemp("plain-tar")
    return pack(copy_demo(root / "files"), root / "model.tar.gz")


@pytest.fixture
def script_dir(tmp_path, demo_dir):
    """Factory: a model dir (the demo files) whose ``code/<program>`` is a fixture script.

    ``script_dir("seed_style.py")`` or ``script_dir({"inference.py": "a.py", "other.py": "b.py"})``.
    """
    def make(scripts, program: str = "inference.py", name: str = "model") -> Path:
        target = copy_demo(tmp_path / name)
        code = target / "code"
        code.mkdir()
        if isinstance(scripts, str):
            scripts = {program: scripts}
        for dest, fixture in scripts.items():
            shutil.copyfile(FIXTURES / fixture, code / dest)
        return target

    return make


def convert_cli(model_dir: Path, out_dir: Path, quantization: str = "float32") -> Path:
    """``python -m tools.convert``, as a user runs it."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tools.convert", str(model_dir), str(out_dir),
                           "--quantization", quantization], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return out_dir


@pytest.fixture(scope="session")
def ct2_cache(tmp_path_factory) -> Path:
    """One conversion cache for the session: each checkpoint converts once per compute type."""
    return tmp_path_factory.mktemp("ct2-cache")


@pytest.fixture(scope="session")
def ct2_config(ct2_cache):
    """Factory: a ctranslate2-backend HandlerConfig using the session's cache."""
    from handlers import HandlerConfig

    def make(compute_type: str = "float32", **overrides) -> HandlerConfig:
        return HandlerConfig(backend="ctranslate2", compute_type=compute_type, ct2_cache_dir=str(ct2_cache),
                             **overrides)

    return make


@pytest.fixture(scope="session")
def ct2_demo(tmp_path_factory, ct2_config):
    """The demo model on CTranslate2 float32, started: its checkpoint converted into the
    session cache (demo/model's own ctranslate2/ copy is int8)."""
    from handlers import load_model

    model = load_model(copy_demo(tmp_path_factory.mktemp("demo-checkpoint")), ct2_config())
    model.start()
    return model


@pytest.fixture(scope="session")
def t5_small_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(HF dir, CTranslate2 float32 dir) of the random-weight t5-small shape the benchmarks
    use, built and converted once per session."""
    from bench.models import build_t5

    root = tmp_path_factory.mktemp("t5-small")
    hf_dir = build_t5(root / "hf")
    return hf_dir, convert_cli(hf_dir, root / "ct2")


def engine_ids(model, inputs: list[list[int]], params) -> list[list[int]]:
    """``num_return_sequences`` generated id lists per input (input-major): the engine's own
    ``run`` on one batch of jobs, past the scheduler."""
    from handlers.engine import GenerationJob

    bound = params.max_new_tokens or model.engine.max_new_tokens
    jobs = [GenerationJob(key=None, ids=ids, params=params, max_new_tokens=bound) for ids in inputs]
    model.engine.run(jobs)
    return [sequence for job in jobs for sequence in job.future.result(0)]
