"""A labelled phantom store shared by the task tests (built once per session)."""

from __future__ import annotations

import pytest

from tests.data.labelled_store import write_labelled_store


@pytest.fixture(scope="session")
def labelled_store(tmp_path_factory):
    return write_labelled_store(tmp_path_factory.mktemp("labelled") / "store")
