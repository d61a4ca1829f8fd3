"""instance_type="local_gpu": the SageMaker SDK's local mode runs the GPU image (GPU_IMAGE)
with the host's GPUs (a docker-compose device reservation), through the deploy guide's code.
Needs a GPU, Docker with the NVIDIA container toolkit, docker-compose and .venv-sdk; skipped
elsewhere (CI has no GPU).
"""

import os

import pytest
import torch

from tools.package import package
from tests.container.local_mode import LocalMode, missing
from tests.procs import DEMO_MODEL

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def test_local_gpu_endpoint_answers_on_cuda(tmp_path, qa_pairs):
    image = os.environ.get("GPU_IMAGE", "").strip()
    if not image:
        pytest.skip("GPU_IMAGE is not set: build the GPU image (./build.sh --gpu)")
    reason = missing()
    if reason:
        pytest.skip(reason)
    archive = tmp_path / "model" / "model.tar.gz"
    archive.parent.mkdir()
    package(DEMO_MODEL, archive, report=lambda *_: None)
    mode = LocalMode(image, tmp_path)
    try:
        # fp32 on the GPU too, so the answers are exactly the CPU's
        seen = mode.run("realtime", archive, [p["question"] for p in qa_pairs[:11]],
                        env={"INFERENCE_DTYPE": "float32"}, instance_type="local_gpu")
    finally:
        mode.remove_containers()
    assert " on cuda" in seen["log"]
    assert seen["one"] == [qa_pairs[0]["answer"]]
    assert seen["many"] == [p["answer"] for p in qa_pairs[1:5]]
    assert seen["containers_after"] == ["exited 0"]
