"""Policy tests run tiny models: one torch thread is the fastest there, and does not fight other jobs on a
shared machine (two OpenMP threads competing with other processes make small ops 10-100x slower)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
