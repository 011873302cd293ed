"""Fixtures for the eval tests."""

from __future__ import annotations

import pytest
from _eval_fixtures import make_bc

from policystack.policies.bc import BCPolicy


@pytest.fixture(scope="session")
def bc_state() -> BCPolicy:
    """bc on Reach without cameras (state only)."""
    return make_bc("Reach", cameras=())


@pytest.fixture(scope="session")
def bc_camera() -> BCPolicy:
    """bc on Reach with the front camera at 32x32."""
    return make_bc("Reach", cameras=("front",), image_size=32)
