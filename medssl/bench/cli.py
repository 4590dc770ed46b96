"""``medssl bench label-efficiency``: run the harness, then write its table and plot;
``medssl bench probe``: kNN / linear-probe accuracy of exported encoders on one probe set.

    medssl bench label-efficiency --store STORE --out OUT --tasks segmentation classification \\
        --fractions 0.1 0.5 1 --seeds 0 1 2 --encoder voco=ARTIFACT [--encoder monai=ARTIFACT] \\
        [--encoder supervised=ARTIFACT --control supervised] \\
        --max-steps 200 [--trainer-config configs/trainer/cpu.yaml] \\
        [--task-config segmentation=configs/finetune/segmentation.yaml,configs/finetune/smoke.yaml] \\
        [-- --data.batch_size 4 ...]

``--task-config TASK=A,B,...`` gives a task's config list, passed in order after the trainer's
(later files win; default ``configs/finetune/TASK.yaml``); entries for one task add up in
order; an entry whose value is an inline YAML mapping (``TASK={model: {init_args: {lr: 3.0e-3}}}``,
as ``-c`` takes) is one item, commas and all. Arguments after ``--`` go to every
``medssl finetune`` run unchanged. ``--control NAME`` marks one ``--encoder`` as the positive
control, pretrained with labels: the report says whether it beat scratch and, if it did not at
the lowest fraction, that the harness's other verdicts are not evidence.

    medssl bench probe --probe-set PROBE.safetensors --out OUT --encoder voco=ARTIFACT \
        anatomy=ARTIFACT joint2d3d=ARTIFACT [--scratch-seeds 0 1 2] [--no-scratch]
"""

from __future__ import annotations

import argparse

from medssl.bench.label_efficiency import HEADLINE, HarnessConfig, read_results, run_harness
from medssl.bench.probe import compare_encoders, probe_table, write_probe_report
from medssl.bench.report import write_report
from medssl.errors import ConfigError
from medssl.types import TaskKind


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medssl bench", description="Experiments across many runs.")
    sub = p.add_subparsers(dest="bench", required=True)
    le = sub.add_parser("label-efficiency", help="pretrained vs from-scratch fine-tuning at several label fractions")
    le.add_argument("--store", required=True, help="a store with labels (medssl ingest --labels)")
    le.add_argument("--out", required=True, help="folder for runs/, results.csv, table.md, plot.png")
    le.add_argument("--tasks", nargs="+", default=[str(TaskKind.SEGMENTATION)], choices=sorted(str(t) for t in TaskKind))
    le.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.5, 1.0])
    le.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    le.add_argument("--encoder", action="extend", nargs="+", default=[], metavar="NAME=ARTIFACT", help="pretrained encoder(s) to compare (repeatable)")
    le.add_argument("--control", default=None, metavar="NAME", help="the --encoder pretrained with labels that must beat scratch (positive control)")
    le.add_argument("--no-scratch", action="store_true", help="leave out the from-scratch baseline")
    le.add_argument("--max-steps", type=int, default=100, help="optimiser steps per run (the same budget for every run)")
    le.add_argument("--trainer-config", action="append", default=None, help="trainer config(s) (default configs/trainer/cpu.yaml)")
    le.add_argument("--task-config", action="extend", nargs="+", default=[], metavar="TASK=FILE[,FILE...]", help="a task's config list, in order (repeatable; entries add up)")
    le.add_argument("extra", nargs="*", help="after --: arguments for every finetune run")
    pr = sub.add_parser("probe", help="kNN and linear-probe accuracy of exported encoders on one probe set")
    pr.add_argument("--probe-set", required=True, help="a probe set (medssl probe-set)")
    pr.add_argument("--out", required=True, help="folder for probe.csv and probe.md")
    pr.add_argument("--encoder", action="extend", nargs="+", default=[], metavar="NAME=ARTIFACT", help="exported encoder(s) to compare (repeatable)")
    pr.add_argument("--no-scratch", action="store_true", help="leave out the freshly initialised baselines")
    pr.add_argument("--scratch-seeds", nargs="+", type=int, default=[0, 1, 2])
    pr.add_argument("--k", type=int, default=20, help="neighbours of the kNN probe")
    pr.add_argument("--linear-steps", type=int, default=300, help="optimiser steps of the linear probe")
    return p


def bench_main(argv: list[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.bench == "probe":
        return _probe(args)
    config = HarnessConfig(
        store=args.store,
        out=args.out,
        tasks=tuple(args.tasks),
        fractions=tuple(args.fractions),
        seeds=tuple(args.seeds),
        encoders=_pairs(args.encoder, "--encoder"),
        scratch=not args.no_scratch,
        max_steps=args.max_steps,
        trainer_configs=tuple(args.trainer_config or ["configs/trainer/cpu.yaml"]),
        task_configs=_task_configs(args.task_config),
        extra_args=tuple(args.extra),
        control=args.control,
    )
    results = run_harness(config)
    rows = read_results(results)
    table, png = write_report(rows, HEADLINE, results.parent)
    print(table.read_text())
    print(f"results {results}; table {table}; comparison {table.parent / 'comparison.csv'}; plot {png or 'not written (no matplotlib)'}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    rows = compare_encoders(
        args.probe_set,
        _pairs(args.encoder, "--encoder"),
        scratch=not args.no_scratch,
        scratch_seeds=tuple(args.scratch_seeds),
        k=args.k,
        linear_steps=args.linear_steps,
    )
    csv_path, table = write_probe_report(rows, args.out)
    print(probe_table(rows))
    print(f"results {csv_path}; table {table}")
    return 0


def _task_configs(values: list[str]) -> dict[str, tuple[str, ...]]:
    """``TASK=A,B`` entries as each task's config list, in order; an inline YAML mapping
    (``TASK={...}``) is one item."""
    out: dict[str, tuple[str, ...]] = {}
    for value in values:
        task, sep, configs = value.partition("=")
        items = [configs] if configs.lstrip().startswith("{") else [c.strip() for c in configs.split(",")]
        if not sep or not task or not all(items):
            raise ConfigError(f"--task-config {value!r}: expected TASK=FILE[,FILE...]")
        out[task] = (*out.get(task, ()), *items)
    return out


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} {value!r}: expected NAME=PATH")
        out[name] = path
    return out
