"""handlers.cuda on a real GPU (skipped elsewhere; tests/handlers/test_cuda.py runs the same
functions on the CPU with stand-ins): the start-up check against what torch sees, bf16 by
compute capability, and a real out-of-memory error split away with every request answered.

    python -m pytest tests/gpu -v -s
"""

import json
import subprocess
import sys
import time

import pytest
import torch

from handlers import cuda, gpu_memory
from tests.procs import REPO

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def test_start_up_check_agrees_with_torch_and_leaves_cuda_uninitialised():
    """In a fresh process (as in a gunicorn master): the check passes, counts and names what
    torch does, and CUDA is still uninitialised there afterwards, so the process may fork."""
    code = """
import json, torch
from handlers import cuda
check = cuda.check_gpu(cuda.required_cuda("transformers"))
print(json.dumps({"error": check.error, "warning": check.warning, "driver": check.driver,
                  "cuda": check.driver_cuda, "names": [d.name for d in check.devices],
                  "capabilities": [list(d.capability) for d in check.devices],
                  "free": [d.free for d in check.devices], "initialised": torch.cuda.is_initialized()}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"start-up check: driver {seen['driver']} (CUDA {seen['cuda']}), {seen['names']}")
    assert seen["error"] is None and seen["warning"] is None
    assert not seen["initialised"]
    assert seen["names"] == [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    assert seen["capabilities"] == [list(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]
    assert all(0 < free <= torch.cuda.get_device_properties(0).total_memory for free in seen["free"])


def test_torch_free_bytes_counts_what_the_caching_allocator_holds_unused():
    before = gpu_memory.torch_free_bytes(0)
    block = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    held = gpu_memory.torch_free_bytes(0)
    del block  # back to torch's cache, not to the device: still free for torch
    assert abs(gpu_memory.torch_free_bytes(0) - before) < (8 << 20)
    assert abs(before - held - (256 << 20)) < (8 << 20)


def test_bf16_is_native_only_from_compute_capability_8():
    capability = torch.cuda.get_device_capability()
    native = cuda.native_bf16(capability)
    print(f"{torch.cuda.get_device_name()}: compute capability {capability}, native bf16 {native}, "
          f"torch.cuda.is_bf16_supported() {torch.cuda.is_bf16_supported()}")
    assert native == (capability[0] >= 8)
    if native:
        assert torch.cuda.is_bf16_supported()


@pytest.fixture(scope="module")
def small_on_cuda(tmp_path_factory):
    """Random weights in t5-small's shape (bench/models.py), float32 on the GPU: the same batch
    split differently gives the same answers, all but rarely."""
    from bench.models import build_t5
    from handlers import HandlerConfig, load_model
    target = build_t5(tmp_path_factory.mktemp("t5-small"), "t5-small")
    model = load_model(target, HandlerConfig(device="cuda", dtype="float32"))
    model.engine.place()
    return model


def generate(model, prompts: list[str], params) -> list[tuple[int, ...]]:
    """Token ids (random weights mostly generate ids the demo tokenizer decodes to nothing)."""
    from tests.handlers.conftest import engine_ids
    return [tuple(ids) for ids in engine_ids(model, model.engine.tokenize(prompts), params)]


def test_a_real_out_of_memory_batch_is_split_and_every_request_answered(small_on_cuda):
    from handlers.generation import GenerationParams
    model = small_on_cuda
    params = GenerationParams(max_new_tokens=48, min_new_tokens=48, num_beams=4)
    prompts = [f"question {i}: " + " ".join(f"word{(i * 7 + j) % 97}" for j in range(150)) for i in range(32)]  # ~740 tokens
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    whole = generate(model, prompts, params)
    need_all = torch.cuda.max_memory_allocated() - base
    torch.cuda.reset_peak_memory_stats()
    generate(model, prompts[:1], params)
    need_one = torch.cuda.max_memory_allocated() - base
    assert need_all > 8 * need_one, (need_all, need_one)
    # Leave free about a third of what the whole batch needs: 32 and 16 run out, 8 fits.
    torch.cuda.empty_cache()
    filler = torch.empty(torch.cuda.mem_get_info()[0] - need_all // 3, dtype=torch.uint8, device="cuda")
    calls = []

    def run(items):
        calls.append(len(items))
        return generate(model, items, params)

    def too_big(_):
        return gpu_memory.does_not_fit(740, 48, 4, 1)

    started = time.perf_counter()
    split = gpu_memory.run_in_memory(run, prompts, too_big)
    took = time.perf_counter() - started
    same = sum(a == b for a, b in zip(split, whole))
    print(f"out-of-memory split: the whole batch needs {need_all >> 20} MiB, {need_all // 3 >> 20} MiB left free; "
          f"engine calls {calls}; {len(split)}/32 answered in {took:.2f} s, {same}/32 as the whole batch did")
    assert calls[0] == 32 and len(calls) > 1 and max(calls[1:]) < 32
    assert len(split) == 32 and all(isinstance(a, tuple) and len(a) == 48 for a in split)
    assert same >= 30
    # Still serving: the next request, with the filler still there.
    started = time.perf_counter()
    [next_answer] = gpu_memory.run_in_memory(run, prompts[:1], too_big)
    assert isinstance(next_answer, tuple) and len(next_answer) == 48
    print(f"next request answered in {(time.perf_counter() - started) * 1000:.0f} ms")
    # A request that does not fit even alone: a 400 naming what to lower, for it alone.
    torch.cuda.empty_cache()  # else torch's cached blocks would still hold a small batch
    huge = torch.empty(torch.cuda.mem_get_info()[0] - need_one // 4, dtype=torch.uint8, device="cuda")
    alone = gpu_memory.run_in_memory(run, prompts[:2], too_big)
    assert all(getattr(a, "status", None) == 400 for a in alone), alone
    print(f"with {need_one // 4 >> 20} MiB free, alone it does not fit either: {alone[0].status} {alone[0].message}")
    del huge, filler
    torch.cuda.empty_cache()
    again = generate(model, prompts[:8], params)
    assert sum(a == b for a, b in zip(again, whole)) >= 7
