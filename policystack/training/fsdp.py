"""``strategy=fsdp``: the loop's model sharded with PyTorch's FSDP (``fully_shard``, FSDP2) under ``torchrun``,
for policies that do not fit one device (RT-2 at OpenVLA's size). DDP keeps a full copy of the weights,
gradients and optimiser state on every process; FSDP keeps 1/N of each and gathers a unit's weights only
while it runs.

Units: each module of ``policy.fsdp_modules()`` (e.g. a language model's decoder layers) is sharded on its
own, then the loop's ``LossModule`` as the root (every other parameter: embeddings, projector, heads).
The root is what the loop calls, so its forward gathers the root parameters before ``compute_loss`` runs.

Checkpoints stay the format of a single-process run: the full weights and the full optimiser state are
gathered on rank 0 (``full_state``), the optimiser state keyed by parameter position as
``optimizer.state_dict()`` keys it; a resumed FSDP run hands both back to every rank (``load_full_state``)
and each keeps its shard. So a checkpoint of an FSDP run evaluates, serves (daemon) and resumes like any.

Not with FSDP (refused at start, saying why): EMA (it would average shards) and periodic evaluation (rank 0
alone cannot run a sharded model; evaluate the checkpoints with ``policystack eval``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from policystack.policies.base import Policy

ROOT_PREFIX = "policy."  # the LossModule root holds the policy under this name


def shard(model: nn.Module, policy: Policy) -> nn.Module:
    """Shard ``policy.fsdp_modules()`` one by one, then ``model`` (the LossModule around ``policy``), in
    place: parameters become DTensors holding this rank's shard. Rank 0's weights and buffers are
    broadcast first (each rank built its policy from its own seed; DDP does the same broadcast).
    Build the optimiser afterwards."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)
    for module in policy.fsdp_modules():
        fully_shard(module)
    fully_shard(model)
    return model


def _names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter names of ``model`` in the optimiser's order (the order its state_dict numbers them)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(the policy's full state dict, the optimiser's full state dict keyed by position), both gathered on
    the CPU of rank 0 (empty on the others). Every rank must call it (collectives)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    policy = model.policy
    # one name per tensor: a tied weight (input embedding = output layer) comes back as two copies
    names = {n for n, _ in policy.named_parameters()} | {n for n, _ in policy.named_buffers()}
    weights = {k.removeprefix(ROOT_PREFIX): v for k, v in get_model_state_dict(model, options=opts).items()
               if k.removeprefix(ROOT_PREFIX) in names}
    by_name = get_optimizer_state_dict(model, optimizer, options=opts)
    if not by_name:
        return weights, {}
    index = {n: i for i, n in enumerate(_names(model, optimizer))}
    state = {index[n]: s for n, s in by_name["state"].items()}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]
    return weights, {"state": state, "param_groups": groups}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, Any],
                    optim_state: dict) -> None:
    """Put full (unsharded) weights and a position-keyed optimiser state into the sharded ``model`` and
    ``optimizer``: each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, {ROOT_PREFIX + k: v for k, v in weights.items()}, options=opts)
    names = _names(model, optimizer)
    by_name = {"state": {names[int(i)]: s for i, s in optim_state["state"].items()},
               "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                                for g in optim_state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=opts)
