"""``serve`` / ``python -m serve``: start the model server SageMaker expects.

nginx -> gunicorn -> the app (serve/app.py) always; behind the app, the model in-process by
default, or multi-model-server for multi-model endpoints (SAGEMAKER_MULTI_MODEL=true) and
when SERVING_STACK=mms.
"""

import argparse
import logging
import os
import shutil
import sys

from contract import logs
from contract.settings import Settings, first_unreadable, log_options
from handlers import cuda
from handlers.config import ConfigError
from serve.supervisor import Supervisor

log = logging.getLogger("serve")


def usable_gpus(settings: Settings) -> int | None:
    """The GPUs to serve on, found before anything forks (handlers.cuda.check_gpu); None when a
    GPU is here but unusable, or one was asked for and none is here (each logged)."""
    device = settings.handler.device or ""
    if device.startswith("cpu"):
        return 0
    torch_cuda = cuda.torch_cuda_version()
    check = cuda.check_gpu(cuda.required_cuda(settings.handler.backend))
    if check.error or (check.warning and device.startswith("cuda")):
        log.error("GPU check: %s", check.error or check.warning)
        return None
    if check.warning and torch_cuda:  # a GPU image on a host without a GPU
        log.warning("GPU check: %s", check.warning)
    for i, gpu in enumerate(check.devices):
        log.info("GPU %d: %s (compute capability %d.%d, %.1f of %.1f GiB free), driver %s", i, gpu.name,
                 *gpu.capability, gpu.free / 2**30, gpu.total / 2**30, check.driver)
    return len(check.devices)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serve", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=["serve"], help="accepted and ignored "
                        "(SageMaker runs the image as `docker run IMAGE serve`)")
    parser.add_argument("--model-dir", help="model directory or model.tar.gz (default: SM_MODEL_DIR "
                        "or /opt/ml/model; the embedded demo model when that is empty)")
    args = parser.parse_args(argv)
    logs.configure(*log_options(os.environ))
    try:
        settings = Settings.from_env(os.environ, args.model_dir)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    unreadable = None if settings.multi_model else first_unreadable(settings.model_dir)
    if unreadable:
        log.error("cannot read %s as uid %d (gid %d): run the container as root, the image's default "
                  "(SageMaker does), or make the model readable by this uid (chmod -R a+rX on the host "
                  "dir; in Kubernetes, fsGroup)", unreadable, os.geteuid(), os.getegid())
        return 2
    gpus = usable_gpus(settings)
    if gpus is None:
        return 2
    if gpus:
        settings = Settings.from_env(os.environ, args.model_dir, gpus=gpus)
    if settings.stack == "mms" and not shutil.which("java"):
        log.error("the multi-model stack (SAGEMAKER_MULTI_MODEL=true or SERVING_STACK=mms) runs on "
                  "multi-model-server, which needs Java: this image has none (the GPU image serves "
                  "single models; use the CPU image for multi-model endpoints)")
        return 2
    try:
        return Supervisor(settings).run()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
