"""Memory as the kernel reports it, and the policy that answers 507 to a load that would not fit.

"Free" is ``MemAvailable``, tightened by the cgroup limit when there is one (inside Docker
/proc/meminfo shows the host). A process's share is its PSS (shared pages split between the
processes that map them), which is what adding up several workers needs; RSS is reported too.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from handlers.config import HandlerConfig
from handlers.convert import shipped_model
from handlers.engine import choose_backend
from handlers.errors import InsufficientStorage

MiB = 1024 * 1024
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack",
                   ".gguf", ".model")
# What one MMS worker costs before its weights (Python, its engine's libraries, its share of
# the listener it was forked from), rounded up from the demo model (docs/BENCHMARKS.md): ~305
# MiB PSS with torch + transformers, ~40 MiB with CTranslate2. Until a load here measures it.
FIRST_WORKER_ESTIMATE = {"transformers": 400 * MiB, "ctranslate2": 64 * MiB}
MIN_WORKER_BYTES = 32 * MiB  # a learned figure never goes below a bare Python process
WEIGHTS_FACTOR = 1.3  # a model's resident weights relative to their size on disk (fp32 safetensors: ~1.0)


def _read_fields(path: str, separator: str) -> dict[str, int]:
    """``key<separator> value [kB]`` lines as bytes; {} when the file cannot be read."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(separator)
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    except OSError:
        pass
    return out


def _read_int(path: str) -> int | None:
    try:
        raw = Path(path).read_text().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None  # "max" (no limit) -> None


def available_bytes() -> int:
    """Memory that can still be allocated without swapping or the OOM killer: MemAvailable, or
    the room under the cgroup's limit (v2, then v1) when that is less. Page cache that can be
    dropped (inactive_file) counts as room, as it does for the kernel."""
    info = _read_fields("/proc/meminfo", ":")
    free = info.get("MemAvailable", info.get("MemFree", 0))
    for folder, limit_file, usage_file in (("/sys/fs/cgroup", "memory.max", "memory.current"),
                                           ("/sys/fs/cgroup/memory", "memory.limit_in_bytes",
                                            "memory.usage_in_bytes")):
        limit, usage = _read_int(f"{folder}/{limit_file}"), _read_int(f"{folder}/{usage_file}")
        if limit is not None and usage is not None and limit < 1 << 60:
            stat = _read_fields(f"{folder}/memory.stat", " ")
            inactive = stat.get("inactive_file", stat.get("total_inactive_file", 0))
            return min(free, max(0, limit - usage + inactive))
    return free


def total_bytes() -> int:
    return _read_fields("/proc/meminfo", ":").get("MemTotal", 0)


@dataclass(frozen=True)
class ProcessMemory:
    rss: int
    pss: int


def process_memory(pid: int) -> ProcessMemory | None:
    """RSS and PSS of ``pid`` (None when it is gone)."""
    values = _read_fields(f"/proc/{pid}/smaps_rollup", ":")
    if "Rss" not in values:
        return None
    return ProcessMemory(values["Rss"], values.get("Pss", values["Rss"]))


def weights_bytes(model_dir: str | os.PathLike) -> int:
    """Bytes of weight files under ``model_dir`` (every file if none looks like weights)."""
    weights = total = 0
    for root, _dirs, files in os.walk(model_dir):
        for name in files:
            try:
                size = os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
            total += size
            if name.endswith(WEIGHT_SUFFIXES) or ".tar" in name:
                weights += size
    return weights or total


@dataclass
class MemoryPolicy:
    """507 when a load would leave less than ``reserve_bytes`` free, or (with a budget)
    make the model workers together use more than ``budget_bytes``."""

    reserve_bytes: int = 256 * MiB
    budget_bytes: int | None = None
    config: HandlerConfig = field(default_factory=HandlerConfig)  # which engine serves a model
    # What one worker costs beyond its weights, per engine: FIRST_WORKER_ESTIMATE until a load measures it.
    worker_fixed_bytes: dict[str, int] = field(default_factory=lambda: dict(FIRST_WORKER_ESTIMATE))

    def backend(self, model_dir: Path) -> str:
        return choose_backend(model_dir, self.config)[0]

    def weights(self, model_dir: Path) -> int:
        """What one worker holds of the model: with CTranslate2, the converted model when the dir
        ships one (else the checkpoint, which a conversion never makes bigger)."""
        shipped = shipped_model(model_dir) if self.backend(model_dir) == "ctranslate2" else None
        return int(WEIGHTS_FACTOR * weights_bytes(shipped or model_dir))

    def estimate(self, model_dir: Path, workers: int) -> int:
        return workers * (self.worker_fixed_bytes[self.backend(model_dir)] + self.weights(model_dir))

    def check(self, name: str, model_dir: Path, workers: int, used_bytes: int) -> None:
        """Raise 507 when loading ``model_dir`` with ``workers`` workers would not fit."""
        need, free = self.estimate(model_dir, workers), available_bytes()
        if free - need < self.reserve_bytes:
            raise InsufficientStorage(
                f"not enough memory to load {name!r}: it needs about {need // MiB} MiB ({workers} "
                f"worker(s)), {free // MiB} MiB are free and {self.reserve_bytes // MiB} MiB are kept "
                "in reserve")
        if self.budget_bytes is not None and used_bytes + need > self.budget_bytes:
            raise InsufficientStorage(
                f"loading {name!r} (about {need // MiB} MiB) would exceed the model memory budget: "
                f"{used_bytes // MiB} of {self.budget_bytes // MiB} MiB in use")

    def learn(self, model_dir: Path, workers: int, pss_bytes: int) -> None:
        """Refine what one worker costs beyond its weights from a model just loaded."""
        self.worker_fixed_bytes[self.backend(model_dir)] = max(
            MIN_WORKER_BYTES, pss_bytes // workers - self.weights(model_dir))
