"""The training configuration: typed dataclasses (the schema and defaults), composed by Hydra from
``policystack/configs/train.yaml`` and its groups, with command-line overrides.

    policystack train policy=bc dataset.path=DIR steps=2000 batch_size=64 env=pickplace \
        eval.every=500 out=runs/x

Groups (one YAML file per choice, under ``policystack/configs/``):

- ``policy/<preset>.yaml``: ``name: <registered policy>`` plus that family's config fields
  (checked by the family's ``PolicyConfig.from_dict``, which rejects unknown fields), and a
  ``recipe:`` block: the training settings this preset trains well with (``optim.*``, ``ema.*``,
  ``steps``, ``batch_size``), as LeRobot's ``get_optimizer_preset``. Composition applies each of
  them unless the command line sets that key (``optim.lr=3e-4`` beats the recipe's lr; so does
  ``policy.recipe.optim.lr=3e-4``, which changes the recipe itself), and records what it applied in
  ``TrainConfig.recipe`` (``policystack train --cfg`` shows it);
- ``dataset/<name>.yaml``: ``path:`` and loader options (``DatasetConfig``);
- ``env/<name>.yaml``: ``task:`` and env kwargs (``EnvConfig``); ``env=none`` trains without a
  simulator (no periodic evaluation).

Composition uses Hydra's compose API only (no ``@hydra.main``: no working-directory change, no
output directory of Hydra's own, no ``eval`` resolvers). Every top-level key and every
``dataset.*`` / ``env.*`` key is typed by the dataclasses below, so ``steps=abc`` or an unknown key
fails at composition with a message naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GROUPS = ("policy", "dataset", "env")


# --- the schema ------------------------------------------------------------------------------
@dataclass
class DatasetConfig:
    path: str | None = None  # LeRobot v3 dataset directory (required)
    cameras: list[str] | None = None  # cameras to train on (names after observation.images.); None = all
    cache_dir: Any = None  # loader cache (None: ~/.cache/policystack/loader; "run": <run dir>/cache; false: memory)
    episodes: Any = None  # train on these episodes only: [0, 1, 5] or "0-29,40"; None = all (LeRobot's episodes=)
    tasks: list[str] | None = None  # train on the episodes of these tasks (instruction text or task index); None = all
    camera_convention: str | None = None  # MetaWorld data recording none (LeRobot's tools): lerobot | upright | vflip
    num_workers: int = 1  # DataLoader worker processes (each runs one torch thread)
    frame_cache_bytes: int = 8 * 2**30  # bound on decoded video frames kept by the loader
    # a policy with a frozen pretrained image encoder (Policy.frame_transforms) trains on its features
    # computed once per dataset frame and kept in the loader cache; false: the encoder runs every step
    cache_features: bool = True
    # more datasets mixed into every batch (co-training: RT-2's vision-language examples from `policystack vqa`,
    # uwm's action-free video from `policystack collect actions=false`): their paths, and each one's share of a
    # batch (the `path` dataset gets the rest); a key a mixed-in dataset lacks is the family's to handle
    # (datasets/mixture.py: split_mixture, or pad_mixture: zeros with <key>_is_pad true)
    mixture: list[str] | None = None
    mixture_weights: list[float] | None = None


@dataclass
class EnvConfig:
    task: str | None = None  # suite task (Reach, ..., Stack) or metaworld/<task>; None = no env
    cameras: list[str] | None = None  # None: the cameras the policy was trained on
    image_size: int | None = None  # None: the policy's image size
    action_mode: str | None = None  # ee_delta | joint; None: the env's default (ee_delta)
    max_episode_steps: int | None = None  # None: the task's registered limit
    variations: Any = None  # MetaWorld: pinned MT1 variations for evaluation, e.g. "30-49"; None: random


@dataclass
class OptimConfig:
    lr: float = 1e-4  # peak learning rate (AdamW)
    weight_decay: float = 1e-4  # on weight matrices / conv kernels only (not biases, norms, embeddings' 1-d)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 500  # linear warm-up from 0 to lr
    min_lr_ratio: float = 0.0  # cosine decay ends at lr * min_lr_ratio at the last step
    grad_clip: float = 10.0  # max global gradient norm; 0 = no clipping


@dataclass
class EMAConfig:
    enabled: bool = False  # keep an exponential moving average of the weights
    decay: float = 0.999  # upper bound; the decay ramps up as min(decay, (1 + step) / (10 + step))


@dataclass
class EvalConfig:
    every: int = 0  # evaluate in the env every N steps and at the end (0 = never; needs env)
    episodes: int = 10
    n_envs: int = 2
    seed: int = 1000
    n_videos: int = 0  # episode videos written per evaluation


@dataclass
class CheckpointConfig:
    every: int = 1000  # save every N steps (and always at the last step)
    keep_last: int = 3  # step directories kept (the one `latest` names is never deleted)


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "policystack"
    mode: str | None = None  # online | offline | disabled; None: $WANDB_MODE, else offline
    entity: str | None = None


@dataclass
class LogConfig:
    every: int = 50  # metrics.jsonl / wandb record every N steps
    progress: bool = True  # tqdm progress bar with loss and steps/s (rank 0)
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class DDPConfig:
    find_unused_parameters: bool = False  # set true for a policy with parameters some steps do not use
    timeout_s: int = 1800  # collective timeout (evaluation on rank 0 makes the others wait)


@dataclass
class TrainConfig:
    policy: dict[str, Any] = field(default_factory=dict)  # name + family config (policy/<preset>.yaml)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    out: str | None = None  # run directory; None: runs/<date>-<time>-<policy>
    resume: Any = False  # true: continue `out` from checkpoints/latest; or the run directory itself
    init_from: str | None = None  # policy checkpoint whose weights start this run (same family)
    seed: int = 0
    steps: int = 2000  # optimiser steps in all (a resumed run continues up to this)
    # time budget: stop (with a checkpoint) after the first step past this many minutes of this session's loop;
    # the LR schedule still spans `steps` (with optim.min_lr_ratio=1 the rate is constant after warm-up)
    time_limit_min: float | None = None
    # the clock of time_limit_min: "wall", or "cpu" (this process's CPU time: a compute budget that does not
    # depend on how loaded a shared machine is; with dataset.num_workers=0 the data loading counts too)
    time_limit_clock: str = "wall"
    batch_size: int = 64  # per process (the global batch is batch_size * world size)
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    amp: bool | None = None  # bf16 autocast; None: on for CUDA, off on CPU
    compile: bool = False  # torch.compile the loss computation
    # under torchrun: "ddp" (a full copy per process) or "fsdp" (weights, gradients and optimiser state
    # sharded over the processes: training/fsdp.py; no EMA, no periodic evaluation)
    strategy: str = "ddp"
    threads: int | None = None  # torch threads per process; None: cores / processes - loader workers
    # what the policy preset's recipe set (dotted key -> value), for the record; filled by composition
    recipe: dict[str, Any] = field(default_factory=dict)


_SCHEMA_NAME = "train_schema"
RECIPE_KEYS = ("optim", "ema", "steps", "batch_size", "amp")  # what a preset's recipe may set


def _register_schema() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=_SCHEMA_NAME, node=TrainConfig)


# --- composition -----------------------------------------------------------------------------
def presets(group: str) -> list[str]:
    """The choices of a config group (YAML files in configs/<group>/)."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _normalise_overrides(overrides: list[str]) -> list[str]:
    """``env=PickPlace`` -> ``env=pickplace`` (presets are lower-case task names); ``env=metaworld/<task>``
    (any task eval's env= takes that has no preset) -> ``env.task=metaworld/<task>``; checks group
    choices so that an unknown one lists the valid ones instead of Hydra's search-path dump."""
    from policystack.eval.envs import resolve_task
    from policystack.policies.base import available_policies

    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key == "env" and value.lower().removeprefix("policystack/").removesuffix("-v0") not in presets(key):
            try:
                if resolve_task(value)[0] == "metaworld":
                    out.append(f"env.task={value}")
                    continue
            except KeyError:
                pass  # refused below, listing the presets
        if sep and key in GROUPS:
            if key == "env":
                value = value.lower().removeprefix("policystack/").removesuffix("-v0")
            if value not in presets(key):
                hint = ""
                if key == "policy":
                    hint = (f"; registered policies: {available_policies()} (a family needs a preset "
                            f"policystack/configs/policy/<name>.yaml)")
                if key == "env":
                    from policystack.envs import task_names

                    hint = (f" (suite tasks: {', '.join(task_names())}; MetaWorld: env=metaworld/<task>; `none` "
                            "trains without an env)")
                raise ValueError(f"{key}={o.partition('=')[2]!r}: unknown {key} preset; "
                                 f"valid: {presets(key)}{hint}")
            o = f"{key}={value}"
        out.append(o)
    return out


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose train.yaml with ``overrides`` (Hydra syntax: ``key=value``, ``group=choice``,
    ``+new.key=value``). Raises ValueError naming the bad override."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = _normalise_overrides(list(overrides or []))
    _register_schema()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="train"):
            cfg = compose("train", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        cause = f" ({e.__cause__})" if e.__cause__ else ""
        raise ValueError(f"bad training config override: {e}{cause}\n"
                         f"valid top-level keys: {[f.name for f in dataclasses.fields(TrainConfig)]}") from None
    apply_recipe(cfg, _override_keys(overrides))
    return cfg


def _override_keys(overrides: list[str]) -> set[str]:
    """The config keys that command-line ``overrides`` set (``+`` / ``++`` / ``~`` prefixes stripped)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return {o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply_recipe(cfg: DictConfig, cli_keys: set[str]) -> dict[str, Any]:
    """Apply the policy preset's ``recipe`` block (``cfg.policy.recipe``) to ``cfg`` wherever the command
    line did not set the key (``cli_keys``: ``optim.lr`` or ``optim`` covers the recipe's ``optim.lr``).
    The block leaves ``cfg.policy`` (it is not a policy config field); what it set is recorded in
    ``cfg.recipe`` and returned (dotted key -> value). A key outside ``RECIPE_KEYS`` or a value of the
    wrong type is a ValueError naming ``policy.recipe.<key>``."""
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    if "recipe" not in cfg.policy or cfg.policy.recipe is None:
        return {}
    recipe = OmegaConf.to_container(cfg.policy.recipe, resolve=True)
    if not isinstance(recipe, dict):
        raise ValueError(f"policy.recipe: expected a block of training settings ({', '.join(RECIPE_KEYS)}), "
                         f"got {recipe!r}")
    applied = {}
    for key, value in _flatten(recipe).items():
        top = key.split(".")[0]
        if top not in RECIPE_KEYS or OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise ValueError(f"policy.recipe.{key}: not a training setting a recipe can set; a recipe sets "
                             f"{', '.join(k + ('.*' if k in ('optim', 'ema') else '') for k in RECIPE_KEYS)} "
                             f"(fields of TrainConfig in policystack/training/config.py)")
        if any(key == c or key.startswith(c + ".") for c in cli_keys):
            continue  # the command line wins
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as e:
            raise ValueError(f"policy.recipe.{key}={value!r}: {e}") from None
        applied[key] = value
    with open_dict(cfg):
        del cfg.policy["recipe"]
        cfg.recipe = _nest(applied)
    return applied


def recipe_note(cfg: TrainConfig) -> str:
    """``"; preset recipe: optim.lr=0.001, ..."``: what the policy preset's recipe set, for messages."""
    flat = _flatten(cfg.recipe)
    return "; preset recipe: " + ", ".join(f"{k}={v}" for k, v in flat.items()) if flat else ""


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


_ABSENT = object()


def to_train_config(cfg: DictConfig | dict) -> TrainConfig:
    """The typed config, checked (``check_config``)."""
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
        out = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ValueError(f"bad training config: {e}") from None
    check_config(out)
    return out


def load_config(overrides: list[str] | None = None) -> TrainConfig:
    """Compose and check: what ``policystack train <overrides>`` trains with."""
    return to_train_config(compose_config(overrides))


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def save_config_yaml(cfg: TrainConfig, path: Path) -> None:
    from policystack.io import atomic_write_bytes

    atomic_write_bytes(path, OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg))).encode())


def load_run_config(run_dir: Path, overrides: list[str]) -> TrainConfig:
    """The config saved in ``run_dir/config.yaml`` with ``overrides`` (existing keys only, e.g.
    ``steps=5000`` to train further) applied: what a resumed run uses. Changing a group choice
    (``policy=...``) is refused: the checkpoint holds that family's weights."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved config; {run_dir} is not a training run directory")
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    base = OmegaConf.load(path)
    OmegaConf.set_struct(base, True)
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ValueError(f"bad override: {e}") from None
    for o in parsed:
        key = o.key_or_group
        if key in GROUPS:
            raise ValueError(f"{o.input_line!r}: a resumed run keeps its {key} (saved in {path}); "
                             f"change single fields ({key}.<field>=...) or start a new run")
        if key == "resume":
            continue
        try:
            OmegaConf.update(base, key, o.value(), merge=True, force_add=o.is_add())
        except Exception as e:  # omegaconf raises several types for a missing key in struct mode
            raise ValueError(f"override {o.input_line!r} does not apply to {path}: {e}") from None
    return to_train_config(base)


# --- checks ----------------------------------------------------------------------------------
def check_config(cfg: TrainConfig) -> None:
    """Value checks that need no file: each error names the key and what is expected."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(msg)

    need(isinstance(cfg.policy, dict) and "name" in cfg.policy,
         f"policy: expected a preset with a 'name' (policy=<preset>; presets: {presets('policy')})")
    need(cfg.steps >= 1, f"steps={cfg.steps}: expected >= 1")
    need(cfg.batch_size >= 1, f"batch_size={cfg.batch_size}: expected >= 1")
    need(cfg.time_limit_min is None or cfg.time_limit_min > 0, f"time_limit_min={cfg.time_limit_min}: expected > 0")
    need(cfg.time_limit_clock in ("wall", "cpu"), f"time_limit_clock={cfg.time_limit_clock!r}: expected wall or cpu")
    need(cfg.optim.lr > 0, f"optim.lr={cfg.optim.lr}: expected > 0")
    need(cfg.optim.warmup_steps >= 0, f"optim.warmup_steps={cfg.optim.warmup_steps}: expected >= 0")
    need(0 <= cfg.optim.min_lr_ratio <= 1, f"optim.min_lr_ratio={cfg.optim.min_lr_ratio}: expected in [0, 1]")
    need(cfg.optim.grad_clip >= 0, f"optim.grad_clip={cfg.optim.grad_clip}: expected >= 0 (0 = off)")
    need(len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas),
         f"optim.betas={cfg.optim.betas}: expected two numbers in [0, 1)")
    need(0 < cfg.ema.decay < 1, f"ema.decay={cfg.ema.decay}: expected in (0, 1)")
    need(cfg.eval.every >= 0, f"eval.every={cfg.eval.every}: expected >= 0 (0 = never)")
    need(cfg.eval.every == 0 or cfg.env.task is not None,
         f"eval.every={cfg.eval.every} needs an env to evaluate in: add env=<task> "
         f"(presets: {[p for p in presets('env') if p != 'none']})")
    need(cfg.eval.episodes >= 1 and cfg.eval.n_envs >= 1, "eval.episodes and eval.n_envs must be >= 1")
    need(cfg.checkpoint.every >= 1, f"checkpoint.every={cfg.checkpoint.every}: expected >= 1")
    need(cfg.checkpoint.keep_last >= 1, f"checkpoint.keep_last={cfg.checkpoint.keep_last}: expected >= 1")
    need(cfg.log.every >= 1, f"log.every={cfg.log.every}: expected >= 1")
    need(cfg.dataset.num_workers >= 0, f"dataset.num_workers={cfg.dataset.num_workers}: expected >= 0")
    if cfg.dataset.episodes is not None:
        from policystack.keyvalue import parse_int_ranges

        eps = cfg.dataset.episodes
        cfg.dataset.episodes = parse_int_ranges(eps, "dataset.episodes") if isinstance(eps, (str, int)) else eps
        need(isinstance(cfg.dataset.episodes, list) and len(cfg.dataset.episodes) > 0
             and all(isinstance(e, int) and e >= 0 for e in cfg.dataset.episodes),
             f"dataset.episodes={eps!r}: expected episode indices, e.g. [0,1,5] or '0-29,40'")
    mix, weights = cfg.dataset.mixture or [], cfg.dataset.mixture_weights or []
    need(len(mix) == len(weights), f"dataset.mixture has {len(mix)} dataset(s) but dataset.mixture_weights has "
         f"{len(weights)} weight(s); give one weight (its share of each batch) per mixed-in dataset")
    need(all(0 < w < 1 for w in weights) and sum(weights) < 1,
         f"dataset.mixture_weights={weights}: each must be in (0, 1) and their sum below 1 (dataset.path gets "
         "the rest of each batch; RT-2 used 50-66% robot data)")
    need(cfg.threads is None or cfg.threads >= 1, f"threads={cfg.threads}: expected >= 1 or null")
    need(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
         f"device={cfg.device!r}: expected auto, cpu, cuda or cuda:N")
    need(cfg.log.wandb.mode in (None, "online", "offline", "disabled"),
         f"log.wandb.mode={cfg.log.wandb.mode!r}: expected online, offline, disabled or null")
    need(isinstance(cfg.resume, (bool, str)), f"resume={cfg.resume!r}: expected true/false or a run directory")
    need(cfg.strategy in ("ddp", "fsdp"), f"strategy={cfg.strategy!r}: expected ddp or fsdp")
    need(cfg.strategy != "fsdp" or not cfg.ema.enabled,
         "strategy=fsdp with ema.enabled=true: an EMA of sharded weights is not supported; set ema.enabled=false")
    need(cfg.strategy != "fsdp" or not cfg.eval.every,
         f"strategy=fsdp with eval.every={cfg.eval.every}: rank 0 alone cannot run a sharded model; set eval.every=0 "
         "and evaluate the checkpoints with `policystack eval checkpoint=<run>/checkpoints/<step>`")
    if cfg.env.task is not None:
        from policystack.eval.envs import resolve_task

        try:
            kind, name = resolve_task(cfg.env.task)
        except KeyError as e:
            raise ValueError(f"env.task={cfg.env.task!r}: {e.args[0]}") from None
        cfg.env.task = name if kind == "tabletop" else cfg.env.task
        if cfg.env.variations is not None:
            from policystack.keyvalue import parse_int_ranges

            need(kind == "metaworld", f"env.variations: MetaWorld tasks only, not {cfg.env.task!r}")
            v = cfg.env.variations
            cfg.env.variations = parse_int_ranges(v, "env.variations") if isinstance(v, (str, int)) else list(v)
        need(cfg.env.action_mode in (None, "ee_delta", "joint"),
             f"env.action_mode={cfg.env.action_mode!r}: expected ee_delta or joint")


def load_preset(preset: str):
    """``policystack/configs/policy/<preset>.yaml`` as (Policy class, its config, the recipe block as a
    dict): what ``policy=<preset>`` trains, for code that builds a policy without the training config."""
    from policystack.policies.base import get_policy_class

    path = CONFIG_DIR / "policy" / f"{preset}.yaml"
    if not path.is_file():
        raise ValueError(f"{path}: no such policy preset; presets: {presets('policy')}")
    fields = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    recipe = fields.pop("recipe", None) or {}
    klass = get_policy_class(fields.pop("name"))
    return klass, klass.config_class.from_dict(fields, where=str(path)), recipe


def policy_config(cfg: TrainConfig):
    """(Policy class, its config) from ``cfg.policy``; unknown names list the registered policies,
    unknown fields list the family's fields."""
    from policystack.policies.base import get_policy_class

    fields = dict(cfg.policy)
    name = fields.pop("name")
    klass = get_policy_class(name)
    return klass, klass.config_class.from_dict(fields, where=f"policy ({name})")
