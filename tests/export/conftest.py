"""Export tests run tiny trainings: the method tests' settings apply here too."""

from __future__ import annotations

from tests.methods.conftest import _quiet_and_seeded  # noqa: F401  (autouse fixture)
