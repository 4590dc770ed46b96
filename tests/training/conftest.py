"""Training-plumbing tests run a tiny regression model: one CPU thread, a fixed seed, quiet
Lightning (the same autouse fixture as the method tests)."""

from tests.methods.conftest import _quiet_and_seeded  # noqa: F401  (an autouse fixture, registered by import)
