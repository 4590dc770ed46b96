"""Memory: the estimate of ``medssl pretrain``/``finetune``'s check against the measured peak (issue 14).

Each case runs in its own process: the command's memory check runs as in a user's run
(``medssl.training.memory_check``; its estimate is captured), then, for measured cases, a
few training steps; the process's peak resident set (``ru_maxrss``) is the measured peak.
Measured runs load in the main process (``--data.num_workers 0``), so the loader-worker
terms (zero then) take no part in the comparison; ``estimate_shipped`` gives the estimate with
the config's own workers. Cases "estimate only" stop after the check (a budget of 10 TiB
lets it pass): the big swin3d-B configs do not fit this machine.

Stores are phantoms built once under ``--out`` (tests/methods/phantom_data.py,
tests/data/labelled_store.py, tests/data/joint_store.py) with their caches, so no cache is
built during a measured run. Their plan crop is 32^3; the shipped configs without the smoke
overlays are run at the crop a CT store's plan gives (96^3, 2D 256^2: the default voxel
budgets of ``medssl.store.plan``) unless the config sets its own.

    python benchmarks/memory_estimate.py --out benchmarks/out/memory            # every case
    python benchmarks/memory_estimate.py --out /tmp/mem --only voco-smoke simclr-smoke

Prints a Markdown table (paste into benchmarks/RESULTS.md with the machine, the command and
the load) and writes ``results.json``. Not a test: nothing here is imported by medssl.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
PLAN_3D, PLAN_2D = ["--data.crop_size", "[96,96,96]"], ["--data.crop_size", "[256,256]"]


@dataclass(frozen=True)
class Case:
    name: str
    command: str  # pretrain | finetune
    configs: tuple[str, ...]
    store: str  # pretrain | labelled | joint
    extra: tuple[str, ...] = ()
    measure: bool = True


def _cfg(*names: str) -> tuple[str, ...]:
    return tuple(f"configs/{n}.yaml" for n in names)


CASES = [
    # shipped configs with the CPU smoke overlays: estimated and measured
    Case("voco-smoke", "pretrain", _cfg("pretrain/voco", "pretrain/smoke"), "pretrain"),
    Case("simclr-smoke", "pretrain", _cfg("pretrain/simclr", "pretrain/smoke"), "pretrain"),
    Case("swav-smoke", "pretrain", _cfg("pretrain/swav", "pretrain/smoke"), "pretrain"),
    Case("anatomy-smoke", "pretrain", _cfg("pretrain/anatomy", "pretrain/smoke"), "pretrain"),
    Case("joint2d3d-smoke2d", "pretrain", _cfg("pretrain/joint2d3d", "pretrain/smoke2d"), "joint"),
    Case("segmentation-smoke", "finetune", _cfg("finetune/segmentation", "finetune/smoke"), "labelled"),
    Case("segmentation-smoke2d", "finetune", _cfg("finetune/segmentation", "finetune/smoke2d"), "labelled"),
    Case("detection-smoke", "finetune", _cfg("finetune/detection", "finetune/smoke"), "labelled"),
    # the labelled phantom's classes have no guideline text in configs/guidelines: estimate only
    Case("classification-smoke", "finetune", _cfg("finetune/classification", "finetune/smoke"), "labelled", (), False),
    # the smoke overlays at larger crops and batches: the step dominates the process
    Case("voco-smoke-128", "pretrain", _cfg("pretrain/voco", "pretrain/smoke"), "pretrain", ("--data.crop_size", "[256,256,64]", "--data.batch_size", "2")),
    Case("simclr-smoke-96", "pretrain", _cfg("pretrain/simclr", "pretrain/smoke"), "pretrain", ("--data.crop_size", "[96,96,96]", "--data.batch_size", "4")),
    Case("segmentation-smoke-96", "finetune", _cfg("finetune/segmentation", "finetune/smoke"), "labelled", ("--data.crop_size", "[96,96,96]", "--data.batch_size", "4")),
    # swin3d-B, cut down until a few steps run on this machine
    Case("simclr-swinB-64", "pretrain", _cfg("pretrain/simclr"), "pretrain", ("--data.crop_size", "[64,64,64]", "--data.batch_size", "1", "--data.crops_per_volume", "1")),
    Case("simclr-swinB-64-ckpt", "pretrain", _cfg("pretrain/simclr"), "pretrain", ("--data.crop_size", "[64,64,64]", "--data.batch_size", "1", "--data.crops_per_volume", "1", "--model.init_args.backbone_kwargs", "{size: b, use_checkpoint: true}")),
    Case("segmentation-swinB-64", "finetune", _cfg("finetune/segmentation"), "labelled", ("--data.crop_size", "[64,64,64]", "--data.batch_size", "1")),
    # shipped fine-tuning configs as they are (a CT plan's crop), run: they fit this machine
    Case("segmentation-run", "finetune", _cfg("finetune/segmentation"), "labelled", tuple(PLAN_3D)),
    Case("detection-run", "finetune", _cfg("finetune/detection"), "labelled", tuple(PLAN_3D)),
    # shipped configs as they are (a CT plan's crop): estimate only
    Case("voco", "pretrain", _cfg("pretrain/voco"), "pretrain", (), False),
    Case("simclr", "pretrain", _cfg("pretrain/simclr"), "pretrain", tuple(PLAN_3D), False),
    Case("swav", "pretrain", _cfg("pretrain/swav"), "pretrain", (), False),
    Case("anatomy", "pretrain", _cfg("pretrain/anatomy"), "pretrain", (), False),
    Case("joint2d3d", "pretrain", _cfg("pretrain/joint2d3d"), "joint", tuple(PLAN_2D), False),
    Case("segmentation", "finetune", _cfg("finetune/segmentation"), "labelled", tuple(PLAN_3D), False),
    Case("detection", "finetune", _cfg("finetune/detection"), "labelled", tuple(PLAN_3D), False),
    Case("classification", "finetune", _cfg("finetune/classification"), "labelled", tuple(PLAN_3D), False),
]


@dataclass
class Result:
    name: str
    estimate: int = 0
    terms: dict = field(default_factory=dict)
    estimate_shipped: int = 0
    peak: int = 0
    baseline: int = 0
    rc: int = 0
    wall_s: float = 0.0
    error: str = ""


def build_stores(out: Path) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT))
    from medssl.data.finetune import FinetuneDataModule
    from medssl.data.joint import JointDataModule
    from tests.data.joint_store import joint_store
    from tests.data.labelled_store import write_labelled_store
    from tests.methods.phantom_data import phantom_store

    stores = {"pretrain": out / "store", "labelled": out / "labelled", "joint": out / "joint"}
    if not (stores["pretrain"] / "plan.json").is_file():
        phantom_store(stores["pretrain"])
    if not (stores["labelled"] / "plan.json").is_file():
        write_labelled_store(stores["labelled"])
        for task in ("segmentation", "detection", "classification"):
            FinetuneDataModule(str(stores["labelled"]), task=task, num_workers=0, progress=False).prepare_data()
    if not (stores["joint"] / "plan.json").is_file():
        joint_store(stores["joint"])
        JointDataModule(str(stores["joint"]), num_workers=0, progress=False).prepare_data()
    return stores


def child(spec: dict) -> None:
    """In the case's own process: run the command, capture the check's estimate, print JSON."""
    import medssl.training.cli as training_cli
    from medssl.memory.budget import resident_bytes

    result = {"estimate": 0, "terms": {}, "baseline": 0}
    check = training_cli.check_memory

    def capture(config, plan, auto_fit=False, budget_gb=None):
        estimate = check(config, plan, auto_fit, budget_gb)
        result.update(estimate=estimate.total, terms=estimate.terms, baseline=resident_bytes())
        if not spec["measure"]:
            raise SystemExit(0)
        return estimate

    training_cli.check_memory = capture
    module = "medssl.methods.cli" if spec["command"] == "pretrain" else "medssl.tasks.cli"
    main = getattr(__import__(module, fromlist=["x"]), f"{spec['command']}_main")
    start = time.perf_counter()
    try:
        rc = main(spec["argv"])
    except SystemExit as exit_:
        rc = int(exit_.code or 0)
    result.update(rc=rc, wall_s=time.perf_counter() - start, peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print("RESULT " + json.dumps(result))


def run_case(case: Case, stores: dict[str, Path], out: Path, steps: int) -> Result:
    runs = out / "runs" / case.name
    configs = [a for c in ("configs/trainer/cpu.yaml", *case.configs) for a in ("-c", str(ROOT / c))]
    argv = [*configs, "--data.store", str(stores[case.store]), *case.extra, "--trainer.max_steps", str(steps)]
    argv += ["--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(runs)]
    if case.command == "finetune":  # no validation inside the few measured steps
        argv += ["--trainer.val_check_interval", "1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = Result(case.name)
    shipped = _estimate(argv, case, env)  # the config's own loader workers
    result.estimate_shipped = shipped.get("estimate", 0)
    measured_argv = [*argv, "--data.num_workers", "0"] if case.measure else [*argv, "--memory-budget", "10240"]
    spec = {"argv": measured_argv, "command": case.command, "measure": case.measure}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        result.error = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return result
    data = json.loads(lines[-1][len("RESULT ") :])
    for key in ("estimate", "terms", "peak", "baseline", "rc", "wall_s"):
        setattr(result, key, data.get(key, getattr(result, key)))
    if not case.measure:
        result.peak = 0
    return result


def _estimate(argv: list[str], case: Case, env: dict) -> dict:
    spec = {"argv": [*argv, "--memory-budget", "10240"], "command": case.command, "measure": False}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT ") :]) if lines else {}


def table(results: list[Result]) -> str:
    rows = [
        "| case | estimate (GiB) | measured peak (GiB) | error | above the process at the check: estimate / measured (GiB) | error | estimate with the config's workers (GiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.error:
            rows.append(f"| {r.name} | – | – | failed: {r.error} | | | |")
            continue
        if not r.peak:
            rows.append(f"| {r.name} | {r.estimate / GIB:.2f} | not run | – | {(r.estimate - r.baseline) / GIB:.2f} / – | – | {r.estimate_shipped / GIB:.2f} |")
            continue
        above, measured_above = r.estimate - r.baseline, r.peak - r.baseline
        rows.append(
            f"| {r.name} | {r.estimate / GIB:.2f} | {r.peak / GIB:.2f} | {(r.estimate - r.peak) / r.peak:+.0%} "
            f"| {above / GIB:.2f} / {measured_above / GIB:.2f} | {(above - measured_above) / max(measured_above, 1):+.0%} | {r.estimate_shipped / GIB:.2f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/memory")
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    stores = build_stores(args.out)
    sys.path.insert(0, str(ROOT))
    from benchmarks.machine import describe

    results = []
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        result = run_case(case, stores, args.out, args.steps)
        results.append(result)
        print(f"{case.name}: estimate {result.estimate / GIB:.2f} GiB, peak {result.peak / GIB:.2f} GiB {result.error}", file=sys.stderr, flush=True)
    (args.out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(f"machine: {describe()}; load average {os.getloadavg()[0]:.1f}; OMP_NUM_THREADS=1\n")
    print(table(results))


if __name__ == "__main__":
    main()
