"""docs/DEPLOY.md shows the code the tests run: every Python (and YAML) block in it is one
file of examples/, whole, behind a `<!-- examples/NAME -->` marker, and every such file is shown.
tests/container/test_sdk_local_mode.py deploys through those files with the SDK's local mode.

After editing an example: `.venv/bin/python tests/test_deploy_guide.py --write` copies the
files into the guide.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "DEPLOY.md"
EXAMPLES = REPO / "examples"
SDK_PYTHON = REPO / ".venv-sdk" / "bin" / "python"
BLOCK = re.compile(r"<!-- (examples/[\w.-]+) -->\n```(python|yaml)\n(.*?)```\n", re.S)


def shown() -> dict[str, str]:
    return {name: code for name, _, code in BLOCK.findall(GUIDE.read_text())}


def test_every_python_block_is_an_example_file_shown_whole():
    text = GUIDE.read_text()
    blocks = shown()
    assert text.count("```python") + text.count("```yaml") == len(blocks), \
        "a Python or YAML block in DEPLOY.md without an examples/ marker"
    files = sorted(f"examples/{p.name}" for p in EXAMPLES.iterdir() if p.suffix in (".py", ".yaml"))
    assert sorted(blocks) == files
    stale = [name for name, code in blocks.items() if code != (REPO / name).read_text()]
    assert not stale, f"DEPLOY.md differs from {stale}: .venv/bin/python tests/test_deploy_guide.py --write"


def test_examples_import_with_the_sdk():
    """Every name the guide imports exists in the pinned SDK (its own venv)."""
    if not SDK_PYTHON.exists():
        pytest.fail(f"{SDK_PYTHON} is missing: run `make venv` (requirements/sdk.txt)")
    modules = [p.stem for p in sorted(EXAMPLES.glob("*.py"))]
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module('examples.' + name)\n"
    run = subprocess.run([str(SDK_PYTHON), "-c", script, *modules], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={"SAGEMAKER_SUPPRESS_V2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]


def write() -> None:
    GUIDE.write_text(BLOCK.sub(lambda m: f"<!-- {m[1]} -->\n```{m[2]}\n{(REPO / m[1]).read_text()}```\n",
                               GUIDE.read_text()))


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write()
