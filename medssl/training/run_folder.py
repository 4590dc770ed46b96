"""A run folder holds one run: it is resumed on request and never overwritten silently.

Lightning starts a fresh run in a folder that already holds one, with only a warning: it
replaces ``last.ckpt`` (step 240 by step 4) and deletes ``metrics.csv``. :func:`plan_run`
decides, before the trainer exists, what a command does with ``RUNS/<model>/<run_name>``:

- the folder is new or empty: a fresh run (or a run from ``--ckpt_path`` elsewhere);
- ``--resume``: continue from that folder's ``checkpoints/last.ckpt`` (else its newest
  checkpoint); a folder without any starts at step 0, said in the log, so a pipeline step or
  an interrupted harness run can be rerun as is;
- ``--ckpt_path`` to a checkpoint inside that folder: continue from it;
- anything else in a folder that holds a run: refused, naming the folder and how to resume.

A resumed run keeps ``metrics.csv`` (rows before the checkpoint's step, new rows appended:
:class:`medssl.training.tracking.ResumingCSVLogger`).
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from medssl.errors import ConfigError

__all__ = ["RunStart", "checkpoint_step", "holds_run", "plan_run", "run_name_of"]

log = logging.getLogger("medssl.train")
LAST = Path("checkpoints") / "last.ckpt"


@dataclass(frozen=True)
class RunStart:
    """What a command does: ``ckpt_path`` None starts fresh; ``resume_step`` is its step."""

    ckpt_path: str | None
    resume_step: int | None


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a run: ``metrics.csv`` or a checkpoint."""
    return (folder / "metrics.csv").is_file() or bool(_checkpoints(folder))


def run_name_of(ckpt_path: str | None, model_root: Path) -> str | None:
    """The run a checkpoint belongs to when it is ``model_root/<run>/checkpoints/*.ckpt``."""
    if ckpt_path is None:
        return None
    path = Path(ckpt_path).expanduser().resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.parent == model_root.resolve():
        return path.parent.parent.name
    return None


def checkpoint_step(ckpt_path: str) -> int | None:
    """The ``global_step`` a checkpoint holds; None when it keeps it in pickled objects.

    Raises:
        ConfigError: the file is not a whole checkpoint (truncated, or not one at all).
    """
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:  # objects outside the weights-only set: Lightning loads it
        return None
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, OSError ...
        raise ConfigError(
            f"--ckpt_path {ckpt_path}: not a readable checkpoint ({type(err).__name__}; "
            "truncated or not written by medssl?)"
        ) from None
    step = state.get("global_step") if isinstance(state, dict) else None
    return int(step) if isinstance(step, int) else None


def plan_run(folder: Path | None, ckpt_path: str | None, resume: bool) -> RunStart:
    """Decide fresh start, resume or refusal for the run folder ``folder``.

    folder: ``RUNS/<model>/<run_name>``; None when the run gets the next ``version_N``
    (a new folder). ckpt_path: ``--ckpt_path`` (already checked to exist).

    Raises:
        ConfigError: in one line, naming the folder and how to resume: the folder holds a run
            and neither ``--resume`` nor a checkpoint of its own was given; ``--resume``
            without a run name or together with ``--ckpt_path``; an unreadable checkpoint.
    """
    if resume and ckpt_path:
        raise ConfigError(
            "--resume and --ckpt_path: give one (--resume continues from RUN/checkpoints/last.ckpt)"
        )
    if folder is None:
        if resume:
            raise ConfigError("--resume needs --run_name: the run folder to continue")
        return RunStart(ckpt_path, checkpoint_step(ckpt_path) if ckpt_path else None)
    last = folder / LAST
    if resume:
        newest = last if last.is_file() else _newest_checkpoint(folder)
        if newest is not None:
            return RunStart(str(newest), checkpoint_step(str(newest)))
        if holds_run(folder):
            log.warning(
                "--resume: run folder %s holds no checkpoint; starting it again at step 0", folder
            )
        return RunStart(None, 0)  # metrics.csv keeps nothing, as a fresh run
    if holds_run(folder) and not _inside(ckpt_path, folder):
        raise ConfigError(
            f"run folder {folder} already holds a run; continue it with --resume (from its last "
            "checkpoint) or --ckpt_path FILE, or choose another --run_name"
        )
    return RunStart(ckpt_path, checkpoint_step(ckpt_path) if ckpt_path else None)


def _checkpoints(folder: Path) -> list[Path]:
    """The run's checkpoints, without the hidden temporary files of a write a kill cut short."""
    return [p for p in (folder / "checkpoints").glob("*.ckpt") if not p.name.startswith(".")]


def _newest_checkpoint(folder: Path) -> Path | None:
    found = sorted(_checkpoints(folder), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _inside(ckpt_path: str | None, folder: Path) -> bool:
    if ckpt_path is None:
        return False
    return folder.resolve() in Path(ckpt_path).expanduser().resolve().parents
