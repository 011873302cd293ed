"""Fixtures shared by the daemon tests: a small bc checkpoint, and a PYTHONPATH that lets the daemon's
worker process import the test policies (``daemon_test_policies``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from daemon_test_policies import make_checkpoint

HERE = Path(__file__).resolve().parent


@pytest.fixture
def worker_pythonpath(monkeypatch):
    """Use with ``pytestmark = pytest.mark.usefixtures("worker_pythonpath")``."""
    monkeypatch.setenv("PYTHONPATH", f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "bc")
