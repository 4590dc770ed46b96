"""Spec (issue 15, item 8): symbolic links out of the given sources are refused, never read.

Before: a folder of links to ``/etc/shadow`` and ``/proc/self/environ`` was read (then
refused as not an image). Now such a link is a ``link_outside`` row and the file behind it
is never opened; ``--follow-links`` reads it; a link to another given source is read.
"""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest

from medssl.cli import main
from tests.store import dicom_factory as f
from tests.store import store_view as sv
from tests.store.ingest_run import run


@pytest.fixture
def tree(tmp_path) -> Path:
    """``src`` holds one real slice and links to a slice outside it, to /proc and to nowhere."""
    outside = tmp_path / "elsewhere"
    f.write(f.make_series(1), outside)
    src = tmp_path / "src"
    f.write(f.make_series(1), src)
    (src / "to_outside.dcm").symlink_to(outside / "slice000.dcm")
    (src / "to_environ").symlink_to("/proc/self/environ")
    (src / "dangling.dcm").symlink_to(src / "missing.dcm")
    (src / "inside.dcm").symlink_to(src / "slice000.dcm")  # the same file twice: read once
    return tmp_path


def _opened(monkeypatch) -> list[str]:
    seen, real = [], builtins.open

    def recording(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            seen.append(os.path.realpath(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording)
    return seen


def test_links_out_of_the_sources_are_rows_and_never_opened(tree, monkeypatch):
    opened = _opened(monkeypatch)
    summary = run(tree / "src", tree / "store")
    codes = sorted(r["code"] for r in sv.rejected(tree / "store"))
    assert codes == ["link_outside", "link_outside", "unreadable"]
    assert summary.written == 1
    assert not any(p.startswith((str(tree / "elsewhere"), "/proc")) for p in opened)
    assert all(
        "--follow-links" in r["message"]
        for r in sv.rejected(tree / "store")
        if r["code"] == "link_outside"
    )


def test_a_link_into_another_given_source_is_read(tree):
    summary = run([tree / "src", tree / "elsewhere"], tree / "store")
    assert sorted(r["code"] for r in sv.rejected(tree / "store")) == [
        "link_outside",
        "unreadable",
    ]  # /proc, dangling
    assert summary.written == 2  # the two series; the linked slice is the outside one, read once


def test_follow_links_reads_them(tree):
    summary = run(tree / "src", tree / "store", follow_links=True)
    assert summary.written == 2
    assert sorted(r["code"] for r in sv.rejected(tree / "store")) == [
        "not_an_image",
        "unreadable",
    ]  # environ, dangling


def test_the_cli_flag(tree, capsys):
    key = tree / "key"
    assert (
        main(
            [
                "ingest",
                str(tree / "src"),
                "--out",
                str(tree / "store"),
                "--key-file",
                str(key),
                "--no-progress",
                "--follow-links",
            ]
        )
        == 0
    )
    assert len(sv.volumes(tree / "store")) == 2
