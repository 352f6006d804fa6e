"""Run folders and checkpoints.

A run folder (`training.checkpoint_output_dir`) holds `step_<N>/` checkpoints, `metrics.jsonl` and
`run_config.yaml`. A checkpoint holds the model in Hugging Face format (`config.json`,
`model.safetensors`), the tokenizer files it was trained with (`tokenizer/`), the resolved run
config and `training_state.pt` (optimizer, schedule, step, random states, data position).

Each checkpoint is written to a hidden temporary folder and renamed into place only when complete,
so a crash never leaves a `step_<N>` folder that looks finished but is not.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

STEP_PATTERN = re.compile(r"^step_(\d+)$")
TRAINING_STATE_FILE = "training_state.pt"
TOKENIZER_FOLDER = "tokenizer"
METRICS_FILE = "metrics.jsonl"
RUN_CONFIG_FILE = "run_config.yaml"


class CheckpointError(RuntimeError):
    """A run folder or checkpoint that cannot be used as requested."""


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Return the complete `step_<N>` checkpoints of a run folder, sorted by N as integers."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for child in run_dir.iterdir():
        match = STEP_PATTERN.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a run folder (meaning its latest checkpoint) and check it is complete."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check training.checkpoint_input_dir")
    if not (path / "config.json").is_file():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(
                f"{path} is neither a checkpoint (no config.json) nor a run folder with step_<N> checkpoints; "
                f"point training.checkpoint_input_dir at a step_<N> folder or a Hugging Face model folder"
            )
        path = latest
    if not any((path / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        raise CheckpointError(
            f"checkpoint {path} has config.json but no model.safetensors, so it is incomplete; point to another "
            f"step_<N> folder of the run, or save the model again"
        )
    return path


def prepare_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Create the run folder, refusing to write over an earlier run unless asked to.

    With `resume`, an existing run is continued. With `overwrite`, its checkpoints and metrics are
    deleted first (and logged). Otherwise an existing run is an error.
    """
    run_dir = Path(run_dir)
    earlier = list_checkpoints(run_dir)
    has_metrics = (run_dir / METRICS_FILE).is_file()
    if (earlier or has_metrics) and not resume:
        if not overwrite:
            found = f"checkpoints up to step_{earlier[-1][0]}" if earlier else METRICS_FILE
            raise CheckpointError(
                f"{run_dir} already contains a run ({found}); set training.resume_training_from_checkpoint "
                f"true to continue it, choose another training.checkpoint_output_dir, or set "
                f"training.overwrite_output_dir true to replace it"
            )
        logger.warning("Deleting the earlier run in %s (training.overwrite_output_dir is true)", run_dir)
        for _, folder in earlier:
            shutil.rmtree(folder)
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model,
    training_state: dict,
    run_config,
    tokenizer_dir: str | Path | None,
) -> Path:
    """Write `step_<step>` atomically and return its path."""
    run_dir = Path(run_dir)
    final = run_dir / f"step_{step}"
    if final.exists():
        raise CheckpointError(f"{final} already exists; a checkpoint is never overwritten")
    temporary = run_dir / f".step_{step}.partial-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir(parents=True)

    model.save_pretrained(temporary, safe_serialization=True)
    torch.save(training_state, temporary / TRAINING_STATE_FILE)
    run_config.save(temporary / RUN_CONFIG_FILE)
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, temporary / TOKENIZER_FOLDER)
    _fsync_tree(temporary)
    os.replace(temporary, final)
    logger.info("Saved checkpoint %s", final)
    return final


def load_training_state(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / TRAINING_STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint} has no {TRAINING_STATE_FILE}, so training cannot resume from it because it contains "
            f"weights only. Set training.resume_training_from_checkpoint false to start a new schedule from its weights"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _fsync_tree(folder: Path) -> None:
    """Flush every file to disk and give it the usual permissions (some writers create owner-only files)."""
    mask = os.umask(0)
    os.umask(mask)
    for file in folder.rglob("*"):
        if file.is_file():
            os.chmod(file, 0o666 & ~mask)
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
