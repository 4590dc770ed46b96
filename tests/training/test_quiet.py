"""What a training run prints: no Lightning advertisements, no deprecation warnings from library
internals, and a progress bar counting steps of max_steps (not "Epoch 0/-2").

The run is a subprocess, so the test process's own warning filters (conftest) hide nothing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import yaml

from medssl.training.quiet import quiet_lightning

ROOT = Path(__file__).resolve().parents[2]
RUN = textwrap.dedent(
    """
    import sys
    from medssl.training.cli import MedsslCLI, build_cli, fit_main
    from tests.training.tiny import TinyRegression

    class TinyCLI(MedsslCLI):
        default_data = "tests.training.tiny.TinyData"

    build = lambda argv: build_cli(TinyCLI, TinyRegression, argv, prog="tiny", description="tiny")
    sys.exit(fit_main(build, sys.argv[1:], "tiny"))
    """
)


def test_a_run_prints_no_tips_no_deprecations_and_a_bar_of_steps(tmp_path):
    config = tmp_path / "config.yaml"
    trainer = {"accelerator": "cpu", "max_steps": 6, "log_every_n_steps": 1, "default_root_dir": str(tmp_path / "runs")}
    config.write_text(yaml.safe_dump({"model": {"class_path": "tests.training.tiny.TinyRegression"}, "trainer": trainer}))
    proc = subprocess.run(
        [sys.executable, "-c", RUN, "-c", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Tip" not in out and "litlogger" not in out
    assert "deprecated" not in out.lower()
    assert "Epoch 0/-2" not in out and "v_num" not in out
    assert "train" in out and "6/6" in out  # the 4 batches of the tiny data, 1.5 epochs


def test_the_filters_name_a_module_so_the_same_message_elsewhere_still_shows():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        message = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
        warnings.warn_explicit(message, FutureWarning, "_pytree.py", 21, module="lightning.pytorch.utilities._pytree")
        warnings.warn_explicit(message, FutureWarning, "mine.py", 1, module="medssl.mine")
    assert [w.filename for w in caught] == ["mine.py"]
