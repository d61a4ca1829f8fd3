"""Where a multi-model endpoint's memory goes over many load/unload cycles: the PSS of the
front and of Java, separately, after chosen cycles (the reliability test checks only the
total, over RELIABILITY_MME_CYCLES).

    [INFERENCE_BACKEND=ctranslate2] .venv/bin/python bench/mme_cycles.py [--cycles 400]

One cycle: load the demo model (``POST /models``), invoke it once, unload it, wait 0.3 s.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from container import memory  # noqa: E402
from tests.mms.harness import MmsServer, make_model, running  # noqa: E402
from tests.procs import alive, cmdline, descendants  # noqa: E402

REPORT_AFTER = (1, 2, 5, 10, 25, 50, 75, 100, 150, 200, 300, 400, 600, 800, 1000)


def pss_by_process(server: MmsServer) -> dict[str, int]:
    """MiB of PSS: Java, and each other live process of the server by its command line."""
    out: dict[str, int] = {}
    for pid in [server.proc.pid, *descendants(server.proc.pid)]:
        usage = memory.process_memory(pid) if alive(pid) else None
        if usage:
            name = "java" if "java" in cmdline(pid) else cmdline(pid)[:40]
            out[name] = out.get(name, 0) + usage.pss // memory.MiB
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=400)
    args = parser.parse_args()
    os.chdir(REPO)
    with tempfile.TemporaryDirectory(prefix="mme-cycles-") as tmp:
        models = Path(tmp) / "models"
        make_model(models, "demo")
        server = MmsServer("--multi-model", "--model-root", str(models), log_path=Path(tmp) / "mms.log")
        with running(server):
            print("pristine", pss_by_process(server), flush=True)
            for cycle in range(1, args.cycles + 1):
                assert server.load("demo", models / "demo").status_code == 200, server.log()
                assert server.invoke("demo", {"inputs": "hi"}).status_code == 200, server.log()
                assert server.delete("/models/demo").status_code == 200, server.log()
                time.sleep(0.3)
                if cycle in REPORT_AFTER or cycle == args.cycles:
                    print(cycle, pss_by_process(server), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
