"""CUDA facts the serving processes need, as small functions whose inputs can be passed in
(so each is testable on a machine with no GPU).

- ``native_bf16``: bf16 only where the GPU computes it (compute capability >= 8); torch's
  ``is_bf16_supported()`` also says yes on T4 and V100, which emulate it slowly.
- ``preload_cublas12``: CTranslate2's wheel dlopens CUDA 12's ``libcublas.so.12`` by name; the
  ``nvidia-cublas-cu12`` wheel keeps it under ``site-packages/nvidia/cublas/lib``, where the
  loader does not look. Loaded once by path, a later dlopen by name finds it.
- ``check_gpu``: the start-up check, safe before a fork (CUDA runs in a short child process
  only). No GPU: a warning (serve on the CPU). A GPU that CUDA cannot use: the reason.
- ``free_slot`` / ``worker_gpu``: one gunicorn worker per GPU, each pinned to its own.
Device memory (a budget per engine call, out-of-memory splits) is ``handlers.gpu_memory``'s.
"""

import ctypes
import json
import logging
import re
import site
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path


log = logging.getLogger(__name__)


def native_bf16(capability: tuple[int, int] | None) -> bool:
    """bf16 computed by the hardware: Ampere (8.0) and newer; not T4 (7.5) or V100 (7.0)."""
    return capability is not None and tuple(capability) >= (8, 0)


# --- cuBLAS 12 for CTranslate2 ---------------------------------------------------------------
CUBLAS12 = ("libcublasLt.so.12", "libcublas.so.12")  # libcublas.so.12 needs libcublasLt.so.12
CUBLAS12_DIRS = ("nvidia/cublas/lib", "nvidia/cu12/lib")  # nvidia-cublas-cu12's layout


@dataclass(frozen=True)
class Preload:
    loaded: tuple[str, ...] = ()  # what was loaded: paths, or the names the loader found
    version: str = ""  # cuBLAS's own version, e.g. 12.8.4
    reason: str = ""  # why not, when not

    @property
    def ok(self) -> bool:
        return bool(self.loaded) and not self.reason

    def __str__(self) -> str:
        if self.ok:
            return f"cuBLAS {self.version} loaded: {', '.join(self.loaded)}"
        return f"cuBLAS 12 not loaded: {self.reason}"


def site_dirs() -> list[Path]:
    """This interpreter's site-packages dirs (the venv's first), then those on sys.path."""
    found = [*site.getsitepackages(), site.getusersitepackages(),
             *(p for p in sys.path if p.endswith(("site-packages", "dist-packages")))]
    return [Path(p) for p in dict.fromkeys(found) if Path(p).is_dir()]


def find_cublas12(dirs: Iterable[Path]) -> list[Path] | None:
    """Paths of CUBLAS12 (in load order) in the first dir that holds both."""
    for base in dirs:
        for sub in CUBLAS12_DIRS:
            paths = [Path(base) / sub / name for name in CUBLAS12]
            if all(p.is_file() for p in paths):
                return paths
    return None


def _cublas_version(library) -> str:
    value, parts = ctypes.c_int(), []
    for prop in range(3):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
        if library.cublasGetProperty(prop, ctypes.byref(value)) != 0:
            return "12"
        parts.append(str(value.value))
    return ".".join(parts)


def preload_cublas12(dirs: Iterable[Path] | None = None) -> Preload:
    """Make ``libcublas.so.12`` loadable by name in this process: already on the loader's path
    (ldconfig, LD_LIBRARY_PATH), or loaded here by path from a site-packages dir (RTLD_GLOBAL),
    which a later dlopen by name then finds. Needs no GPU; call it before CTranslate2 places a
    model on CUDA (importing ctranslate2 first is fine: it loads cuBLAS only when used)."""
    try:
        handles = [ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL) for name in CUBLAS12]
        return Preload(CUBLAS12, _cublas_version(handles[-1]))
    except OSError as exc:
        by_name = str(exc)
    paths = find_cublas12(site_dirs() if dirs is None else dirs)
    if paths is None:
        return Preload(reason=f"{CUBLAS12[1]} is not on the loader's path ({by_name}) and no site-packages dir "
                              f"has {CUBLAS12_DIRS[0]}/ (pip install nvidia-cublas-cu12)")
    try:
        handles = [ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL) for path in paths]
    except OSError as exc:
        return Preload(reason=f"cannot load {paths[0].parent}: {exc}")
    return Preload(tuple(str(p) for p in paths), _cublas_version(handles[-1]))


# --- the start-up check ------------------------------------------------------------------------
# Run in a child process: cuInit there leaves this process free to fork. Prints one JSON object.
PROBE = r"""
import ctypes, json
out = {}
try:
    cu = ctypes.CDLL("libcuda.so.1")
except OSError as exc:
    print(json.dumps({"error": str(exc)}))
    raise SystemExit
v, n, name = ctypes.c_int(), ctypes.c_int(), ctypes.c_char_p()
if cu.cuDriverGetVersion(ctypes.byref(v)) == 0:
    out["driver_cuda"] = v.value
out["init"] = rc = cu.cuInit(0)
out["devices"] = []
if rc:
    out["init_name"] = name.value.decode() if cu.cuGetErrorName(rc, ctypes.byref(name)) == 0 else str(rc)
elif cu.cuDeviceGetCount(ctypes.byref(n)) == 0:
    for i in range(n.value):
        dev, ctx, a, b = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_int(), ctypes.c_int()
        free, total, label = ctypes.c_size_t(), ctypes.c_size_t(), ctypes.create_string_buffer(256)
        cu.cuDeviceGet(ctypes.byref(dev), i)
        cu.cuDeviceGetName(label, 256, dev)
        cu.cuDeviceGetAttribute(ctypes.byref(a), 75, dev)  # compute capability, major
        cu.cuDeviceGetAttribute(ctypes.byref(b), 76, dev)  # and minor
        if cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0 and cu.cuCtxSetCurrent(ctx) == 0:
            cu.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))
            cu.cuDevicePrimaryCtxRelease_v2(dev)
        out["devices"].append({"name": label.value.decode(), "capability": [a.value, b.value],
                               "free": free.value, "total": total.value})
print(json.dumps(out))
"""
# CUDA_ERROR_SYSTEM_DRIVER_MISMATCH, CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE: the compat libcuda
# (container/entrypoint.sh, CUDA_COMPAT) does not work with this kernel driver or this GPU.
COMPAT_ERRORS = (803, 804)
# The oldest Linux driver each CUDA major version runs on (NVIDIA's compatibility table).
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
AMI_HINT = ("on SageMaker, deploy with inference_ami_version='al2-ami-sagemaker-inference-gpu-3-1' (driver 550, "
            "CUDA 12.4) for a CUDA 12 image, or 'al2023-ami-sagemaker-inference-gpu-4-1' (driver 580) for CUDA 13")


@dataclass(frozen=True)
class GpuDevice:
    name: str
    capability: tuple[int, int]
    free: int  # bytes free when checked
    total: int


@dataclass(frozen=True)
class GpuCheck:
    devices: tuple[GpuDevice, ...] = ()
    driver: str | None = None  # the NVIDIA driver's version, e.g. 550.144.03
    driver_cuda: str | None = None  # the newest CUDA it runs, e.g. 12.4
    error: str | None = None  # a GPU is here but unusable: stop, with this reason
    warning: str | None = None  # no GPU at all: serve on the CPU, saying so


def gpu_evidence() -> str | None:
    """What shows an NVIDIA GPU given to this process, without touching CUDA: its device nodes
    or ``nvidia-smi -L`` (both come with the NVIDIA container runtime; /proc/driver/nvidia does
    not count: a container without that runtime sees the host's)."""
    nodes = sorted(p.name for p in Path("/dev").glob("nvidia[0-9]*"))
    if nodes:
        return "/dev/" + ", /dev/".join(nodes)
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"nvidia-smi: {listed.splitlines()[0]}" if listed.startswith("GPU") else None


def driver_version() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return found[1] if found else None


def run_probe(timeout: float = 60.0) -> dict:
    """``PROBE`` in a child process of this interpreter: what CUDA says about its devices."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"CUDA did not initialise within {timeout:.0f} s"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"the CUDA probe exited {done.returncode}: {done.stderr.strip()[-300:]}"}


def torch_cuda_version(version_py: Path | None = None) -> str | None:
    """The CUDA version torch was built with, read from its version.py without importing it."""
    if version_py is None:
        spec = find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return None
        version_py = Path(spec.submodule_search_locations[0]) / "version.py"
    try:
        found = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([\d.]+)['\"]", version_py.read_text(), re.M)
    except OSError:
        return None
    return found[1] if found else None


def required_cuda(backend: str) -> str | None:
    """The CUDA version a backend's GPU code needs from the driver: torch's build for
    transformers; 12 for CTranslate2 (its wheel loads CUDA 12's cuBLAS)."""
    return "12.0" if backend in ("ctranslate2", "auto") else torch_cuda_version()


def check_gpu(required: str | None, evidence: Callable[[], str | None] = gpu_evidence,
              probe: Callable[[], dict] = run_probe, driver: Callable[[], str | None] = driver_version) -> GpuCheck:
    """Whether this process may use the GPUs here, without initialising CUDA in it. ``required``:
    the CUDA version the image's GPU code was built for (``required_cuda``), None for a CPU build."""
    seen = evidence()
    if seen is None:
        return GpuCheck(warning="no NVIDIA GPU here (no /dev/nvidia*, no driver, no nvidia-smi): serving on "
                                "the CPU; on a GPU instance, the container needs the NVIDIA runtime")
    if required is None:
        return GpuCheck(warning=f"an NVIDIA GPU is here ({seen}) but this image's torch has no CUDA: "
                                "serving on the CPU")
    found, version = probe(), driver()
    cuda = found.get("driver_cuda")
    cuda = f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None
    facts = dict(driver=version, driver_cuda=cuda)
    where = f"an NVIDIA GPU is here ({seen}, driver {version or 'unknown'}"
    where += f", CUDA {cuda})" if cuda else ")"
    need = int(required.split(".")[0])
    if "error" in found:
        return GpuCheck(**facts, error=f"{where} but CUDA cannot use it: {found['error']} (is the container "
                                       "started with the NVIDIA runtime, e.g. docker run --gpus all?)")
    if cuda and int(cuda.split(".")[0]) < need:
        return GpuCheck(**facts, error=f"{where} but this image needs CUDA {required}: an NVIDIA driver >= "
                                       f"{MIN_DRIVER.get(need, '?')}; {AMI_HINT}")
    if found.get("init"):
        hint = ("; CUDA's forward-compatibility libraries do not serve this driver or GPU: start with CUDA_COMPAT=0 "
                f"on a driver new enough for the image ({AMI_HINT})" if found["init"] in COMPAT_ERRORS else "")
        return GpuCheck(**facts, error=f"{where} but CUDA cannot initialise it: cuInit returned "
                                       f"{found.get('init_name')} ({found['init']}){hint}")
    devices = tuple(GpuDevice(d["name"], tuple(d["capability"]), d["free"], d["total"])
                    for d in found.get("devices", ()))
    if not devices:
        return GpuCheck(**facts, error=f"{where} but CUDA finds no device (CUDA_VISIBLE_DEVICES?)")
    return GpuCheck(devices, **facts)


# --- one worker per GPU --------------------------------------------------------------------------
def free_slot(taken: Iterable[int], workers: int) -> int:
    """The lowest worker slot no live worker holds (a replacement takes the dead one's GPU)."""
    held = set(taken)
    return next((slot for slot in range(workers) if slot not in held), len(held))


def worker_gpu(slot: int, gpus: int, visible: str | None = None) -> str | None:
    """The CUDA_VISIBLE_DEVICES value that pins worker ``slot`` to its GPU: GPU ``slot % gpus``
    (more workers than GPUs share them in turn), picked from ``visible`` when it is already
    set. None without GPUs. Set it in the worker before CUDA starts; it is then ``cuda:0``."""
    if gpus <= 0:
        return None
    ids = [v.strip() for v in (visible or "").split(",") if v.strip()] or [str(i) for i in range(gpus)]
    return ids[slot % min(gpus, len(ids))]
