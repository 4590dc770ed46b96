"""The worker pool: bounded, ordered when asked, and one dying worker costs one input."""

from __future__ import annotations

import pytest

from medssl.store.workers import WorkerPool
from tests.store.crashy import init, square_or_die


@pytest.mark.parametrize("workers", [1, 2])
def test_results_in_job_order_when_ordered(workers):
    jobs = [(square_or_die, (v,)) for v in range(12)]
    with WorkerPool(workers, init, ("t",)) as pool:
        out = list(pool.run(jobs, in_flight=3, on_crash=lambda job: None, ordered=True))
    assert [r[0] for r in out] == list(range(12))
    assert all(r[1] == r[0] ** 2 for r in out)
    if workers > 1:
        assert {r[2] for r in out} == {"t"}  # the initializer ran in every worker


def test_a_worker_that_dies_is_reported_and_the_rest_complete():
    values = [1, 2, -1, 3, 4, -2, 5, 6]
    jobs = [(square_or_die, (v,)) for v in values]
    crashed = []

    def on_crash(job):
        crashed.append(job[1][0])
        return ("crashed", job[1][0])

    with WorkerPool(2, init, ("t",)) as pool:
        out = list(pool.run(jobs, in_flight=4, on_crash=on_crash))
    assert sorted(crashed) == [-2, -1]
    done = sorted(r[0] for r in out if r[0] != "crashed")
    assert done == [1, 2, 3, 4, 5, 6]
    assert len(out) == len(values)
