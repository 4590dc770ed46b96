"""Small phantoms shared by the phantom tests (module scope keeps the suite fast)."""

from __future__ import annotations

import pytest

from tools.phantom import Phantom, make_ct_phantom, make_mr_phantom

SMALL_SHAPE = (64, 64, 32)
SMALL_SPACING = (5.0, 5.0, 8.0)


@pytest.fixture(scope="session")
def small_ct() -> Phantom:
    return make_ct_phantom(SMALL_SHAPE, SMALL_SPACING, seed=3, n_lesions=5)


@pytest.fixture(scope="session")
def small_mr() -> Phantom:
    return make_mr_phantom(SMALL_SHAPE, (5.0, 5.0, 10.0), seed=3, n_lesions=3)
