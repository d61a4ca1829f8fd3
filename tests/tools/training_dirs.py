"""Training output dirs as users have them, built from the demo model: what a Seq2SeqTrainer
run leaves behind, and the seed's layout with its own inference script."""

import os
import shutil
import tarfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.handlers.conftest import DEMO_MODEL, copy_demo

QUESTION_SCRIPT = Path(__file__).with_name("fixtures") / "question_script" / "inference.py"
TRAINING_STATE = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                  "trainer_state.json", "all_results.json")
SEED_FILES = ("config.json", "generation_config.json", "spiece.model", "tokenizer_config.json",
              "special_tokens_map.json")


def training_output(target: Path, *, bin_weights: bool = False) -> Path:
    """What a Seq2SeqTrainer run leaves behind: the final model (weights written 0600, as
    safetensors may write them), its training state, and checkpoint-*/ dirs."""
    copy_demo(target)
    if bin_weights:  # the seed's pytorch_model.bin layout
        torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
        (target / "model.safetensors").unlink()
    for name in TRAINING_STATE:
        (target / name).write_bytes(os.urandom(256))
    for step in (50, 100):
        copy_demo(target / f"checkpoint-{step}")
        (target / f"checkpoint-{step}" / "optimizer.pt").write_bytes(os.urandom(256))
    for path in target.iterdir():
        if path.name.endswith((".safetensors", ".bin")):
            path.chmod(0o600)
    return target


def seed_training_dir(target: Path) -> Path:
    """The seed's layout: pytorch_model.bin, spiece.model (no tokenizer.json), training_args.bin,
    and code/inference.py with load_model/predict reading {"question": ...}."""
    target.mkdir(parents=True)
    for name in SEED_FILES:
        shutil.copyfile(DEMO_MODEL / name, target / name)
    torch.save(load_file(DEMO_MODEL / "model.safetensors"), target / "pytorch_model.bin")
    (target / "training_args.bin").write_bytes(os.urandom(256))
    (target / "code").mkdir()
    shutil.copyfile(QUESTION_SCRIPT, target / "code" / "inference.py")
    return target


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}
