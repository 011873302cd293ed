"""Suite-wide test settings: no hub access, headless rendering, offline tracking, few threads."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

# tqdm's monitor thread wakes every 10 s (Event.wait(10)) and allocates while it does, which the
# control loop's "no allocation in a tick" test would see as foreign objects. Tests never need it.
import pytest  # noqa: E402
import torch  # noqa: E402
import tqdm  # noqa: E402

tqdm.tqdm.monitor_interval = 0


@pytest.fixture
def one_torch_thread():
    """For tiny models (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): one
    intra-op thread is faster than two and immune to other jobs on a shared 2-core machine (two
    OpenMP threads competing with other processes make small ops 10-100x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _loader_cache_in_tmp(tmp_path_factory):
    """Datasets the tests write get their loader cache (decoded frames, encoder features) in pytest's
    temporary directory, which pytest prunes, not in the user's ~/.cache/policystack/loader: there every
    run left ~100 MB of entries nothing reads again, until a CI machine's disk filled up."""
    from policystack.datasets import loader

    saved = loader.DEFAULT_CACHE_DIR
    loader.DEFAULT_CACHE_DIR = tmp_path_factory.mktemp("loader-cache")
    yield
    loader.DEFAULT_CACHE_DIR = saved
