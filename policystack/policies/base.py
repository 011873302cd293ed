"""The Policy interface every family implements, its config base class, save/load and the registry.

A family is one module ``policystack/policies/<name>.py`` holding ``<Name>Config(PolicyConfig)`` and
``<Name>Policy(Policy)`` with ``name = "<name>"``. ``get_policy_class(name)`` imports that module on
demand (LeRobot's naming-convention factory, without if/elif chains).

Shapes (B batch, T_obs history, H action horizon, A action dim, D state dim):
    batch["observation.state"]          float32 [B, T_obs, D]
    batch["observation.images.<cam>"]   uint8   [B, T_obs, 3, H, W]
    batch["action"]                     float32 [B, H, A]      (training only)
    batch["action_is_pad"]              bool    [B, H]         (training only)
    batch["task"]                       list[str] of length B
At inference ``obs`` holds one step: state [B, D], images [B, 3, H, W], task list[str].
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from policystack.datasets.meta import atomic_write_bytes, atomic_write_json
from policystack.types import ACTION, Feature, FeatureSpec, Stats

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


@dataclass
class PolicyConfig:
    """Fields every policy shares; a family's config subclasses this and adds its own."""

    n_obs_steps: int = 1  # T_obs: frames of observation history (offsets -(T_obs-1) .. 0)
    horizon: int = 1  # H: actions predicted per chunk (offsets 0 .. H-1)
    n_action_steps: int = 1  # actions executed from each chunk before predicting again
    # feature key -> normalisation mode (see policies/normalize.py); keys absent are not normalised
    normalization: dict[str, str] = field(
        default_factory=lambda: {"observation.state": "mean_std", "observation.environment_state": "mean_std",
                                 "action": "mean_std"})

    def __post_init__(self):
        for name in ("n_obs_steps", "horizon", "n_action_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_action_steps > self.horizon:
            raise ValueError(f"{type(self).__name__}: n_action_steps ({self.n_action_steps}) cannot exceed "
                             f"horizon ({self.horizon}): a chunk has only `horizon` actions")

    @property
    def observation_delta_indices(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, 1))

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.horizon))

    def delta_indices(self, keys) -> dict[str, list[int]]:
        """Frame offsets the loader gives each of ``keys`` (observations and the action; others skipped)."""
        return {k: self.observation_delta_indices if k.startswith("observation.") else self.action_delta_indices
                for k in keys if k.startswith("observation.") or k == ACTION}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> PolicyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown {cls.__name__} fields {unknown}; valid fields: {sorted(known)}")
        return cls(**d)


def resolve_checkpoint(path: str | Path) -> Path:
    """The policy directory (config.json + model.safetensors) that ``path`` names. Accepted, in
    order: that directory itself; a training checkpoint holding it as ``pretrained/``; a run
    directory whose ``checkpoints/latest`` (a symlink or a file naming the step directory) leads
    to one. Anything else is a FileNotFoundError saying what was looked for."""
    path = Path(path).expanduser()
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / "pretrained" / CONFIG_NAME).is_file():
        return path / "pretrained"
    latest = path / "checkpoints" / "latest"
    if latest.is_symlink() or latest.is_dir():
        return resolve_checkpoint(latest.resolve())
    if latest.is_file():
        return resolve_checkpoint(path / "checkpoints" / latest.read_text().strip())
    raise FileNotFoundError(f"{path}: not a policy checkpoint (expected {CONFIG_NAME} and {WEIGHTS_NAME}, "
                            f"a pretrained/ subdirectory, or a run directory with checkpoints/latest)")


_REGISTRY: dict[str, type[Policy]] = {}


def get_policy_class(name: str) -> type[Policy]:
    """The Policy subclass registered as ``name``, importing ``policystack.policies.<name>`` if needed."""
    if name not in _REGISTRY:
        try:
            importlib.import_module(f"policystack.policies.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"policystack.policies.{name}":
                raise
    if name not in _REGISTRY:
        raise KeyError(f"unknown policy {name!r}; available: {available_policies()}")
    return _REGISTRY[name]


def available_policies() -> list[str]:
    pkg = Path(__file__).parent
    found = {p.stem for p in pkg.glob("*.py") if p.stem not in ("__init__", "base", "normalize", "tokenizers")}
    return sorted(found | set(_REGISTRY))


class Policy(nn.Module):
    name: ClassVar[str]
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig
    # what a reasoning policy (EMMA's meta-decision) decided in its last predict_action_chunk, in words
    # (batch element 0); the daemon publishes it with the chunk and its announcer reads it out
    decision: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    def __init__(self, config: PolicyConfig, features: FeatureSpec, stats: Stats | None):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        if ACTION not in features:
            raise KeyError(f"{type(self).__name__}: the features have no {ACTION!r}; got {sorted(features)}")
        self.config = config
        self.features = dict(features)
        self._action_queue: deque[Tensor] = deque()

    # --- what a family implements ------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss on a batch of windows (shapes in the module docstring) and scalars to log."""
        raise NotImplementedError

    def predict_action_chunk(self, obs: dict[str, Any]) -> Tensor:
        """[B, H, A] unnormalised actions for one step of observations."""
        raise NotImplementedError

    # --- shared behaviour ---------------------------------------------------------------------
    @torch.no_grad()
    def select_action(self, obs: dict[str, Any]) -> Tensor:
        """[B, A]: the next action, predicting a new chunk every ``n_action_steps`` calls."""
        if not self._action_queue:
            chunk = self.predict_action_chunk(obs)[:, : self.config.n_action_steps]  # [B, n, A]
            self._action_queue.extend(chunk.transpose(0, 1))
        self.observe(obs)
        return self._action_queue.popleft()

    def observe(self, obs: dict[str, Any]) -> None:
        """Called by ``select_action`` with every step's observation, after any prediction: a
        policy with observation history appends to it here (``predict_action_chunk`` itself only
        reads the history, so calling it directly has no side effect)."""

    def reset(self) -> None:
        """Clear history and queued actions (call at every episode start)."""
        self._action_queue.clear()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (policy name, config, features) and ``model.safetensors`` (weights
        and normalisation statistics) atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_NAME, save(tensors))
        atomic_write_json(directory / CONFIG_NAME, {
            "format_version": FORMAT_VERSION,
            "policy": self.name,
            "config": self.config.to_dict(),
            "features": {k: f.to_json() for k, f in self.features.items()},
        })
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> Policy:
        """Rebuild a policy from ``save_pretrained`` output alone (``directory`` may also be a
        training checkpoint or run directory, see ``resolve_checkpoint``). Called on ``Policy`` it
        builds the saved family; called on a family it checks the checkpoint is of that family."""
        directory = resolve_checkpoint(directory)
        cfg_path = directory / CONFIG_NAME
        if not (directory / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{directory}: not a policy checkpoint (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
        meta = json.loads(cfg_path.read_text())
        name = meta.get("policy")
        klass = get_policy_class(name)
        if cls is not Policy and klass is not cls:
            raise ValueError(f"{cfg_path}: checkpoint of policy {name!r}, not {cls.name!r}")
        config = klass.config_class.from_dict(meta["config"], where=str(cfg_path))
        features = {k: Feature.from_json(v, f"{cfg_path}: features[{k!r}]") for k, v in meta["features"].items()}
        policy = klass(config, features, stats=None)
        state = load_file(directory / WEIGHTS_NAME, device=str(map_location))
        missing, unexpected = policy.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{directory / WEIGHTS_NAME}: weights do not match {klass.__name__}{config}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        return policy.to(map_location).eval()
