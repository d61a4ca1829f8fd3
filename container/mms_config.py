"""MMS's config.properties and Java command line, derived from our settings and nothing else.

Each MMS instance gets its own properties file in its own private directory (never
``/etc/sagemaker-mms.properties``), and MMS binds only 127.0.0.1: the public port is the app's.
"""

import math
import os
from pathlib import Path

import mms

from container.protocol import envelope_cap

MMS_HOME = Path(mms.__file__).resolve().parent.parent  # MMS's -Dmodel_server_home
HERE = Path(__file__).resolve().parent
NETTY_THREADS = "2"  # MMS only routes here: two event-loop threads each way are plenty


class ConfigValueError(ValueError):
    """A value cannot be written into a Java properties file safely."""


def render_properties(port: int, model_store: str, workers: int, timeout_s: int,
                      max_payload_bytes: int) -> str:
    """One MMS instance's config.properties: MMS's own port on 127.0.0.1 (inference and
    management), registration urls relative to ``model_store``, ``workers`` per model, the
    per-request timeout, and request and response caps that fit a batch envelope."""
    address = f"http://127.0.0.1:{port}"
    cap = str(envelope_cap(max_payload_bytes))  # the app refuses bodies over the payload cap (413)
    properties = {
        "inference_address": address,
        "management_address": address,
        "model_store": model_store,
        "default_service_handler": "container.handler_service",  # MMS imports it in each worker
        "default_workers_per_model": str(workers),
        # MMS reads default_response_timeout in MINUTES; 1.1.x prefers the _seconds key when
        # present. Both are written so no reader sees a 60x longer timeout.
        "default_response_timeout": str(max(1, math.ceil(timeout_s / 60))),
        "default_response_timeout_seconds": str(timeout_s),
        "unregister_model_timeout": str(timeout_s),
        "max_request_size": cap,
        "max_response_size": cap,
        "job_queue_size": "100",  # the app sends at most one batch per worker at a time
        "number_of_netty_threads": NETTY_THREADS,
        "netty_client_threads": NETTY_THREADS,
        "decode_input_request": "false",  # handlers decode bodies, MMS must not
        "preload_model": "false",  # each worker loads after MMS forks it
        "use_native_io": "true",  # workers talk over unix sockets in our private dir
        "enable_envvars_config": "false",  # no MMS_* variable may override this file
        "async_logging": "true",
        "metric_time_interval": "31536000",  # MMS would start a Python process each minute
    }
    lines = ["# Written by container/mms_process.py for one MMS instance; not shared."]
    lines += [f"{key}={escape_property(value)}" for key, value in properties.items()]
    return "\n".join(lines) + "\n"


def escape_property(value: str) -> str:
    """``value`` as a java.util.Properties value that reads back as exactly ``value``: control
    characters are refused (a newline would start a new key); backslashes and a leading space
    are escaped, non-ASCII becomes \\uXXXX."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ConfigValueError(f"control character in properties value {value!r}")
    out = value.replace("\\", "\\\\")
    if out.startswith(" "):
        out = "\\" + out
    return "".join(c if ord(c) < 0x80 else f"\\u{ord(c):04x}" for c in out)


def java_memory_flags(max_payload_bytes: int) -> list[str]:
    """Bounds for every part of Java's memory, sized for what MMS does here (routing, a few
    envelopes in flight), so a long run plateaus: the heap holds the envelopes being copied
    (twice each) plus MMS's own few MiB; netty's direct buffers hold those on the wire."""
    envelope_mib = -(-envelope_cap(max_payload_bytes) // (1024 * 1024))
    return [
        f"-Xmx{64 + 4 * envelope_mib}m", "-Xms16m",
        "-XX:MinHeapFreeRatio=10", "-XX:MaxHeapFreeRatio=30",  # give a grown heap back
        f"-XX:MaxDirectMemorySize={32 + 2 * envelope_mib}m",
        "-XX:MaxMetaspaceSize=64m", "-XX:ReservedCodeCacheSize=32m", "-XX:TieredStopAtLevel=1",
        "-Xss512k",
        "-Dio.netty.allocator.numDirectArenas=1", "-Dio.netty.allocator.numHeapArenas=1",
    ]


def java_command(config_file: Path, tmp_dir: Path, max_payload_bytes: int) -> list[str]:
    """The Java front end, started directly (the ``multi-model-server`` CLI would write its
    pid to a fixed ``$TMPDIR/.model_server.pid`` and hide the Java pid from us)."""
    java_home = os.environ.get("JAVA_HOME")
    return [
        os.path.join(java_home, "bin", "java") if java_home else "java",
        *java_memory_flags(max_payload_bytes),
        "-XX:+UseSerialGC",  # fewest GC threads: the cores belong to the model
        "-XX:+UseContainerSupport",
        f"-Dmodel_server_home={MMS_HOME}",
        f"-Dlog4j.configurationFile=file://{HERE / 'log4j2.xml'}",
        f"-Djava.io.tmpdir={tmp_dir}",  # worker sockets and their stdout/stderr fifos
        "-cp", str(MMS_HOME / "mms" / "frontend" / "*"),
        "com.amazonaws.ml.mms.ModelServer",
        "--python", str(HERE / "mms_worker.sh"),  # our preloading wrapper (container/mms_worker.py)
        "-f", str(config_file),
    ]
