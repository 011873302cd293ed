"""The files of a saved policy (``Policy.save_pretrained``): where they are and what config.json
says, read without torch (the daemon's supervisor sets up cameras from a checkpoint without
loading it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from policystack.types import Feature, FeatureSpec

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1  # of config.json + model.safetensors; from_pretrained refuses any other


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


def read_checkpoint_meta(path: str | Path) -> tuple[dict[str, Any], FeatureSpec]:
    """(config.json, its features) of the checkpoint ``path`` names (``resolve_checkpoint``), without
    building the policy or reading its weights: what a caller needs to set up the env or robot
    for it. A missing weights file, another ``format_version`` or no policy name is refused."""
    directory = resolve_checkpoint(path)
    cfg_path = directory / CONFIG_NAME
    if not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{directory}: not a policy checkpoint (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
    meta = json.loads(cfg_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: format_version {meta.get('format_version')!r}; this policystack reads "
                         f"policy checkpoints of format_version {FORMAT_VERSION} only")
    if not isinstance(meta.get("policy"), str):
        raise ValueError(f"{cfg_path}: no 'policy' name (expected a family name such as 'bc' or 'rt1')")
    features = {k: Feature.from_json(v, f"{cfg_path}: features[{k!r}]") for k, v in meta["features"].items()}
    return meta, features
