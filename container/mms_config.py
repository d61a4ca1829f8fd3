"""MMS's config.properties and Java command line, derived from our settings and nothing else.

Each MMS instance gets its own properties file in its own private directory (never
``/etc/sagemaker-mms.properties``), and MMS binds only 127.0.0.1: the public port belongs
to ``container.front``, which speaks the SageMaker contract and forwards to MMS.
"""

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import mms

from container.protocol import envelope_cap

MMS_HOME = Path(mms.__file__).resolve().parent.parent  # MMS's -Dmodel_server_home
MMS_MAIN_CLASS = "com.amazonaws.ml.mms.ModelServer"
LOG4J_CONFIG = Path(__file__).resolve().parent / "log4j2.xml"
HANDLER_MODULE = "container.handler_service"  # MMS imports it in each worker
# What MMS runs as "python" for each model's listener: our preloading wrapper.
WORKER_PYTHON = Path(__file__).resolve().parent / "mms_worker.sh"
NETTY_THREADS = 2  # MMS only routes here: two event-loop threads each way are plenty


class ConfigValueError(ValueError):
    """A value cannot be written into a Java properties file safely."""


@dataclass(frozen=True)
class MmsConfig:
    """Everything that goes into one MMS instance's config.properties."""

    port: int  # MMS's own port on 127.0.0.1 (inference and management)
    model_store: str  # registration urls are relative to this
    workers: int  # workers per model
    timeout_s: int  # per-request timeout, seconds
    max_payload_bytes: int  # the callers' body cap; MMS's caps fit a batch envelope

    def properties(self) -> dict[str, str]:
        address = f"http://127.0.0.1:{self.port}"
        return {
            "inference_address": address,
            "management_address": address,
            "model_store": self.model_store,
            "default_service_handler": HANDLER_MODULE,
            "default_workers_per_model": str(self.workers),
            # MMS reads default_response_timeout in MINUTES; 1.1.x prefers the _seconds
            # key when present. Both are written so no reader sees a 60x longer timeout.
            "default_response_timeout": str(max(1, math.ceil(self.timeout_s / 60))),
            "default_response_timeout_seconds": str(self.timeout_s),
            "unregister_model_timeout": str(self.timeout_s),
            # The front refuses bodies over the payload cap itself (413); MMS sees envelopes.
            "max_request_size": str(envelope_cap(self.max_payload_bytes)),
            "max_response_size": str(envelope_cap(self.max_payload_bytes)),
            "job_queue_size": "100",  # the front sends at most one batch per worker at a time
            "number_of_netty_threads": str(NETTY_THREADS),
            "netty_client_threads": str(NETTY_THREADS),
            "decode_input_request": "false",  # handlers decode bodies, MMS must not
            "preload_model": "false",  # each worker loads after MMS forks it
            "use_native_io": "true",  # workers talk over unix sockets in our private dir
            "enable_envvars_config": "false",  # no MMS_* variable may override this file
            "async_logging": "true",
            "metric_time_interval": "31536000",  # MMS would start a Python process each minute
        }

    def render(self) -> str:
        lines = ["# Written by container/mms_process.py for one MMS instance; not shared."]
        lines += [f"{key}={escape_property(value)}" for key, value in self.properties().items()]
        return "\n".join(lines) + "\n"


def escape_property(value: str) -> str:
    """``value`` as a java.util.Properties value that reads back as exactly ``value``.

    Control characters are refused outright (a newline would start a new key); backslashes
    and a leading space are escaped, non-ASCII becomes \\uXXXX.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigValueError(f"control character in properties value {value!r}")
    out = value.replace("\\", "\\\\")
    if out.startswith(" "):
        out = "\\" + out
    return "".join(c if ord(c) < 0x80 else f"\\u{ord(c):04x}" for c in out)


def java_memory_flags(max_payload_bytes: int) -> list[str]:
    """Bounds for every part of Java's memory, sized for what MMS does here (routing
    requests, at most a few envelopes in flight), so a long run plateaus: the heap holds
    the envelopes being copied (twice each) plus MMS's own few MiB; netty's direct buffers
    hold the envelopes on the wire."""
    envelope_mib = -(-envelope_cap(max_payload_bytes) // (1024 * 1024))
    return [
        f"-Xmx{64 + 4 * envelope_mib}m", "-Xms16m",
        "-XX:MinHeapFreeRatio=10", "-XX:MaxHeapFreeRatio=30",  # give a grown heap back
        f"-XX:MaxDirectMemorySize={32 + 2 * envelope_mib}m",
        "-XX:MaxMetaspaceSize=64m", "-XX:ReservedCodeCacheSize=32m", "-XX:TieredStopAtLevel=1",
        "-Xss512k",
        "-Dio.netty.allocator.numDirectArenas=1", "-Dio.netty.allocator.numHeapArenas=1",
    ]


def java_command(config_file: Path, tmp_dir: Path, max_payload_bytes: int, *,
                 python: str = sys.executable) -> list[str]:
    """The Java front end, started directly (the ``multi-model-server`` CLI would write its
    pid to a fixed ``$TMPDIR/.model_server.pid`` and hide the Java pid from us)."""
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else "java"
    return [
        java,
        *java_memory_flags(max_payload_bytes),
        "-XX:+UseSerialGC",  # fewest GC threads: the cores belong to the model
        "-XX:+UseContainerSupport",
        f"-Dmodel_server_home={MMS_HOME}",
        f"-Dlog4j.configurationFile=file://{LOG4J_CONFIG}",
        f"-Djava.io.tmpdir={tmp_dir}",  # worker sockets and their stdout/stderr fifos
        "-cp", str(MMS_HOME / "mms" / "frontend" / "*"),
        MMS_MAIN_CLASS,
        "--python", python,
        "-f", str(config_file),
    ]
