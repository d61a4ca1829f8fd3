"""handlers.cuda on a machine with no GPU: real dynamic loading (stand-in CUDA libraries built
with gcc: a libcuda.so.1 whose answers come from the environment, a libcublas.so.12 that needs
its libcublasLt.so.12), a real child process for the start-up probe, real gunicorn hooks for
the worker slots, the real demo model behind an injected out-of-memory error, and the memory
formulas against real transformers models and caches. tests/gpu/test_cuda_devices.py runs
the same functions on a GPU."""

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import pytest
import torch

from handlers import cuda, gpu_memory
from handlers.errors import BadRequest
from tests.procs import REPO, alive

FAKE_CUDA = r"""
#include <stdio.h>
#include <stdlib.h>
static int env(const char *name, int fallback) { const char *v = getenv(name); return v ? atoi(v) : fallback; }
int cuDriverGetVersion(int *v) { *v = env("FAKE_CUDA_DRIVER", 12040); return 0; }
int cuInit(unsigned flags) { return env("FAKE_CUDA_INIT", 0); }
int cuGetErrorName(int rc, const char **name) { *name = rc == 999 ? "CUDA_ERROR_UNKNOWN" : "CUDA_ERROR_OTHER"; return 0; }
int cuDeviceGetCount(int *n) { *n = env("FAKE_CUDA_DEVICES", 1); return 0; }
int cuDeviceGet(int *device, int ordinal) { *device = ordinal; return 0; }
int cuDeviceGetName(char *name, int len, int device) { snprintf(name, len, "Fake A10G %d", device); return 0; }
int cuDeviceGetAttribute(int *v, int attribute, int device) { *v = attribute == 75 ? 8 : 6; return 0; }
static int current = -1;
int cuDevicePrimaryCtxRetain(void **ctx, int device) { *ctx = (void *)(long)(device + 1); return 0; }
int cuCtxSetCurrent(void *ctx) { current = (int)(long)ctx - 1; return 0; }
int cuMemGetInfo_v2(size_t *free, size_t *total) { *total = 24ull << 30; *free = (20ull << 30) - current; return 0; }
int cuDevicePrimaryCtxRelease_v2(int device) { return 0; }
"""
FAKE_CUBLAS_LT = "int cublasLtGetVersion(void) { return 120804; }\n"
FAKE_CUBLAS = r"""
int cublasLtGetVersion(void);
int cublasGetProperty(int type, int *value) {
    int v = cublasLtGetVersion();
    *value = type == 0 ? v / 10000 : type == 1 ? v / 100 % 100 : v % 100;
    return 0;
}
"""


def compile_library(source: str, target: Path, *link: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    src = target.parent / (target.name.split(".")[0] + ".c")
    src.write_text(source)
    subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{target.name}", "-o", str(target), str(src), *link],
                   check=True, capture_output=True)
    src.unlink()
    return target


@pytest.fixture(scope="module")
def fakes(tmp_path_factory) -> Path:
    """site-packages/nvidia/cublas/lib/ as nvidia-cublas-cu12 lays it out, and driver/libcuda.so.1."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the stand-in CUDA libraries cannot be built")
    root = tmp_path_factory.mktemp("fake-cuda")
    lib = root / "site-packages" / "nvidia" / "cublas" / "lib"
    compile_library(FAKE_CUBLAS_LT, lib / "libcublasLt.so.12")
    compile_library(FAKE_CUBLAS, lib / "libcublas.so.12", f"-L{lib}", "-l:libcublasLt.so.12")  # no rpath
    compile_library(FAKE_CUDA, root / "driver" / "libcuda.so.1")
    return root


def python(code: str, *args: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (what it loads cannot leak into this one); its last
    stdout line is JSON."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- bf16 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gpu, capability, native", [
    ("V100 (ml.p3)", (7, 0), False), ("T4 (ml.g4dn)", (7, 5), False), ("A100 (ml.p4d)", (8, 0), True),
    ("A10G (ml.g5)", (8, 6), True), ("L4 (ml.g6)", (8, 9), True), ("H100 (ml.p5)", (9, 0), True), ("none", None, False)])
def test_bf16_is_native_from_compute_capability_8(gpu, capability, native):
    assert cuda.native_bf16(capability) is native


# --- cuBLAS 12 ---------------------------------------------------------------------------------------
PRELOAD = """
import ctypes, json, sys
from pathlib import Path
from handlers.cuda import preload_cublas12

def by_name():
    try:
        ctypes.CDLL("libcublas.so.12")
        return True
    except OSError:
        return False

before = by_name()
result = preload_cublas12([Path(p) for p in sys.argv[1:]])
maps = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libcublas" in line})
print(json.dumps({"before": before, "ok": result.ok, "loaded": result.loaded, "version": result.version,
                  "reason": result.reason, "text": str(result), "after": by_name(), "maps": maps}))
"""


def test_cublas12_under_site_packages_is_preloaded_so_a_dlopen_by_name_finds_it(fakes):
    lib = fakes / "site-packages" / "nvidia" / "cublas" / "lib"
    seen = python(PRELOAD, str(fakes / "elsewhere"), str(fakes / "site-packages"))
    assert not seen["before"], "libcublas.so.12 loaded by name before the preload: the test proves nothing"
    assert seen["ok"] and seen["after"]
    assert seen["loaded"] == [str(lib / "libcublasLt.so.12"), str(lib / "libcublas.so.12")]
    assert seen["maps"] == sorted(seen["loaded"])  # the name resolved to the preloaded files, nothing else
    assert seen["version"] == "12.8.4"  # cublasGetProperty of the loaded library
    assert seen["text"].startswith("cuBLAS 12.8.4 loaded: ")


def test_cublas12_already_on_the_loaders_path_is_used_as_it_is(fakes):
    lib = fakes / "site-packages" / "nvidia" / "cublas" / "lib"
    seen = python(PRELOAD, env={"LD_LIBRARY_PATH": str(lib)})
    assert seen["before"] and seen["ok"]
    assert seen["loaded"] == list(cuda.CUBLAS12) and seen["version"] == "12.8.4"


def test_no_cublas12_anywhere_says_what_to_install(fakes):
    seen = python(PRELOAD, str(fakes / "elsewhere"))
    assert not seen["ok"] and not seen["after"] and seen["maps"] == []
    assert "pip install nvidia-cublas-cu12" in seen["reason"] and "libcublas.so.12" in seen["reason"]
    assert seen["text"].startswith("cuBLAS 12 not loaded: ")


def test_a_broken_cublas12_file_is_reported_not_raised(tmp_path):
    lib = tmp_path / "nvidia" / "cublas" / "lib"
    lib.mkdir(parents=True)
    for name in cuda.CUBLAS12:
        (lib / name).write_text("not an ELF file")
    seen = python(PRELOAD, str(tmp_path))
    assert not seen["ok"] and "cannot load" in seen["reason"] and str(lib) in seen["reason"]


def test_site_dirs_hold_this_interpreters_site_packages():
    assert Path(torch.__file__).parent.parent in cuda.site_dirs()


# --- the start-up check -------------------------------------------------------------------------------
def fake_driver(fakes, monkeypatch, **answers):
    """Point this process's children at the stand-in libcuda.so.1 with these answers."""
    monkeypatch.setenv("LD_LIBRARY_PATH", str(fakes / "driver"))
    for name, value in answers.items():
        monkeypatch.setenv(f"FAKE_CUDA_{name.upper()}", str(value))


def test_probe_reads_driver_devices_and_free_memory_in_a_child_process(fakes, monkeypatch):
    fake_driver(fakes, monkeypatch, driver=12040, devices=2)
    found = cuda.run_probe()
    assert found == {"driver_cuda": 12040, "init": 0, "devices": [
        {"name": "Fake A10G 0", "capability": [8, 6], "free": (20 << 30), "total": 24 << 30},
        {"name": "Fake A10G 1", "capability": [8, 6], "free": (20 << 30) - 1, "total": 24 << 30}]}
    maps = Path("/proc/self/maps").read_text()
    assert "libcuda" not in maps, "the probe loaded CUDA into this process: a fork after it would break"


def test_usable_gpus_pass_with_their_facts(fakes, monkeypatch):
    fake_driver(fakes, monkeypatch, driver=12040, devices=4)
    check = cuda.check_gpu("12.8", evidence=lambda: "/dev/nvidia0", driver=lambda: "550.144.03")
    assert check.error is None and check.warning is None
    assert (check.driver, check.driver_cuda) == ("550.144.03", "12.4")
    assert [d.name for d in check.devices] == [f"Fake A10G {i}" for i in range(4)]
    assert all(cuda.native_bf16(d.capability) and d.total == 24 << 30 for d in check.devices)


def test_a_driver_too_old_for_the_image_is_a_start_up_error_naming_the_fix(fakes, monkeypatch):
    fake_driver(fakes, monkeypatch, driver=11040)  # driver 470: SageMaker's default on ml.g5
    check = cuda.check_gpu("12.8", evidence=lambda: "/dev/nvidia0", driver=lambda: "470.256.02")
    assert check.devices == () and check.warning is None
    assert "driver 470.256.02, CUDA 11.4" in check.error and "needs CUDA 12.8" in check.error
    assert "525.60.13" in check.error and "inference_ami_version" in check.error


def test_cuda_13_needs_a_580_driver(fakes, monkeypatch):
    fake_driver(fakes, monkeypatch, driver=12080)
    check = cuda.check_gpu("13.0", evidence=lambda: "/dev/nvidia0", driver=lambda: "570.1")
    assert "needs CUDA 13.0" in check.error and "580.65.06" in check.error


def test_a_cuda_initialisation_error_is_a_start_up_error(fakes, monkeypatch):
    fake_driver(fakes, monkeypatch, init=999)
    check = cuda.check_gpu("12.8", evidence=lambda: "/dev/nvidia0", driver=lambda: "550.1")
    assert "cuInit returned CUDA_ERROR_UNKNOWN (999)" in check.error


def test_compat_libraries_that_do_not_serve_the_driver_say_how_to_start_without_them(fakes, monkeypatch):
    fake_driver(fakes, monkeypatch, driver=12080, init=804)  # the compat libcuda on a consumer GPU
    check = cuda.check_gpu("12.8", evidence=lambda: "/dev/nvidia0", driver=lambda: "470.256.02")
    assert "cuInit returned CUDA_ERROR_OTHER (804)" in check.error and "CUDA_COMPAT=0" in check.error


def test_gpu_nodes_without_the_driver_library_is_a_start_up_error(monkeypatch, tmp_path):
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))  # no libcuda.so.1 anywhere here
    if cuda.run_probe().get("error") is None:
        pytest.skip("this machine has a libcuda.so.1")
    check = cuda.check_gpu("12.8", evidence=lambda: "/dev/nvidia0", driver=lambda: None)
    assert "libcuda.so.1" in check.error and "--gpus all" in check.error


def test_no_device_visible_is_a_start_up_error(fakes, monkeypatch):
    fake_driver(fakes, monkeypatch, devices=0)
    check = cuda.check_gpu("12.8", evidence=lambda: "/dev/nvidia0", driver=lambda: None)
    assert "finds no device" in check.error


def test_a_gpu_image_on_a_host_without_a_gpu_serves_on_the_cpu_with_a_warning():
    if cuda.gpu_evidence() is not None:
        pytest.skip(f"this machine has a GPU: {cuda.gpu_evidence()}")
    check = cuda.check_gpu("12.8")  # the real evidence, probe and driver: nothing here
    assert check.error is None and check.devices == ()
    assert "no NVIDIA GPU here" in check.warning and "serving on the CPU" in check.warning


def test_a_cpu_torch_with_a_gpu_present_warns():
    check = cuda.check_gpu(None, evidence=lambda: "/dev/nvidia0", probe=lambda: pytest.fail("probed"))
    assert check.error is None and "torch has no CUDA" in check.warning


def test_torch_cuda_version_is_read_without_importing_torch(tmp_path):
    assert cuda.torch_cuda_version() == torch.version.cuda  # the real one (None for the CPU wheel)
    version_py = tmp_path / "version.py"
    version_py.write_text("__version__ = '2.13.0+cu130'\ncuda: Optional[str] = '13.0'\nhip = None\n")
    assert cuda.torch_cuda_version(version_py) == "13.0"
    version_py.write_text("__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\n")
    assert cuda.torch_cuda_version(version_py) is None
    assert cuda.required_cuda("ctranslate2") == "12.0"
    assert cuda.required_cuda("transformers") == torch.version.cuda


# --- one worker per GPU ----------------------------------------------------------------------------------
def test_one_worker_per_gpu_unless_configured():
    from contract.settings import Settings
    assert [Settings.from_env({}, gpus=gpus).workers for gpus in (0, 1, 4, 8)] == [1, 1, 4, 8]
    assert Settings.from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}, gpus=4).workers == 2
    assert Settings.from_env({"SERVING_STACK": "mms"}, gpus=4).workers == len(os.sched_getaffinity(0))


def test_worker_slots_take_a_gpu_each_and_share_in_turn():
    assert [cuda.worker_gpu(slot, 4) for slot in range(6)] == ["0", "1", "2", "3", "0", "1"]
    assert [cuda.worker_gpu(slot, 2, "5,7") for slot in range(3)] == ["5", "7", "5"]
    assert cuda.worker_gpu(0, 1, "GPU-8f2c1d3e") == "GPU-8f2c1d3e"
    assert cuda.worker_gpu(3, 0) is None
    assert cuda.free_slot([], 4) == 0
    assert cuda.free_slot([0, 1, 3], 4) == 2
    assert cuda.free_slot([0, 1], 2) == 2


GUNICORN_CONF = """
import os
from pathlib import Path
from handlers import cuda

workers = 3
bind = "127.0.0.1:{port}"
GPUS = 2  # what cuda.check_gpu(...).devices would count

def pre_fork(server, worker):
    worker.gpu_slot = cuda.free_slot((w.gpu_slot for w in server.WORKERS.values()), server.num_workers)

def post_fork(server, worker):
    gpu = cuda.worker_gpu(worker.gpu_slot, GPUS, os.environ.get("CUDA_VISIBLE_DEVICES"))
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    Path("{out}", str(os.getpid())).write_text(f"{{worker.gpu_slot}} {{os.environ['CUDA_VISIBLE_DEVICES']}}")
"""


def test_gunicorn_hooks_pin_each_worker_and_a_replacement_takes_the_dead_ones_gpu(tmp_path):
    """The wiring the maintainer's gunicorn config takes: pre_fork (master) picks the slot,
    post_fork (worker, before CUDA starts) pins it."""
    from tests.procs import free_port
    out = tmp_path / "workers"
    out.mkdir()
    conf = tmp_path / "conf.py"
    conf.write_text(GUNICORN_CONF.format(port=free_port(), out=out))
    app = tmp_path / "app.py"
    app.write_text("def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'']\n")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(conf), "--chdir", str(tmp_path), "app:app"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

    def pinned(count: int) -> dict[int, str]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = {int(f.name): f.read_text() for f in out.iterdir() if alive(int(f.name))}
            if len(seen) == count and all(seen.values()):
                return seen
            time.sleep(0.1)
        raise AssertionError(f"workers never pinned: {seen}, {proc.stderr and proc.poll()}")

    try:
        first = pinned(3)
        assert sorted(first.values()) == ["0 0", "1 1", "2 0"]
        [pid] = [pid for pid, slot in first.items() if slot == "1 1"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        second = pinned(3)
        [new] = set(second) - set(first)
        assert second[new] == "1 1"  # the dead worker's slot and GPU, not a fourth slot
    finally:
        proc.terminate()
        proc.wait(30)


# --- memory -------------------------------------------------------------------------------------------------
def fails_above(limit: int, error: Exception, calls: list):
    def run(items):
        calls.append(len(items))
        if len(items) > limit:
            raise error
        return [f"answer {item}" for item in items]
    return run


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA failed with error out of memory"),  # CTranslate2
    RuntimeError("cuBLAS failed with status CUBLAS_STATUS_ALLOC_FAILED"),
    RuntimeError("CUDA_ERROR_OUT_OF_MEMORY")])
def test_out_of_memory_splits_the_batch_in_halves_until_it_fits_and_answers_all(error):
    calls, freed = [], []
    results = gpu_memory.run_in_memory(fails_above(2, error, calls), list(range(8)), too_big=pytest.fail,
                                 free_cache=lambda: freed.append(1))
    assert results == [f"answer {i}" for i in range(8)]
    assert calls == [8, 4, 2, 2, 4, 2, 2]
    assert len(freed) == 3  # after each out-of-memory error


def test_a_request_that_does_not_fit_alone_gets_a_400_and_the_others_are_answered():
    def run(items):
        if "huge" in items:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [f"answer {item}" for item in items]

    results = gpu_memory.run_in_memory(run, ["a", "huge", "b", "c"], free_cache=lambda: None,
                                 too_big=lambda item: gpu_memory.does_not_fit(480, 512, 8, 4))
    assert results[0] == "answer a" and results[2:] == ["answer b", "answer c"]
    assert isinstance(results[1], BadRequest) and results[1].status == 400
    for name in ("max_new_tokens 512", "num_beams 8", "num_return_sequences 4", "480 input tokens", "lower"):
        assert name in results[1].message


@pytest.mark.parametrize("error", [RuntimeError("CUDA error: an illegal memory access was encountered"),
                                   ValueError("bad input"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory")])
def test_other_errors_are_not_retried(error):
    calls = []
    with pytest.raises(type(error)):
        gpu_memory.run_in_memory(fails_above(0, error, calls), [1, 2], too_big=pytest.fail, free_cache=pytest.fail)
    assert calls == [2]


def test_the_failed_calls_memory_is_unreachable_when_the_cache_is_freed():
    """What the failed call held (its frames, through the error's traceback) must be collectable
    when free_cache runs, or torch's empty_cache could not give it back."""
    held = []

    def run(items):
        batch = torch.zeros(len(items), 1024)  # stands for the batch's activations
        held.append(weakref.ref(batch))
        if len(items) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [0.0] * len(items)

    def free_cache():
        gc.collect()
        assert all(ref() is None for ref in held), "the failed call's tensors are still referenced"

    assert gpu_memory.run_in_memory(run, [1, 2], too_big=pytest.fail, free_cache=free_cache) == [0.0, 0.0]
    gpu_memory.free_device_cache()  # on a CPU-only torch: collects, and has no CUDA cache to empty


def test_split_batches_of_the_demo_model_answer_as_one_batch(demo_dir, demo_qa):
    """The real model behind an injected out-of-memory error above 3 prompts: the batch is split
    in halves until it fits, and every prompt gets the answer it gets in one batch."""
    from handlers import HandlerConfig, load_model
    from handlers.engine import GenerationJob
    from handlers.generation import GenerationParams

    model = load_model(demo_dir, HandlerConfig(backend="transformers"))
    model.start()
    params = GenerationParams(max_new_tokens=16)

    def jobs():
        ids, _ = model._encode([row["question"] for row in demo_qa[:10]])
        return [GenerationJob(key=None, ids=i, params=params, max_new_tokens=16) for i in ids]

    whole = jobs()
    model._run(whole)
    calls, engine_run = [], model.engine.run

    def run(batch):
        calls.append(len(batch))
        if len(batch) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        engine_run(batch)

    model.engine.run = run
    split = jobs()
    model._run(split)
    assert [j.future.result(0) for j in split] == [j.future.result(0) for j in whole]
    assert calls == [10, 5, 3, 2, 5, 3, 2]


FLAN_T5 = {  # config.json of google/flan-t5-*: (shape, parameters as published)
    "small": (dict(d_model=512, d_kv=64, d_ff=1024, num_heads=6, num_layers=8, num_decoder_layers=8), 77_000_000),
    "base": (dict(d_model=768, d_kv=64, d_ff=2048, num_heads=12, num_layers=12), 248_000_000),
    "large": (dict(d_model=1024, d_kv=64, d_ff=2816, num_heads=16, num_layers=24), 783_000_000),
    "xl": (dict(d_model=2048, d_kv=64, d_ff=5120, num_heads=32, num_layers=24), 2_850_000_000),
}


@pytest.mark.parametrize("size", FLAN_T5)
def test_parameter_count_matches_transformers_and_the_published_one(size):
    from transformers import T5Config, T5ForConditionalGeneration
    config, published = FLAN_T5[size]
    with torch.device("meta"):  # shapes only; transformers ties lm_head to the embeddings here
        model = T5ForConditionalGeneration(T5Config(vocab_size=32128, feed_forward_proj="gated-gelu", **config))
    untied = model.num_parameters() + 32128 * config["d_model"]  # Flan-T5 has its own lm_head
    counted = gpu_memory.T5Shape.from_config({**config, "vocab_size": 32128}).parameters()
    assert abs(counted - untied) / untied < 0.001  # layer norms and position biases left out
    assert abs(counted - published) / published < 0.01


def test_shape_from_the_demo_config():
    config = json.loads((REPO / "demo" / "model" / "config.json").read_text())
    assert gpu_memory.T5Shape.from_config(config) == gpu_memory.T5Shape(d_model=64, d_kv=16, d_ff=256, num_heads=4,
                                                            num_layers=2, num_decoder_layers=2, vocab_size=1100)
    assert gpu_memory.T5Shape.from_config({"num_layers": 24}).num_decoder_layers == 24


def test_the_key_value_cache_formula_matches_a_real_generate(demo_model):
    """Per sequence, transformers' cache holds exactly what sequence_bytes counts for it."""
    engine = demo_model.engine
    shape = gpu_memory.T5Shape.from_config(engine.model.config.to_dict())
    inputs = engine.tokenize(["Where was Alnor Quarenard born? " * 6])
    with torch.inference_mode():
        out = engine.model.generate(**engine._tensors(inputs), max_new_tokens=12, min_new_tokens=12,
                                    return_dict_in_generate=True)
    cache = out.past_key_values
    held = sum(t.numel() * t.element_size() for layer in range(len(cache.self_attention_cache.layers))
               for part in (cache.self_attention_cache.layers[layer], cache.cross_attention_cache.layers[layer])
               for t in (part.keys, part.values))
    self_tokens = cache.self_attention_cache.layers[0].keys.shape[-2]
    cross_tokens = cache.cross_attention_cache.layers[0].keys.shape[-2]
    assert cross_tokens == len(inputs[0])
    counted = gpu_memory.T5Shape(**{**vars(shape), "vocab_size": 0}).sequence_bytes(cross_tokens, self_tokens, 4)
    assert counted - cross_tokens * shape.d_model * 4 == held


GIB = 1 << 30


def test_the_budget_splits_what_would_not_fit_on_an_a10g():
    """The issue's example: flan-t5-xl, bf16, 512 in / 512 out on an A10G's 24 GiB (weights not yet
    loaded): batch 32 fits with 1 beam (~13 GiB), not with 4 beams (~31 GiB)."""
    xl = gpu_memory.T5Shape.from_config(FLAN_T5["xl"][0])
    budget = gpu_memory.MemoryBudget.measure(23 * GIB, xl, "bfloat16", weights_loaded=False)
    assert budget.max_inputs(512, 512, 1) >= 32
    assert 8 <= budget.max_inputs(512, 512, 4) < 32
    base = gpu_memory.T5Shape.from_config(FLAN_T5["base"][0])
    assert gpu_memory.MemoryBudget.measure(22 * GIB, base, "torch.bfloat16").max_inputs(512, 512, 4) >= 32
    assert budget.max_inputs(512, 512, 4) < budget.max_inputs(64, 32, 4)  # short answers fit many more


def test_the_budget_never_says_zero():
    full = gpu_memory.MemoryBudget.measure(1 * GIB, gpu_memory.T5Shape.from_config(FLAN_T5["xl"][0]), "float32",
                                     weights_loaded=False)
    assert full.usable == 0 and full.max_inputs(512, 512, 16) == 1
