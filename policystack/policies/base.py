"""The Policy interface every family implements, its config base class, save/load and the registry.

A family is a module ``policystack/policies/<name>.py`` (or a package ``policystack/policies/<name>/``
whose ``__init__.py`` imports its policy class, for a family with its own tokenizer or model parts)
holding ``<Name>Config(PolicyConfig)`` and ``<Name>Policy(Policy)`` with ``name = "<name>"``, listed
in ``FAMILIES``; ``get_policy_class(name)`` imports it on demand (LeRobot's naming-convention factory,
without if/elif chains). Its presets are ``policystack/configs/policy/<name>.yaml`` (tiny: trains in
minutes on two CPU cores) and ``<name>_paper.yaml`` (the published sizes); tests/policies/test_contract.py
checks every family in ``FAMILIES`` (docs/policies/adding-a-family.md).

Shapes (B batch, T_obs history, H action horizon, A action dim, D state dim):
    batch["observation.state"]          float32 [B, T_obs, D]
    batch["observation.images.<cam>"]   uint8   [B, T_obs, 3, H, W]
    batch["<key>_is_pad"]               bool    [B, T]         (frames repeated at an episode edge)
    batch["action"]                     float32 [B, H, A]      (training only)
    batch["action_is_pad"]              bool    [B, H]         (training only)
    batch["task"]                       list[str] of length B
The offsets behind T_obs and H are the config's (``PolicyConfig.delta_indices``). At inference ``obs``
holds one step: state [B, D], images [B, 3, H, W], task list[str].

The inference contract (one history mechanism, the same in ``policystack eval`` and the daemon):
    - ``predict_action_chunk(obs)`` -> [B, H, A] unnormalised actions from the history (the steps
      shown to ``observe``) and this step's ``obs``; it changes no state.
    - ``observe(obs)`` is called with EVERY policy-rate observation, after any prediction for that
      step; a policy with ``n_obs_steps > 1`` keeps what it needs of it in ``self.history``
      (``layers/history.py``: the last steps, stacked and left-padded as the loader pads).
    - ``select_action(obs)`` = predict a chunk when the queue of actions is empty, then ``observe(obs)``,
      then pop one action. A caller that replans on its own (the daemon's worker) calls
      ``predict_action_chunk`` when it replans and ``observe`` at every tick.
    - ``reset()`` clears the history and the queue (every episode start).
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

from policystack.io import atomic_write_bytes, atomic_write_json
from policystack.policies.layers.history import ObservationHistory
from policystack.policies.normalize import Normalizer
from policystack.types import ACTION, Feature, FeatureSpec, Stats

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1  # of config.json + model.safetensors; from_pretrained refuses any other
# The families policystack ships, each ``policystack.policies.<name>`` (a module or a package).
FAMILIES = ("bc", "rt1", "act", "diffusion", "uwm")


@dataclass
class PolicyConfig:
    """Fields every policy shares; a family's config subclasses this and adds its own.

    Frame offsets the loader gives (``delta_indices``): observations ``observation_delta_indices``
    (default ``-(T_obs-1) .. 0``; a family may override it to add future frames ``1 .. F`` it learns to
    predict, e.g. a world model), the action ``action_delta_indices`` (default ``0 .. H-1``). A family
    whose policy trains without actions (action-free video) sets the class flag ``actions_optional``.
    """

    # a family that can train on datasets without an `action` feature (e.g. a world model on video)
    actions_optional: ClassVar[bool] = False
    # a family whose compute_loss takes batches in which some samples have no actions (their `action` zeros,
    # `action_is_pad` all true): co-training on action-free video through `dataset.action_free` (uwm)
    action_free_samples: ClassVar[bool] = False

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
    """The Policy subclass registered as ``name``; a family of ``FAMILIES`` is imported on first use.
    (A subclass defined elsewhere registers itself when its module is imported.)"""
    if name not in _REGISTRY and name in FAMILIES:
        importlib.import_module(f"policystack.policies.{name}")
    if name not in _REGISTRY:
        raise KeyError(f"unknown policy {name!r}; available: {available_policies()}")
    return _REGISTRY[name]


def available_policies() -> list[str]:
    """The shipped families and any other Policy subclass imported so far."""
    return sorted(set(FAMILIES) | set(_REGISTRY))


class Policy(nn.Module):
    """A policy family (see the module docstring for the batch shapes and the inference contract).

    ``__init__`` builds what every family shares: ``self.normalizer`` over the features and modes
    ``normalization_modes()`` declares, filled from ``stats`` (None: left unset, for
    ``from_pretrained`` to load with the weights), ``self.history`` (``n_obs_steps`` steps) and the
    action queue. A family's ``__init__`` calls it first, then builds its model.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    def __init__(self, config: PolicyConfig, features: FeatureSpec, stats: Stats | None):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        if ACTION not in features and not config.actions_optional:
            raise KeyError(f"{type(self).__name__}: the features have no {ACTION!r}; got {sorted(features)}")
        self.config = config
        self.features = dict(features)
        modes = self.normalization_modes()
        self.normalizer = Normalizer({k: (3, 1, 1) if self.features[k].is_visual else tuple(self.features[k].shape)
                                      for k in modes if k in self.features}, modes, stats)
        self.history = ObservationHistory(config.n_obs_steps)
        self._action_queue: deque[Tensor] = deque()

    # --- what a family declares or implements --------------------------------------------------
    def normalization_modes(self) -> dict[str, str]:
        """Feature -> normalisation mode of every feature this family normalises (statistics of one
        value's shape; cameras per channel, [3, 1, 1]). Default: ``config.normalization`` for the
        non-camera features present."""
        return {k: m for k, m in self.config.normalization.items()
                if k in self.features and not self.features[k].is_visual}

    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss on a batch of windows (shapes in the module docstring) and scalars to log."""
        raise NotImplementedError

    def predict_action_chunk(self, obs: dict[str, Any]) -> Tensor:
        """[B, H, A] unnormalised actions for one step of observations (and the history); no state changes."""
        raise NotImplementedError

    def history_step(self, obs: dict[str, Any]) -> Any:
        """What ``self.history`` keeps of one step (default: its ``observation.*`` tensors this policy
        has features for). A family may keep something derived instead (RT-1: image tokens)."""
        return {k: obs[k] for k in self.features if k.startswith("observation.") and k in obs}

    def frame_transforms(self) -> dict[str, Any]:
        """Camera key -> a fixed function of one episode's frames (uint8 numpy [L, 3, H, W] -> numpy
        [L, ...], with a str ``cache_id``) that the training loader applies once per frame and caches
        (``WindowedDataset(frame_transforms=...)``); ``compute_loss`` then gets those arrays for that
        camera instead of uint8 images. For a frozen encoder (its features never change in training).
        At inference the policy still gets uint8 images and computes the same function itself.
        Default: none."""
        return {}

    def load_external_weights(self) -> None:
        """Load weights that live outside policystack checkpoints (e.g. a pretrained backbone the config
        names by path). ``policystack train`` calls it once for a policy that starts from scratch; a
        policy loaded by ``from_pretrained`` (or trained on from one) never reads them: its checkpoint
        holds every weight. Default: nothing to load."""

    # --- shared behaviour ---------------------------------------------------------------------
    @torch.no_grad()
    def select_action(self, obs: dict[str, Any]) -> Tensor:
        """[B, A]: the next action, predicting a new chunk every ``n_action_steps`` calls."""
        if not self._action_queue:
            chunk = self.predict_action_chunk(obs)[:, : self.config.n_action_steps]  # [B, n, A]
            self._action_queue.extend(chunk.transpose(0, 1))
        self.observe(obs)
        return self._action_queue.popleft()

    @torch.no_grad()
    def observe(self, obs: dict[str, Any]) -> None:
        """Show the policy this step's observation (every policy tick, after any prediction): the
        history keeps ``history_step(obs)``."""
        if self.config.n_obs_steps > 1:
            self.history.append(self.history_step(obs))

    def reset(self) -> None:
        """Clear history and queued actions (call at every episode start)."""
        self._action_queue.clear()
        self.history.clear()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` (format version, policy name, config, features) and ``model.safetensors``
        (weights and normalisation statistics) atomically."""
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
        builds the saved family; called on a family it checks the checkpoint is of that family.
        A checkpoint of another ``format_version`` is refused."""
        directory = resolve_checkpoint(directory)
        cfg_path = directory / CONFIG_NAME
        if not (directory / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{directory}: not a policy checkpoint (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
        meta = json.loads(cfg_path.read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{cfg_path}: format_version {meta.get('format_version')!r}; this policystack reads "
                             f"policy checkpoints of format_version {FORMAT_VERSION} only")
        name = meta.get("policy")
        if not isinstance(name, str):
            raise ValueError(f"{cfg_path}: no 'policy' name (expected one of {available_policies()})")
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
