"""container/entrypoint.sh's CUDA forward compatibility, run here with a stand-in compat dir and
a stand-in nvidia-smi (the host driver it reports): the compat libraries go first on
LD_LIBRARY_PATH only when the driver is too old for the image's CUDA major version."""

import os
import subprocess

import pytest

from tests.procs import REPO

ENTRYPOINT = REPO / "container" / "entrypoint.sh"


def run(tmp_path, driver: str | None, cuda_version: str = "12.8.1", compat: str = "570.124.06", **env) -> tuple:
    compat_dir = tmp_path / "compat"
    compat_dir.mkdir(exist_ok=True)
    (compat_dir / f"libcuda.so.{compat}").write_bytes(b"")
    link = compat_dir / "libcuda.so.1"
    link.unlink(missing_ok=True)
    link.symlink_to(f"libcuda.so.{compat}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    smi.unlink(missing_ok=True)
    if driver:
        smi.write_text(f"#!/bin/sh\necho {driver}\n")
        smi.chmod(0o755)
    done = subprocess.run(["bash", str(ENTRYPOINT), "printenv", "LD_LIBRARY_PATH"], capture_output=True, text=True,
                          timeout=30, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "CUDA_VERSION": cuda_version,
                                           "CUDA_COMPAT_DIR": str(compat_dir), "LD_LIBRARY_PATH": "/usr/local/nvidia/lib",
                                           **env})
    return done.stdout.strip(), done.stderr, str(compat_dir)


@pytest.mark.parametrize("driver, cuda_version, compat, used", [
    ("470.256.02", "12.8.1", "570.124.06", True),   # SageMaker's default driver on ml.g5: too old for CUDA 12
    ("535.54.03", "12.8.1", "570.124.06", False),   # CUDA 12.2 driver: minor-version compatibility runs 12.8
    ("550.144.03", "12.8.1", "570.124.06", False),
    ("570.1", "13.0.1", "580.82.07", True),         # CUDA 13 needs a 580 driver
    ("580.159.04", "13.0.1", "580.82.07", False),
])
def test_compat_libraries_only_for_a_driver_too_old_for_the_images_cuda(tmp_path, driver, cuda_version, compat, used):
    path, err, compat_dir = run(tmp_path, driver, cuda_version, compat)
    if used:
        assert path == f"{compat_dir}:/usr/local/nvidia/lib"
        assert f"NVIDIA driver {driver}" in err and f"libcuda {compat}" in err
    else:
        assert path == "/usr/local/nvidia/lib" and err == ""


def test_cuda_compat_setting_forces_either_way(tmp_path):
    assert run(tmp_path, "470.256.02", CUDA_COMPAT="0")[0] == "/usr/local/nvidia/lib"
    path, _, compat_dir = run(tmp_path, "550.144.03", CUDA_COMPAT="1")
    assert path == f"{compat_dir}:/usr/local/nvidia/lib"


def test_no_gpu_or_no_compat_dir_changes_nothing(tmp_path):
    if os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("this machine has an NVIDIA driver")
    assert run(tmp_path, None) == ("/usr/local/nvidia/lib", "", str(tmp_path / "compat"))
    path, err, _ = run(tmp_path, "470.256.02", CUDA_COMPAT_DIR=str(tmp_path / "none"))
    assert (path, err) == ("/usr/local/nvidia/lib", "")
