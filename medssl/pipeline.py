"""``medssl pipeline FILE``: run the stages of a YAML recipe in order.

A recipe lists stages; each stage names a ``medssl`` subcommand and its options by the
names the command line uses, so a recipe is exactly a sequence of commands a person
could type, checked against the real parser (an unknown option fails before anything runs)::

    stages:
      - ingest:
          sources: [data/demo/dicom, data/demo/nifti]   # positional arguments by name
          out: demo-out/store
          workers: 2
          irregular: resample
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from rich.console import Console

from medssl.errors import ConfigError


def load_stages(path: Path, parser: argparse.ArgumentParser) -> list[tuple[str, list[str]]]:
    """``(command, argv)`` for every stage, validated against ``parser``."""
    try:
        recipe = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"pipeline {path}: cannot read ({type(exc).__name__})") from None
    stages = recipe.get("stages") if isinstance(recipe, dict) else None
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"pipeline {path}: expected a non-empty 'stages' list")
    commands = _subparsers(parser)
    out = []
    for number, stage in enumerate(stages, 1):
        if not isinstance(stage, dict) or len(stage) != 1:
            raise ConfigError(f"pipeline {path}: stage {number} must be a mapping of one command to its options")
        (command, options), = stage.items()
        if command not in commands:
            raise ConfigError(f"pipeline {path}: stage {number}: unknown command '{command}' (known: {', '.join(sorted(commands))})")
        where = f"pipeline {path}: stage {number} ({command})"
        if _is_passthrough(commands[command]):  # the stage's own parser validates when it runs
            out.append((command, [command, *_passthrough_argv(options or {}, where)]))
            continue
        argv = [command, *_argv(commands[command], options or {}, where)]
        commands[command].parse_args(argv[1:])  # fail now on a bad value, not halfway through
        out.append((command, argv))
    return out


def run_pipeline(path: Path, parser: argparse.ArgumentParser, main: Callable[[list[str]], int]) -> int:
    """Run each stage through ``main`` (the CLI entry point that built ``parser``)."""
    console = Console(stderr=True)
    stages = load_stages(path, parser)
    for number, (command, argv) in enumerate(stages, 1):
        console.rule(f"[bold]stage {number}/{len(stages)}: {command}")
        start = time.perf_counter()
        code = main(argv)
        if code != 0:
            console.print(f"[red]stage {number} ({command}) failed with exit code {code}; later stages not run")
            return code
        console.print(f"stage {number} ({command}) done in {time.perf_counter() - start:.1f} s")
    return 0


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            return {name: sub for name, sub in action.choices.items() if name != "pipeline"}
    return {}


def _is_passthrough(sub: argparse.ArgumentParser) -> bool:
    return any(a.nargs == argparse.REMAINDER for a in sub._actions)


def _passthrough_argv(options: dict, where: str) -> list[str]:
    """Options of a stage with its own parser: ``positional`` first, ``config`` as ``-c``
    files, every other key as ``--key value`` (dotted keys as LightningCLI spells them)."""
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: options must be a mapping")
    argv = [str(v) for v in _as_list(options.get("positional", []))]
    for config in _as_list(options.get("config", [])):
        argv += ["-c", str(config)]
    for key, value in options.items():
        if key in ("positional", "config"):
            continue
        flag = "--" + str(key).lstrip("-")
        if value is True and "." not in str(key):
            argv.append(flag)  # a plain switch such as --no-plan
        elif isinstance(value, list) and "." in str(key):
            argv += [flag, json.dumps(value)]  # LightningCLI parses a JSON list
        elif isinstance(value, list):
            argv += [flag, *(str(v) for v in value)]  # argparse nargs="+"
        else:
            argv += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    return argv


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _argv(sub: argparse.ArgumentParser, options: dict, where: str) -> list[str]:
    actions = {a.dest: a for a in sub._actions if a.dest != "help"}
    positional, flags = [], []
    for key, value in options.items():
        dest = str(key).lstrip("-").replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise ConfigError(f"{where}: unknown option '{key}'")
        values = value if isinstance(value, list) else [value]
        if not action.option_strings:
            positional.extend(str(v) for v in values)
        elif isinstance(action, argparse._StoreTrueAction):
            if value:
                flags.append(action.option_strings[-1])
        elif isinstance(action, argparse._AppendAction):
            for v in values:
                flags.extend([action.option_strings[-1], str(v)])
        elif isinstance(value, list) and action.nargs not in (None, "?"):
            flags.extend([action.option_strings[-1], *(str(v) for v in values)])  # nargs=3, "+"
        else:
            flags.extend([action.option_strings[-1], str(value)])
    return positional + flags
