"""User scripts (``code/inference.py``) in either convention, run unchanged.

- ``load_model(model_dir)`` + ``predict(model, payload)`` (older flask/MMS images);
- ``model_fn(model_dir[, context])``, ``input_fn(body, content_type[, context])``,
  ``predict_fn(data, model[, context])``, ``output_fn(prediction, accept[, context])`` or
  ``transform_fn(model, body, content_type, accept[, context])`` (sagemaker-inference).

A hook that raises becomes a 500 naming the hook and the exception; an ``InferenceError``
it raises keeps its own status.
"""

import hashlib
import importlib.util
import inspect
import logging
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

from packaging.requirements import InvalidRequirement, Requirement

from handlers.errors import InferenceError, InternalError, ModelLoadError

log = logging.getLogger(__name__)
HOOKS = ("load_model", "predict", "model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn")


def find_script(model_dir: Path, program: str, submit_dir: str | None) -> Path | None:
    for code_dir in ([Path(submit_dir)] if submit_dir else []) + [model_dir / "code"]:
        if (code_dir / program).is_file():
            return code_dir / program
    if program != "inference.py" or submit_dir:
        raise ModelLoadError(f"SAGEMAKER_PROGRAM={program!r} not found in "
                             f"{submit_dir or model_dir / 'code'}")
    return None


def report_requirements(code_dir: Path) -> None:
    """Nothing is installed at start-up (slow, needs network): bake dependencies into the
    image. Say which of ``code/requirements.txt`` are missing, so the cause is obvious."""
    requirements = code_dir / "requirements.txt"
    if not requirements.is_file():
        return
    missing = []
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
            installed = metadata.version(requirement.name)
            if requirement.specifier and installed not in requirement.specifier:
                missing.append(f"{line} (installed {installed})")
        except (InvalidRequirement, metadata.PackageNotFoundError):
            missing.append(line)
    if missing:
        log.warning("%s lists packages this image lacks: %s. They are not installed at start-up: "
                    "build them into the image (FROM this image; pip install ...).",
                    requirements, ", ".join(missing))


class Context:
    """The optional trailing ``context`` argument of user hooks, as sagemaker-inference scripts
    read it (``context.system_properties["model_dir"]``); MMS passes its own."""

    def __init__(self, model_dir: Path, gpu_id: int | None = None):
        self.model_dir = str(model_dir)
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id}


class UserScript:
    """An imported user module and the hooks it defines."""

    def __init__(self, path: Path):
        self.path = path
        name = "user_script_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))  # the script may import its neighbours
        report_requirements(path.parent)
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except Exception as exc:
            log.exception("importing %s failed", path)
            raise ModelLoadError(f"{path.name} failed to import: {type(exc).__name__}: {exc}") from exc
        self.module: ModuleType = module
        self.hooks = {h: getattr(module, h) for h in HOOKS if callable(getattr(module, h, None))}
        log.info("user script %s defines %s", path, ", ".join(self.hooks) or "no hooks")

    def has(self, hook: str) -> bool:
        return hook in self.hooks

    def call(self, hook: str, *args, context=None):
        """Call a hook, adding ``context`` when its signature takes one more argument."""
        function = self.hooks[hook]
        try:
            signature = inspect.signature(function)
            takes_more = any(p.kind == p.VAR_POSITIONAL for p in signature.parameters.values()) or \
                len(signature.parameters) > len(args)
        except (TypeError, ValueError):
            takes_more = False
        try:
            return function(*args, context) if takes_more else function(*args)
        except InferenceError:
            raise
        except Exception as exc:
            log.exception("%s %s raised", self.path.name, hook)
            raise InternalError(f"{self.path.name} {hook} raised {type(exc).__name__}: {exc}") from exc
