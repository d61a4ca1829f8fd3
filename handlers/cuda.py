"""CUDA facts the serving processes need, each testable on a machine with no GPU (its inputs can
be passed in): bf16 where the hardware computes it, cuBLAS 12 for CTranslate2, the start-up
check (CUDA only ever in a child process, so this one may still fork), one gunicorn worker per
GPU. Device memory is ``handlers.gpu_memory``'s; docs/IMAGES.md has the drivers and hosts."""

import ctypes
import json
import re
import site
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path


def native_bf16(capability: tuple[int, int] | None) -> bool:
    """bf16 computed by the hardware: Ampere (8.0) and newer. torch's ``is_bf16_supported()``
    also says yes on T4 (7.5) and V100 (7.0), which emulate it slowly."""
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
    """This interpreter's site-packages dirs, then the rest of sys.path."""
    return [Path(p) for p in dict.fromkeys([*site.getsitepackages(), *sys.path]) if p]


def _loaded(names: tuple[str, ...], library) -> Preload:
    values = [ctypes.c_int() for _ in range(3)]  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
    if any(library.cublasGetProperty(i, ctypes.byref(value)) for i, value in enumerate(values)):
        return Preload(names, "12")
    return Preload(names, ".".join(str(value.value) for value in values))


def preload_cublas12(dirs: Iterable[Path] | None = None) -> Preload:
    """Make ``libcublas.so.12``, which CTranslate2's wheel dlopens by name, loadable: already on
    the loader's path, or loaded here by path (RTLD_GLOBAL) from a site-packages dir, where the
    nvidia-cublas-cu12 wheel keeps it and the loader does not look. Needs no GPU."""
    try:
        return _loaded(CUBLAS12, [ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL) for name in CUBLAS12][-1])
    except OSError as exc:
        by_name = str(exc)
    libs = (Path(base) / sub for base in (site_dirs() if dirs is None else dirs) for sub in CUBLAS12_DIRS)
    lib = next((lib for lib in libs if all((lib / name).is_file() for name in CUBLAS12)), None)
    if lib is None:
        return Preload(reason=f"{CUBLAS12[1]} is not on the loader's path ({by_name}) and no site-packages "
                              f"dir has {CUBLAS12_DIRS[0]}/ (pip install nvidia-cublas-cu12)")
    paths = tuple(str(lib / name) for name in CUBLAS12)
    try:
        return _loaded(paths, [ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL) for path in paths][-1])
    except OSError as exc:
        return Preload(reason=f"cannot load {lib}: {exc}")


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
AMI_HINT = ("on SageMaker, deploy with inference_ami_version='al2-ami-sagemaker-inference-gpu-3-1' "
            "(driver 550, CUDA 12.4) for a CUDA 12 image, or 'al2023-ami-sagemaker-inference-gpu-4-1' "
            "(driver 580) for CUDA 13")


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
    """An NVIDIA GPU given to this process, seen without CUDA: its device nodes or ``nvidia-smi
    -L`` (not /proc/driver/nvidia: a container without NVIDIA's runtime sees the host's)."""
    nodes = sorted(p.name for p in Path("/dev").glob("nvidia[0-9]*"))
    if nodes:
        return "/dev/" + ", /dev/".join(nodes)
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    listed = listed.strip()
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
    spec = find_spec("torch") if version_py is None else None
    try:
        version_py = version_py or Path(spec.origin).parent / "version.py"
        found = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([\d.]+)['\"]", version_py.read_text(), re.M)
    except (AttributeError, TypeError, OSError):  # no torch
        return None
    return found[1] if found else None


def required_cuda(backend: str) -> str | None:
    """The CUDA version a backend's GPU code needs from the driver: torch's build for
    transformers; 12 for CTranslate2 (its wheel loads CUDA 12's cuBLAS)."""
    return "12.0" if backend in ("ctranslate2", "auto") else torch_cuda_version()


def check_gpu(required: str | None, evidence: Callable[[], str | None] = gpu_evidence,
              probe: Callable[[], dict] = run_probe,
              driver: Callable[[], str | None] = driver_version) -> GpuCheck:
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
    where = f"an NVIDIA GPU is here ({seen}, driver {version or 'unknown'}{f', CUDA {cuda}' if cuda else ''})"
    need = int(required.split(".")[0])
    if "error" in found:
        return GpuCheck(**facts, error=f"{where} but CUDA cannot use it: {found['error']} (is the container "
                                       "started with the NVIDIA runtime, e.g. docker run --gpus all?)")
    if cuda and int(cuda.split(".")[0]) < need:
        return GpuCheck(**facts, error=f"{where} but this image needs CUDA {required}: an NVIDIA driver >= "
                                       f"{MIN_DRIVER.get(need, '?')}; {AMI_HINT}")
    if found.get("init"):
        hint = ("; CUDA's forward-compatibility libraries do not serve this driver or GPU: start with "
                f"CUDA_COMPAT=0 on a driver new enough for the image ({AMI_HINT})")
        return GpuCheck(**facts, error=f"{where} but CUDA cannot initialise it: cuInit returned "
                                       f"{found.get('init_name')} ({found['init']})"
                                       f"{hint if found['init'] in COMPAT_ERRORS else ''}")
    devices = tuple(GpuDevice(d["name"], tuple(d["capability"]), d["free"], d["total"])
                    for d in found["devices"])
    if not devices:
        return GpuCheck(**facts, error=f"{where} but CUDA finds no device (CUDA_VISIBLE_DEVICES?)")
    return GpuCheck(devices, **facts)


# --- one worker per GPU --------------------------------------------------------------------------
def free_slot(taken: Iterable[int], workers: int) -> int:
    """The lowest worker slot no live worker holds (a replacement takes the dead one's GPU)."""
    held = set(taken)
    return next((slot for slot in range(workers) if slot not in held), len(held))


def worker_gpu(slot: int, gpus: int, visible: str | None = None) -> str | None:
    """The CUDA_VISIBLE_DEVICES value that pins worker ``slot`` to GPU ``slot % gpus`` (picked
    from ``visible`` when set; None without GPUs). Set in the worker before CUDA starts."""
    if gpus <= 0:
        return None
    ids = [v.strip() for v in (visible or "").split(",") if v.strip()] or [str(i) for i in range(gpus)]
    return ids[slot % min(gpus, len(ids))]
