"""The scripted expert as a pseudo-policy, so ``policystack eval checkpoint=expert env=<task>``
measures the expert with the same harness (and the same seeds) as a learned policy.

Experts are privileged: they read object poses from the simulator, which lives in the env's
process (an ``AsyncVectorEnv`` worker). So the expert runs *inside* the env:
``policystack.eval.envs.ExpertActionObservation`` wraps the env, asks the expert for its next action after every
``reset`` / ``step`` and adds it to the observation as ``EXPERT_KEY``; ``ScriptedExpert`` (the
policy the runner sees) returns that entry. The expert is reseeded with the episode's seed at
``reset``, exactly as ``policystack.envs.experts.run_episode`` does, so an episode here is the
episode ``policystack collect`` records for the same seed.

Tabletop tasks use ``policystack.envs.experts.make_expert``; an env with its own
``expert_action()`` (the MetaWorld adapter) uses that.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from policystack.eval.envs import EXPERT_KEY

EXPERT_CHECKPOINT = "expert"  # the pseudo-checkpoint name on the command line


class ScriptedExpert:
    """Duck-typed stand-in for a ``Policy`` (select_action / reset) that plays the action the
    env-side expert put in the observation. It has no features: the env decides its own
    cameras and action mode (see ``EvalRunner``)."""

    name: ClassVar[str] = EXPERT_CHECKPOINT
    features = None

    def select_action(self, obs: dict[str, Any]) -> torch.Tensor:
        """[B, A] float32 from obs[EXPERT_KEY] ([B, A])."""
        if EXPERT_KEY not in obs:
            raise KeyError(f"ScriptedExpert: the observation has no {EXPERT_KEY!r}; build the envs with "
                           "ExpertActionObservation (EvalRunner does this for a ScriptedExpert)")
        return torch.as_tensor(obs[EXPERT_KEY], dtype=torch.float32)

    def reset(self) -> None:
        """Nothing to clear: the expert's state lives in the env wrapper and is reset with the env."""
