"""The contract every registered policy family keeps (LeRobot's tests/policies/test_policies.py is the model).

For each family in ``policystack.policies.base.FAMILIES``:
- its presets build: the tiny one (``configs/policy/<name>.yaml``) on the CPU, the paper one
  (``<name>_paper.yaml``) on the meta device (no memory, no init time); parameter counts printed;
- one training step on a fixed batch gives every trainable parameter a finite gradient and lowers the loss;
- ``save_pretrained`` -> ``from_pretrained`` gives bit-identical outputs;
- ``select_action`` is the chunk-then-queue sequence (``predict_action_chunk`` when the queue is empty,
  ``observe`` every step), and ``predict_action_chunk`` changes no state;
- ``reset`` clears history and queue: the next episode acts as a new policy would;
- the presets and the config dataclass agree (same keys; the tiny preset's values are the defaults);
- a checkpoint of another family or another ``format_version`` is refused, saying so.

A new family gets all of this by being listed in ``FAMILIES`` and adding its presets
(docs/policies/adding-a-family.md); one whose inputs differ from ``FEATURES`` declares them in
``FEATURES_FOR``.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from policystack.policies.base import FAMILIES, Policy, get_policy_class
from policystack.training.config import CONFIG_DIR, load_preset
from policystack.types import (
    ACTION,
    PAD_SUFFIX,
    PRIVILEGED_DECISION,
    PRIVILEGED_OBJECTS,
    TASK,
    Feature,
    FeatureSpec,
    Stats,
    is_image_key,
)

# What every family is checked on: the tabletop suite's inputs (state, a camera, the instruction).
FEATURES: FeatureSpec = {
    "observation.state": Feature("float32", (6,)),
    "observation.images.front": Feature("video", (64, 64, 3)),
    ACTION: Feature("float32", (4,)),
}
# family -> its own inputs, where FEATURES do not fit it
FEATURES_FOR: dict[str, FeatureSpec] = {
    # emma reads the pinch point from the tabletop suite's named state, drives its named ee_delta action and
    # builds its labels from the privileged columns (policystack collect privileged=true)
    "emma": {
        "observation.state": Feature("float32", (15,), names=[f"joint{i}" for i in range(1, 8)] + [
            "gripper", "ee_x", "ee_y", "ee_z", "ee_qw", "ee_qx", "ee_qy", "ee_qz"]),
        "observation.images.front": Feature("video", (64, 64, 3)),
        ACTION: Feature("float32", (7,), names=["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]),
        PRIVILEGED_OBJECTS: Feature("float32", (10,), info={"colors": ["red", "blue"], "kinds": ["ball", "cube"]}),
        PRIVILEGED_DECISION: Feature("float32", (1,), info={"decisions": ["reach", "press"]}),  # [B, 1, 1] here,
        # [B, 1] from the loader (a [1] feature's window): compute_loss takes both
    },
}
NO_PAPER_PRESET = {"bc": "policystack's own baseline: there is no published size"}
# tiny preset -> {field: why its value is not the config dataclass default}
_EMMA_RECIPE = ("the measured recipe (docs/results.md `## emma`); the EmmaConfig default keeps the first recipe's "
                "value, so a checkpoint saved before the key existed loads as it was trained")
PRESET_DIFFERS_ON_PURPOSE: dict[str, dict[str, str]] = {
    "emma": dict.fromkeys(["text_width", "film", "number_tokens", "number_sigma", "locate_weight", "text_batch",
                           "frame", "instruction_image"],
                          _EMMA_RECIPE),
}
TASKS = ["reach the red ball", "open the drawer", "press the blue button"]
B = 3


def features_of(family: str) -> FeatureSpec:
    return FEATURES_FOR.get(family, FEATURES)


def stats_of(features: FeatureSpec) -> Stats:
    """Every statistic of every feature (images per channel, [3, 1, 1]), as `dataset stats` writes them."""
    out: Stats = {}
    for i, (key, f) in enumerate(features.items()):
        shape = (3, 1, 1) if f.is_visual else f.shape
        mean = np.full(shape, 0.4 if f.is_visual else 0.1 * i)
        std = np.full(shape, 0.25 if f.is_visual else 1.5)
        out[key] = {"mean": mean, "std": std, "min": mean - 2 * std, "max": mean + 2 * std,
                    "q01": mean - 1.8 * std, "q99": mean + 1.8 * std}
    return out


def make_batch(cfg, features: FeatureSpec, stats: Stats, seed: int = 0) -> dict:
    """B training windows at the config's frame offsets, values spread over the statistics' range; the
    last action step is padding in the first sample."""
    g = torch.Generator().manual_seed(seed)
    batch: dict = {TASK: TASKS[:B]}
    for key, deltas in cfg.delta_indices(features).items():
        f, T = features[key], len(deltas)
        if f.is_visual:
            batch[key] = torch.randint(0, 256, (B, T, *f.chw), generator=g, dtype=torch.uint8)
        else:
            mean, std = (torch.as_tensor(stats[key][s], dtype=torch.float32) for s in ("mean", "std"))
            batch[key] = mean + std * torch.randn(B, T, *f.shape, generator=g).clamp(-1.8, 1.8)
        batch[key + PAD_SUFFIX] = torch.zeros(B, T, dtype=torch.bool)
    if ACTION in batch:
        batch[ACTION + PAD_SUFFIX][0, -1] = True
    return batch


def episode(features: FeatureSpec, steps: int, seed: int = 1) -> list[dict]:
    """``steps`` inference observations (one step each: [B, ...]) of one episode."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        obs: dict = {TASK: TASKS[:B]}
        for key, f in features.items():
            if is_image_key(key):
                obs[key] = torch.randint(0, 256, (B, *f.chw), generator=g, dtype=torch.uint8)
            elif key.startswith("observation."):
                obs[key] = torch.randn(B, *f.shape, generator=g)
        out.append(obs)
    return out


def build(family: str, preset: str | None = None) -> Policy:
    klass, cfg, _ = load_preset(preset or family)
    assert klass is get_policy_class(family) and klass.name == family
    features = features_of(family)
    torch.manual_seed(0)
    return klass(cfg, features, stats_of(features))


def recipe_lr(preset: str) -> float:
    return load_preset(preset)[2].get("optim", {}).get("lr", 1e-4)


def train_one_step(policy: Policy, batch: dict, lr: float) -> tuple[float, float]:
    """(loss before, loss after) one AdamW step, both on the same batch with the same random draws."""
    policy.train()
    torch.manual_seed(1)
    loss, logs = policy.compute_loss(batch)
    assert torch.isfinite(loss) and all(np.isfinite(float(v)) for v in logs.values()), logs
    policy.zero_grad()
    loss.backward()
    no_grad = [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{policy.name}: parameters the loss does not reach: {no_grad[:8]}"
    bad = [n for n, p in policy.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{policy.name}: non-finite gradients in {bad[:8]}"
    torch.optim.AdamW(policy.parameters(), lr=lr).step()
    torch.manual_seed(1)
    with torch.no_grad():
        after, _ = policy.compute_loss(batch)
    return loss.item(), after.item()


def rollout(policy: Policy, steps: list[dict]) -> torch.Tensor:
    """select_action over ``steps`` (each step seeded by its index): [B, T, A]."""
    actions = []
    for t, obs in enumerate(steps):
        torch.manual_seed(100 + t)
        actions.append(policy.select_action(obs))
    return torch.stack(actions, 1)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


# --- presets --------------------------------------------------------------------------------------
def test_presets_build_and_report_their_size(family):
    tiny = build(family)
    n_tiny = sum(p.numel() for p in tiny.parameters())
    print(f"{family}: tiny preset {n_tiny:,} parameters")
    paper = f"{family}_paper"
    if family in NO_PAPER_PRESET:
        assert not (CONFIG_DIR / "policy" / f"{paper}.yaml").exists(), f"{paper}.yaml exists: drop NO_PAPER_PRESET"
        return
    assert (CONFIG_DIR / "policy" / f"{paper}.yaml").is_file(), \
        f"{family} has no paper preset configs/policy/{paper}.yaml (or say why in NO_PAPER_PRESET)"
    with torch.device("meta"):
        big = build(family, paper)
    n_paper = sum(p.numel() for p in big.parameters())
    print(f"{family}: paper preset {n_paper:,} parameters (built on the meta device)")
    assert n_paper > n_tiny


def test_presets_and_the_config_dataclass_agree(family):
    klass = get_policy_class(family)
    fields = {f.name: f for f in dataclasses.fields(klass.config_class)}
    defaults = klass.config_class().to_dict()
    presets = [family] + ([] if family in NO_PAPER_PRESET else [f"{family}_paper"])
    for preset in presets:
        path = CONFIG_DIR / "policy" / f"{preset}.yaml"
        d = OmegaConf.to_container(OmegaConf.load(path))
        assert d.pop("name") == family and isinstance(d.pop("recipe", None), dict), f"{path}: needs name and recipe"
        assert set(d) == set(fields), (f"{path}: keys differ from {klass.config_class.__name__}'s fields: "
                                       f"missing {sorted(set(fields) - set(d))}, unknown {sorted(set(d) - set(fields))}")
        if preset == family:  # the tiny preset is the dataclass's defaults
            on_purpose = PRESET_DIFFERS_ON_PURPOSE.get(preset, {})
            config = load_preset(preset)[1].to_dict()
            differ = {k for k in fields if json.dumps(config[k]) != json.dumps(defaults[k])}
            assert differ == set(on_purpose), (f"{path}: values differ from the {klass.config_class.__name__} "
                                               f"defaults in {sorted(differ - set(on_purpose))}; make them agree "
                                               f"or say why in PRESET_DIFFERS_ON_PURPOSE")


# --- training ---------------------------------------------------------------------------------------
def test_one_training_step_lowers_the_loss(family):
    policy = build(family)
    features = features_of(family)
    before, after = train_one_step(policy, make_batch(policy.config, features, stats_of(features)),
                                   recipe_lr(family))
    print(f"{family}: loss {before:.4f} -> {after:.4f} after one step")
    assert after < before


# --- save / load ------------------------------------------------------------------------------------
def test_save_load_gives_bit_identical_outputs(family, tmp_path):
    policy = build(family)
    features = features_of(family)
    train_one_step(policy, make_batch(policy.config, features, stats_of(features)), recipe_lr(family))
    policy.eval().save_pretrained(tmp_path / "ckpt")
    loaded = Policy.from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is type(policy) and loaded.config == policy.config and not loaded.training
    assert type(policy).from_pretrained(tmp_path / "ckpt").config == policy.config  # called on the family too
    mine, theirs = policy.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    steps = episode(features, 2 * policy.config.n_action_steps + 1)
    assert torch.equal(rollout(loaded, steps), rollout(policy, steps))


def test_checkpoint_of_another_family_or_format_is_refused(family, tmp_path):
    build(family).save_pretrained(tmp_path / "ckpt")
    other = get_policy_class(FAMILIES[(FAMILIES.index(family) + 1) % len(FAMILIES)])
    with pytest.raises(ValueError, match=f"checkpoint of policy '{family}', not '{other.name}'"):
        other.from_pretrained(tmp_path / "ckpt")
    cfg_path = tmp_path / "ckpt" / "config.json"
    meta = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(ValueError, match="format_version 2; this policystack reads policy checkpoints of "
                                         "format_version 1 only"):
        Policy.from_pretrained(tmp_path / "ckpt")


# --- inference --------------------------------------------------------------------------------------
def test_select_action_is_the_chunk_then_queue_sequence(family):
    policy = build(family).eval()
    reference = copy.deepcopy(policy)
    n = policy.config.n_action_steps
    steps = episode(features_of(family), 2 * n + 1)
    expected = []
    for t, obs in enumerate(steps):
        torch.manual_seed(100 + t)  # the seed select_action sees at step t (see rollout)
        if t % n == 0:
            held = len(reference.history)
            chunk = reference.predict_action_chunk(obs)
            assert chunk.shape[0] == B and chunk.shape[1] >= n and chunk.shape[2] == features_of(family)[ACTION].shape[0]
            assert len(reference.history) == held  # predicting changes no state
        expected.append(chunk[:, t % n])
        reference.observe(obs)
    torch.testing.assert_close(rollout(policy, steps), torch.stack(expected, 1), rtol=0, atol=0)


def test_reset_clears_history_and_queue(family):
    policy = build(family).eval()
    fresh = copy.deepcopy(policy)
    steps = episode(features_of(family), policy.config.n_action_steps + 2)
    rollout(policy, steps[:-1])
    policy.reset()
    assert len(policy.history) == 0 and not policy._action_queue
    # the next episode acts exactly as a policy that never saw the last one
    torch.testing.assert_close(rollout(policy, steps[::-1]), rollout(fresh, steps[::-1]), rtol=0, atol=0)
