"""Intra-op threads follow the CPU share other work leaves; a user's own setting wins."""

from __future__ import annotations

import pytest

from medssl import threads
from medssl.threads import cgroup_cpus, choose_threads


@pytest.mark.parametrize(
    ("cpus", "load", "expected"),
    [(2, 0.0, 2), (2, 0.9, 2), (2, 1.2, 1), (2, 4.0, 1), (16, 3.5, 13), (16, 40.0, 1)],
)
def test_threads_are_the_cpus_the_load_leaves(cpus, load, expected):
    choice = choose_threads(cpus, load, {})
    assert (choice.threads, choice.reason) == (expected, "cpu share")


def test_a_users_setting_wins_and_a_bad_one_names_itself():
    assert choose_threads(2, 5.0, {"MEDSSL_THREADS": "2", "OMP_NUM_THREADS": "1"}).threads == 2
    assert choose_threads(2, 5.0, {"OMP_NUM_THREADS": "4"}).reason == "OMP_NUM_THREADS"
    with pytest.raises(ValueError, match="MEDSSL_THREADS='two'"):
        choose_threads(2, 0.0, {"MEDSSL_THREADS": "two"})
    with pytest.raises(ValueError, match="at least 1"):
        choose_threads(2, 0.0, {"OMP_NUM_THREADS": "0"})


def test_cgroup_quotas_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpus(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cgroup_cpus(tmp_path) is None


def test_a_pipeline_does_not_count_its_own_last_stage_as_other_work(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave the test process's threads alone
    clock = {"wall": 100.0, "cpu": 10.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(threads.time, "process_time", lambda: clock["cpu"])
    monkeypatch.setattr(threads, "_last", None)
    assert threads.own_load() == 0.0  # the first stage: nothing of ours yet
    clock.update(wall=160.0, cpu=130.0)  # a stage kept 2 cores busy for a minute
    assert threads.own_load() == pytest.approx(2.0)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.1, 2.0, 1.0))
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.setattr(threads, "_last", (100.0, 10.0))
    monkeypatch.delenv("MEDSSL_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.configure_threads().threads == 2  # load 2.1 was ours: the machine is quiet
