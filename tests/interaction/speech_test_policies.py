"""A policy with a decision for the daemon's speech tests (imported by the worker with ``--import``):
the tests' BC policy whose ``decision`` names what it heads for, as an EMMA plan's meta-decision would."""

from __future__ import annotations

import json
from pathlib import Path

from policystack.policies.bc import BCPolicy


class DecidingPolicy(BCPolicy):
    name = "test_deciding"

    def predict_action_chunk(self, obs):
        chunk = super().predict_action_chunk(obs)
        self.decision = f"Heading for {obs['task'][0].split(' the ')[-1]}."
        return chunk


def make_deciding_checkpoint(bc_checkpoint: Path) -> Path:
    """The BC checkpoint ``bc_checkpoint`` (the robot tests' make_checkpoint), relabelled as this
    policy (same config and weights)."""
    cfg = bc_checkpoint / "config.json"
    meta = json.loads(cfg.read_text())
    meta["policy"] = DecidingPolicy.name
    cfg.write_text(json.dumps(meta))
    return bc_checkpoint
