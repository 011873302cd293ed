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
    - A family that can say an episode is over (RT-2's terminate token) overrides
      ``predict_action_chunk_with_done`` to return, beside the chunk, bool [B, H]: True at a step after
      which the episode is done. ``select_action`` then sets ``self.done`` (bool [B]) for the action it
      returns; ``policystack eval`` and the daemon end the episode once that action is executed. For every
      other family ``done`` stays None.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from policystack.io import atomic_write_bytes, atomic_write_json
from policystack.policies.files import (  # noqa: F401 -- CONFIG_NAME, WEIGHTS_NAME and resolve_checkpoint are part of base's API
    CONFIG_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    read_checkpoint_meta,
    resolve_checkpoint,
)
from policystack.policies.layers.history import ObservationHistory
from policystack.policies.normalize import Normalizer
from policystack.types import ACTION, DataError, FeatureSpec, Stats, is_image_key

# The families policystack ships, each ``policystack.policies.<name>`` (a module or a package).
FAMILIES = ("bc", "rt1", "act", "diffusion", "rt2", "uwm", "emma", "gato")
# Models the shared loop trains that do not act (no predict_action_chunk; not in the policy contract
# tests): name -> module. The describer / success detector of perception/describe.py.
NON_ACTING = {"describer": "policystack.perception.describe"}


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
    # a family that builds training targets from the privileged simulator columns (``privileged.*``,
    # ``policystack collect privileged=true``; EMMA's labels); the loop drops them for every other family
    reads_privileged: ClassVar[bool] = False

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

    def episode_end_indices(self, keys) -> dict[str, list[int]]:
        """Frame offsets from the last frame of each sample's episode that the loader also gives (as
        ``<key>_episode_end``; ``WindowedDataset(end_indices=)``): none by default (Gato's prompts)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> PolicyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown {cls.__name__} fields {unknown}; valid fields: {sorted(known)}")
        return cls(**d)


_REGISTRY: dict[str, type[Policy]] = {}


def get_policy_class(name: str) -> type[Policy]:
    """The Policy subclass registered as ``name``; a family of ``FAMILIES`` is imported on first use.
    (A subclass defined elsewhere registers itself when its module is imported.)"""
    if name not in _REGISTRY and name in FAMILIES:
        importlib.import_module(f"policystack.policies.{name}")
    if name not in _REGISTRY and name in NON_ACTING:
        importlib.import_module(NON_ACTING[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown policy {name!r}; available: {available_policies()}")
    return _REGISTRY[name]


def available_policies() -> list[str]:
    """The shipped families and any other Policy subclass imported so far."""
    return sorted(set(FAMILIES) | set(NON_ACTING) | set(_REGISTRY))


class Policy(nn.Module):
    """A policy family (see the module docstring for the batch shapes and the inference contract).

    ``__init__`` builds what every family shares: ``self.normalizer`` over the features and modes
    ``normalization_modes()`` declares, filled from ``stats`` (None: left unset, for
    ``from_pretrained`` to load with the weights), ``self.history`` (``n_obs_steps`` steps) and the
    action queue. A family's ``__init__`` calls it first, then builds its model.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig
    # what a reasoning policy (EMMA's meta-decision) decided in its last predict_action_chunk, in words
    # (batch element 0); the daemon publishes it with the chunk and its announcer reads it out
    decision: str = ""
    # compute_loss takes mixed batches (datasets/mixture.py; the loop's dataset.mixture), e.g. RT-2's
    # robot windows + vision-language examples; the loop refuses a mixture for any other family
    trains_on_mixture: ClassVar[bool] = False

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
        self._action_queue: deque[tuple[Tensor, Tensor | None]] = deque()  # (action [B, A], done [B] or None)
        self.done: Tensor | None = None  # bool [B]: the action select_action returned last ends the episode
        # where the training data came from (saved in config.json as "data"): {"dataset": path, "sim_seeds":
        # {task: [first, last]}}, so eval can warn when its scenes are training scenes
        self.data_provenance: dict[str, Any] = {}

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

    def predict_action_chunk_with_done(self, obs: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """``predict_action_chunk`` and, for a family that can end an episode, bool [B, H]: True at a step
        after which the policy says the episode is done (RT-2's terminate). Default: (chunk, None)."""
        return self.predict_action_chunk(obs), None

    def episode_stats(self) -> dict[str, int]:
        """Counts since the last ``reset`` that ``policystack eval`` records per episode and sums
        (EvalResult.policy_stats), e.g. EMMA's plans, parse failures and holds. Default: none."""
        return {}

    def frame_transforms(self) -> dict[str, Any]:
        """Camera key -> a loader-side function of uint8 frames whose output this policy takes in place
        of that camera's frames in ``compute_loss`` (a frozen pretrained encoder's feature maps,
        ``perception.image.PretrainedImageEncoder.frame_transform()``): the training loop has the loader
        compute it once per dataset frame and cache it (``dataset.cache_features``). At inference the
        policy still receives uint8 frames. Default: none."""
        return {}

    def history_step(self, obs: dict[str, Any]) -> Any:
        """What ``self.history`` keeps of one step (default: its ``observation.*`` tensors this policy
        has features for). A family may keep something derived instead (RT-1: image tokens)."""
        return {k: obs[k] for k in self.features if k.startswith("observation.") and k in obs}

    def adopt_saved_config(self, saved: dict[str, Any]) -> None:
        """Before a checkpoint's weights load into this freshly built policy (``resume``, ``init_from``):
        take over the parts of the checkpoint's config (``saved``) that a policy grows from its training
        data rather than from the command line (Gato's embodiments, added per mixed-in dataset). Default:
        nothing; any other difference is refused by the compatibility check that follows."""

    def mixture_keys(self, features: FeatureSpec, where: str) -> list[str]:
        """The keys the training loop loads from a mixed-in dataset (``dataset.mixture``) whose features are
        ``features`` (``where`` names its info.json in errors). Default: the features this policy reads that
        the dataset has, each of this policy's shape, at least one of its cameras (a vision-language dataset
        gives cameras and task, no action); a DataError says what does not fit. A family that reads other
        embodiments' data (Gato: other state and action sizes) takes the dataset's own keys instead."""
        keys = [k for k in self.features if k in features]
        cams = [k for k in self.features if is_image_key(k)]
        if not any(is_image_key(k) for k in keys) and cams:
            raise DataError(f"{where}: a mixed-in dataset needs the policy's cameras {cams}; it has {sorted(features)}")
        bad = [k for k in keys if features[k].shape != self.features[k].shape]
        if bad:
            raise DataError(f"{where}: {bad} have shapes {[features[k].shape for k in bad]}, the policy's "
                            f"{[self.features[k].shape for k in bad]}")
        return keys

    def fsdp_modules(self) -> list[nn.Module]:
        """The submodules ``strategy=fsdp`` shards one by one (e.g. a language model's decoder layers): each
        gathers its weights only while it runs. Default: none (the whole policy is one unit)."""
        return []

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
            chunk, done = self.predict_action_chunk_with_done(obs)
            n = self.config.n_action_steps
            steps = chunk[:, :n].transpose(0, 1)  # [n, B, A]
            self._action_queue.extend(zip(steps, done[:, :n].transpose(0, 1) if done is not None else [None] * len(steps)))
        self.observe(obs)
        action, self.done = self._action_queue.popleft()
        return action

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
        self.done = None

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, Tensor] | None = None) -> Path:
        """Write ``config.json`` (format version, policy name, config, features) and ``model.safetensors``
        (weights and normalisation statistics) atomically. ``state_dict``: the weights to write instead of
        ``self.state_dict()`` (a sharded training run's gathered full weights)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_dict() if state_dict is None else state_dict
        tensors = {k: v.detach().cpu().contiguous() for k, v in untied(state).items()}
        atomic_write_bytes(directory / WEIGHTS_NAME, save(tensors))
        atomic_write_json(directory / CONFIG_NAME, {
            "format_version": FORMAT_VERSION,
            "policy": self.name,
            "config": self.config.to_dict(),
            "features": {k: f.to_json() for k, f in self.features.items()},
            **({"data": self.data_provenance} if self.data_provenance else {}),
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
        meta, features = read_checkpoint_meta(directory)
        name = meta["policy"]
        klass = get_policy_class(name)
        if cls is not Policy and klass is not cls:
            raise ValueError(f"{cfg_path}: checkpoint of policy {name!r}, not {cls.name!r}")
        config = klass.config_class.from_dict(meta["config"], where=str(cfg_path))
        policy = klass(config, features, stats=None)
        policy.load_weights(load_file(directory / WEIGHTS_NAME, device=str(map_location)), directory / WEIGHTS_NAME)
        policy.data_provenance = dict(meta.get("data") or {})
        return policy.to(map_location).eval()

    def load_weights(self, state: dict[str, Tensor], where: str | Path) -> None:
        """Load a ``save_pretrained`` weights file's tensors (``where`` names it in errors): every weight
        must be there, except the second names of tied weights, which ``save_pretrained`` writes once."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if k not in untied(self.state_dict(), keep=state)]
        if missing or unexpected:
            raise ValueError(f"{where}: weights do not match {type(self).__name__}{self.config}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def tied_aliases(state: dict[str, Tensor]) -> dict[str, str]:
    """Tied weights (one tensor under several names, e.g. a language model's input embedding and output
    layer): each second or later name of a shared tensor -> the first name it aliases."""
    first: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for k, v in state.items():
        where = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if v.numel() and where in first:
            aliases[k] = first[where]
        else:
            first.setdefault(where, k)
    return aliases


def with_tied(saved: dict[str, Tensor], model_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A weights file's tensors plus the tied names ``save_pretrained`` wrote once: each alias of
    ``model_state`` missing from ``saved`` gets the tensor of the name it aliases."""
    return {**saved, **{a: saved[t] for a, t in tied_aliases(model_state).items() if a not in saved and t in saved}}


def untied(state: dict[str, Tensor], keep: dict[str, Tensor] | None = None) -> dict[str, Tensor] | set[str]:
    """Tied weights saved once: the state without the second and later names of a shared tensor
    (safetensors refuses aliases; the policy ties them again by construction). With ``keep`` (a loaded
    file): the set of names that are absent from it only because they alias a name it holds."""
    aliases = tied_aliases(state)
    if keep is None:
        return {k: v for k, v in state.items() if k not in aliases}
    return {k for k, target in aliases.items() if target in keep}
