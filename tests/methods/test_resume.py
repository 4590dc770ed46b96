"""Resume: stop a pretraining run after its step-3 checkpoint, resume, get the same losses.

Runs ``medssl pretrain`` (``pretrain_main``) on the step-keyed synthetic data module
(tests/methods/synthetic.py), so the model, optimiser, schedule, EMA teacher, step counters
and the method's own sampling must all come back exactly.

The default suite stops runs in-process (an exception after the checkpoint, or a real SIGTERM
to the test process while Lightning's handler is installed) and resumes them in-process, a
few seconds each. The ``slow`` twins do the same to subprocesses (kill -9, SIGTERM from
outside, exit status 143), ~20-40 s each on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from medssl.errors import ConfigError
from medssl.methods.cli import pretrain_main
from medssl.training.cli import SIGTERM_EXIT
from tests.methods.synthetic import TINY_BACKBONES, TINY_HEADS

ROOT = Path(__file__).resolve().parents[2]
MODELS = {
    "voco": {
        "class_path": "medssl.methods.VoCo",
        "init_args": {"grid_size": 2, "form": "extended"},
    },
    "swav": {
        "class_path": "medssl.methods.SwAV",
        "init_args": {"num_prototypes": 8, "num_local_crops": 2, "freeze_prototypes_steps": 4},
    },
    "simclr": {"class_path": "medssl.methods.SimCLR", "init_args": {}},
}


def write_config(folder: Path, method: str, pause_at: int | None = None) -> Path:
    model = MODELS[method]
    model["init_args"].update(
        {
            "backbone": "resenc3d",
            "backbone_kwargs": TINY_BACKBONES["resenc3d"],
            "warmup_steps": 2,
            "lr": 1e-3,
            **TINY_HEADS,
        }
    )
    callbacks = [
        {
            "class_path": "tests.methods.run_helpers.RecordLosses",
            "init_args": {"path": str(folder / "losses.jsonl")},
        }
    ]
    if pause_at is not None:
        callbacks.append(
            {
                "class_path": "tests.methods.run_helpers.PauseAtStep",
                "init_args": {"step": pause_at, "marker": str(folder / "paused")},
            }
        )
    config = {
        "model": model,
        "data": {
            "class_path": "tests.methods.synthetic.SyntheticCrops",
            "init_args": {"step_keyed": True, "num_batches": 4, "views": 0},
        },
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 6,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(folder / "runs"),
            "callbacks": callbacks,
        },
        "checkpoint": {"every_n_train_steps": 3},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(config: Path, *extra: str) -> list[str]:
    code = "import sys; from medssl.methods.cli import pretrain_main; sys.exit(pretrain_main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "-c", str(config), *extra]


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def losses(folder: Path) -> dict[int, float]:
    return {
        r["step"]: r["loss"]
        for r in map(json.loads, (folder / "losses.jsonl").read_text().splitlines())
    }


def with_callback(config: Path, class_path: str, **init_args) -> Path:
    """A copy of ``config`` (``stopping.yaml`` beside it) whose trainer also runs that callback."""
    data = yaml.safe_load(config.read_text())
    data["trainer"]["callbacks"].append({"class_path": class_path, "init_args": init_args})
    out = config.with_name("stopping.yaml")
    out.write_text(yaml.safe_dump(data))
    return out


def assert_same_losses_after(step: int, whole: Path, resumed: Path) -> None:
    """Both runs logged steps 1..6 and agree on every step after ``step`` to 1e-6."""
    expected, got = losses(whole), losses(resumed)
    assert sorted(expected) == sorted(got) == [1, 2, 3, 4, 5, 6]
    for s in range(step + 1, 7):
        assert got[s] == pytest.approx(expected[s], abs=1e-6, rel=0), (s, got, expected)


@pytest.mark.parametrize(
    "method",
    [
        "voco",  # EMA teacher
        "swav",  # prototypes frozen for the first steps, multi-crop sampling
    ],
)
def test_a_run_stopped_after_its_step_3_checkpoint_resumes_to_the_same_losses(method, tmp_path):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    whole.mkdir(), stopped.mkdir()
    assert pretrain_main(["-c", str(write_config(whole, method))]) == 0

    config = write_config(stopped, method)
    crashing = with_callback(config, "tests.methods.run_helpers.CrashAtStep", step=3)
    with pytest.raises(RuntimeError, match="crash before step 4"):
        pretrain_main(["-c", str(crashing)])
    assert sorted(losses(stopped)) == [1, 2, 3]
    checkpoint = next((stopped / "runs").rglob("step=3.ckpt"))
    assert pretrain_main(["-c", str(config), "--ckpt_path", str(checkpoint)]) == 0
    assert_same_losses_after(3, whole, stopped)


@pytest.mark.slow  # three subprocesses per method, ~20 s each on 2 cores
@pytest.mark.parametrize(
    "method",
    [
        "voco",  # EMA teacher
        "swav",  # prototypes frozen for the first steps, multi-crop sampling
        "simclr",
    ],
)
def test_kill_9_after_a_checkpoint_then_resume_gives_the_same_losses(method, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    uninterrupted = subprocess.Popen(
        command(write_config(whole, method)),
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    proc = subprocess.Popen(
        command(write_config(killed, method, pause_at=3)),
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (killed / "paused").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never reached step 3"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    checkpoint = next((killed / "runs").rglob("step=3.ckpt"))
    assert sorted(losses(killed)) == [1, 2, 3]

    resumed = subprocess.run(
        check=False,
        args=command(write_config(killed, method), "--ckpt_path", str(checkpoint)),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err[-3000:]

    expected, got = losses(whole), losses(killed)
    assert sorted(expected) == sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(expected[step], abs=1e-6, rel=0), (step, got, expected)


def test_resuming_from_a_missing_checkpoint_is_an_error(tmp_path):
    config = write_config(tmp_path, "simclr")
    with pytest.raises(
        ConfigError, match="no such checkpoint file; refusing to start from scratch"
    ):
        pretrain_main(["-c", str(config), "--ckpt_path", str(tmp_path / "nope.ckpt")])
    with pytest.raises(ConfigError, match="give the checkpoint file itself"):
        pretrain_main(["-c", str(config), "--ckpt_path", "last"])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "losses.jsonl").exists()


def test_sigterm_saves_a_checkpoint_returns_143_and_the_run_resumes_to_the_same_losses(tmp_path):
    """A real SIGTERM reaches Lightning's handler in this process during step 2: the step
    finishes, ``sigterm-step=2.ckpt`` is written, the command returns 143, and the resumed run
    continues as if never stopped."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    whole.mkdir(), stopped.mkdir()
    assert pretrain_main(["-c", str(write_config(whole, "simclr"))]) == 0

    config = write_config(stopped, "simclr")
    handler = signal.getsignal(signal.SIGTERM)
    terminated = with_callback(config, "tests.training.tiny.SigtermBeforeStep", step=1)
    assert pretrain_main(["-c", str(terminated)]) == SIGTERM_EXIT
    assert signal.getsignal(signal.SIGTERM) == handler  # Lightning put the old handler back
    saved = sorted((stopped / "runs").rglob("sigterm-step=*.ckpt"))
    assert [p.name for p in saved] == ["sigterm-step=2.ckpt"]
    import torch

    assert torch.load(saved[0], weights_only=True)["global_step"] == 2
    assert sorted(losses(stopped)) == [1, 2]  # nothing trained after the saved step

    assert pretrain_main(["-c", str(config), "--ckpt_path", str(saved[0])]) == 0
    assert_same_losses_after(2, whole, stopped)


@pytest.mark.slow  # two subprocesses, ~25 s on 2 cores
def test_sigterm_saves_a_checkpoint_and_exits_cleanly_then_the_run_resumes(tmp_path):
    config = write_config(tmp_path, "simclr")
    data = yaml.safe_load(config.read_text())
    data["trainer"]["max_steps"] = 1000
    data["trainer"]["callbacks"].append(
        {
            "class_path": "tests.methods.run_helpers.SlowSteps",
            "init_args": {"step": 2, "marker": str(tmp_path / "running")},
        }
    )
    config.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        command(config),
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (tmp_path / "running").exists():
        assert proc.poll() is None and time.monotonic() < deadline, (
            proc.stderr.read()[-3000:] if proc.poll() is not None else "timeout"
        )
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    saved = list((tmp_path / "runs").rglob("sigterm-step=*.ckpt"))
    assert len(saved) == 1
    import torch

    checkpoint = torch.load(saved[0], weights_only=True)
    step = checkpoint["global_step"]
    assert saved[0].name == f"sigterm-step={step}.ckpt" and step >= 2
    assert max(losses(tmp_path)) == step  # nothing trained after the saved step

    data["trainer"]["max_steps"] = step + 2
    data["trainer"]["callbacks"] = data["trainer"]["callbacks"][:1]
    config.write_text(yaml.safe_dump(data))
    resumed = subprocess.run(
        check=False,
        args=command(config, "--ckpt_path", str(saved[0])),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert max(losses(tmp_path)) == step + 2


def real_data_config(folder: Path, store: Path, pause_at: int | None = None) -> Path:
    """``write_config`` for SimCLR on the store's own PretrainDataModule instead of the stub."""
    config = write_config(folder, "simclr", pause_at=pause_at)
    data = yaml.safe_load(config.read_text())
    data["data"] = {
        "class_path": "medssl.data.pretrain.PretrainDataModule",
        "init_args": {"store": str(store), "crop_size": [16, 16, 8], "batch_size": 2, "num_workers": 0, "views": 2, "val_fraction": 0.0, "progress": False},
    }
    config.write_text(yaml.safe_dump(data))
    return config


def test_the_real_data_module_resumed_in_process_serves_the_crops_of_the_run_that_never_stopped(tmp_path):
    """The store's own PretrainDataModule (cache, crops, augmentation), not a step-keyed stub:
    Lightning restarts a plain loader's epoch on resume; StepSampler keys batches by step, so
    the resumed run's losses equal the uninterrupted run's."""
    from tests.data.synthetic_store import mixed_specs, write_store

    store = write_store(tmp_path / "store", mixed_specs(n_patients=3, per_patient=2))
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    whole.mkdir(), stopped.mkdir()
    assert pretrain_main(["-c", str(real_data_config(whole, store))]) == 0
    config = real_data_config(stopped, store)
    with pytest.raises(RuntimeError, match="crash before step 4"):
        pretrain_main(["-c", str(with_callback(config, "tests.methods.run_helpers.CrashAtStep", step=3))])
    checkpoint = next((stopped / "runs").rglob("step=3.ckpt"))
    assert pretrain_main(["-c", str(config), "--ckpt_path", str(checkpoint)]) == 0
    assert_same_losses_after(3, whole, stopped)


@pytest.mark.slow  # three subprocesses, ~40 s on 2 cores
def test_resume_with_the_real_data_module_continues_the_same_crop_stream(tmp_path):
    """The twin of the test above with a killed (-9) subprocess."""
    from tests.data.synthetic_store import mixed_specs, write_store

    store = write_store(tmp_path / "store", mixed_specs(n_patients=3, per_patient=2))

    def config_for(folder: Path, pause_at: int | None = None) -> Path:
        return real_data_config(folder, store, pause_at)

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    done = subprocess.run(command(config_for(whole)), cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    proc = subprocess.Popen(command(config_for(killed, pause_at=3)), cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (killed / "paused").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the run never reached step 3"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoint = next((killed / "runs").rglob("step=3.ckpt"))
    done = subprocess.run(command(config_for(killed), "--ckpt_path", str(checkpoint)), cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected, got = losses(whole), losses(killed)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(expected[step], abs=1e-6, rel=0), (step, got, expected)
