"""The Policy interface with a minimal family: normaliser, chunk queue, save/load round trip, the registry
(explicit families, a family as a folder, plugins). Action-free families: tests/training/test_train.py."""

import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from policystack.policies import base
from policystack.policies.base import (
    FAMILIES,
    Policy,
    PolicyConfig,
    available_policies,
    get_policy_class,
    resolve_checkpoint,
)
from policystack.policies.normalize import Normalizer
from policystack.types import Feature

FEATURES = {"observation.state": Feature("float32", (3,)), "action": Feature("float32", (2,))}
STATS = {
    "observation.state": {"mean": np.array([1.0, 2.0, 3.0]), "std": np.array([2.0, 2.0, 2.0])},
    "action": {"mean": np.array([10.0, -10.0]), "std": np.array([1.0, 4.0]),
               "min": np.array([0.0, -20.0]), "max": np.array([20.0, 0.0])},
}


@dataclass
class LinearTestConfig(PolicyConfig):
    hidden: int = 4


class LinearTestPolicy(Policy):
    """A minimal family used to exercise the base class."""

    name = "lineartest"
    config_class = LinearTestConfig

    def __init__(self, config, features, stats):
        super().__init__(config, features, stats)
        self.net = nn.Linear(3, 2 * config.horizon)

    def predict_action_chunk(self, obs):
        x = self.normalizer.normalize("observation.state", obs["observation.state"])
        y = self.net(x).view(x.shape[0], self.config.horizon, 2)
        return self.normalizer.unnormalize("action", y)

    def compute_loss(self, batch):
        x = self.normalizer.normalize("observation.state", batch["observation.state"][:, -1])
        target = self.normalizer.normalize("action", batch["action"])
        loss = ((self.net(x).view_as(target) - target) ** 2).mean()
        return loss, {"mse": loss.item()}


@pytest.mark.parametrize("mode", ["mean_std", "min_max"])
def test_normalizer_round_trip(mode):
    norm = Normalizer({"action": (2,)}, {"action": mode}, STATS)
    x = torch.tensor([[3.0, -7.0], [20.0, 0.0]])
    np.testing.assert_allclose(norm.unnormalize("action", norm.normalize("action", x)), x, atol=1e-5)
    if mode == "min_max":
        np.testing.assert_allclose(norm.normalize("action", torch.tensor([20.0, -20.0])), [1.0, -1.0], atol=1e-6)


def test_normalizer_errors():
    with pytest.raises(ValueError, match="expected one of"):
        Normalizer({"action": (2,)}, {"action": "zscore"}, STATS)
    with pytest.raises(KeyError, match="no 'q01' for 'action'"):
        Normalizer({"action": (2,)}, {"action": "quantile"}, STATS)
    unset = Normalizer({"action": (2,)}, {"action": "mean_std"}, None)
    with pytest.raises(RuntimeError, match="never set"):
        unset.unnormalize("action", torch.zeros(2))


def test_config_validation():
    with pytest.raises(ValueError, match="n_action_steps"):
        LinearTestConfig(horizon=2, n_action_steps=3)
    assert LinearTestConfig(n_obs_steps=2, horizon=3).observation_delta_indices == [-1, 0]
    with pytest.raises(ValueError, match="unknown LinearTestConfig fields \\['bogus'\\]"):
        LinearTestConfig.from_dict({"bogus": 1})


def test_select_action_consumes_chunks():
    torch.manual_seed(0)
    p = LinearTestPolicy(LinearTestConfig(horizon=4, n_action_steps=3), FEATURES, STATS)
    obs = {"observation.state": torch.randn(5, 3)}
    chunk = p.predict_action_chunk(obs)
    actions = [p.select_action(obs) for _ in range(3)]
    torch.testing.assert_close(torch.stack(actions, 1), chunk[:, :3])
    p.net.weight.data.add_(1.0)  # a new chunk is predicted on the 4th call, and after reset
    assert not torch.allclose(p.select_action(obs), chunk[:, 3])
    p.reset()
    torch.testing.assert_close(p.select_action(obs), p.predict_action_chunk(obs)[:, 0])


def test_save_load_round_trip_keeps_stats(tmp_path):
    torch.manual_seed(0)
    p = LinearTestPolicy(LinearTestConfig(horizon=2, hidden=7), FEATURES, STATS)
    obs = {"observation.state": torch.randn(4, 3)}
    p.save_pretrained(tmp_path / "ckpt")
    q = Policy.from_pretrained(tmp_path / "ckpt")
    assert isinstance(q, LinearTestPolicy) and q.config == p.config
    torch.testing.assert_close(q.predict_action_chunk(obs), p.predict_action_chunk(obs))
    assert sorted(f.name for f in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_resolve_checkpoint_follows_run_layout(tmp_path):
    p = LinearTestPolicy(LinearTestConfig(), FEATURES, STATS)
    step_dir = tmp_path / "run" / "checkpoints" / "000100"
    p.save_pretrained(step_dir / "pretrained")
    assert resolve_checkpoint(step_dir) == step_dir / "pretrained"
    (tmp_path / "run" / "checkpoints" / "latest").write_text("000100\n")
    assert resolve_checkpoint(tmp_path / "run") == step_dir / "pretrained"
    (tmp_path / "run" / "checkpoints" / "latest").unlink()
    (tmp_path / "run" / "checkpoints" / "latest").symlink_to("000100")
    assert isinstance(Policy.from_pretrained(tmp_path / "run"), LinearTestPolicy)
    with pytest.raises(FileNotFoundError, match="checkpoints/latest"):
        resolve_checkpoint(tmp_path)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a policy checkpoint"):
        Policy.from_pretrained(tmp_path)
    with pytest.raises(KeyError, match="unknown policy 'nosuch'; available"):
        get_policy_class("nosuch")


def test_registry_lists_the_shipped_families_and_imports_them_on_use():
    assert set(FAMILIES) <= set(available_policies()) and "lineartest" in available_policies()
    assert [get_policy_class(f).name for f in FAMILIES] == list(FAMILIES)
    assert get_policy_class("lineartest") is LinearTestPolicy  # a subclass defined elsewhere registers itself


def test_a_family_may_be_a_folder(tmp_path, monkeypatch):
    """A family with its own parts is a package policies/<name>/ whose __init__.py imports its policy."""
    import policystack.policies

    pkg = tmp_path / "folderfam"
    pkg.mkdir()
    (pkg / "parts.py").write_text("WIDTH = 3\n")
    (pkg / "__init__.py").write_text(
        "from dataclasses import dataclass\n"
        "from policystack.policies.base import Policy, PolicyConfig\n"
        "from policystack.policies.folderfam.parts import WIDTH\n"
        "@dataclass\nclass FolderFamConfig(PolicyConfig):\n    width: int = WIDTH\n"
        "class FolderFamPolicy(Policy):\n    name = 'folderfam'\n    config_class = FolderFamConfig\n")
    monkeypatch.setattr(policystack.policies, "__path__", [*policystack.policies.__path__, str(tmp_path)])
    monkeypatch.setattr(base, "FAMILIES", (*FAMILIES, "folderfam"))
    monkeypatch.delitem(base._REGISTRY, "folderfam", raising=False)
    klass = get_policy_class("folderfam")
    assert klass.__name__ == "FolderFamPolicy" and klass.config_class().width == 3
    base._REGISTRY.pop("folderfam")
    for name in [m for m in sys.modules if m.startswith("policystack.policies.folderfam")]:
        del sys.modules[name]

