"""EMMA's weights used as an object locator ("where is the red ball?"): on held-out scenes, one plan per
scene and the coordinates its "Objects:" step writes for the object the instruction names, against the
simulator's true position of that object (privileged, read only here to score). Also counts the plans
that wrote no position for it.

    python scripts/emma_locate.py runs/emma --task Reach --scenes 20 --seed 5000

Scene i is ``reset(seed=seed + i)`` of the task with the checkpoint's cameras. The objects scored: the env's
``target`` body where it has one (Reach, PressButton, PickPlace), else every object the instruction names
("push the red cube to the blue zone": the cube and the zone; OpenDrawer's drawer). Seeds from 5000 are not
among ``policystack collect``'s training seeds of docs/policies/emma.md (300000 on).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from policystack.envs import make
from policystack.envs.vqa import scene_objects
from policystack.eval.commands import load_policy
from policystack.eval.envs import env_kwargs_from_features
from policystack.policies.emma import objects_in
from policystack.types import OBS_STATE, TASK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--task", default="Reach")
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=5000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    policy = load_policy(args.checkpoint)
    if policy.name != "emma":
        print(f"{args.checkpoint}: an {policy.name!r} checkpoint; this locates objects with an emma one", file=sys.stderr)
        return 2
    env = make(args.task, **env_kwargs_from_features(args.task, policy.features))
    errors, missing = [], 0
    for i in range(args.scenes):
        obs, info = env.reset(seed=args.seed + i)
        task = info.get(TASK, env.unwrapped.task)
        objects = scene_objects(env.unwrapped)
        if getattr(env.unwrapped, "target", None):
            goal = env.unwrapped.body_pos(env.unwrapped.target)  # the object the instruction names
            named = [min(objects, key=lambda o: float(np.linalg.norm(o.position - goal)))]
        else:
            named = [o for o in objects if f" {o.name} " in f" {task.lower()} "]
        if not named:
            print(f"{args.task}: scene {args.seed + i}'s instruction {task!r} names none of {[o.name for o in objects]}",
                  file=sys.stderr)
            return 2
        policy.reset()
        batch = {k: torch.from_numpy(np.asarray(v))[None] for k, v in obs.items()}
        batch[TASK] = [task]
        text = policy.plan(batch)[0]
        written = objects_in(text, policy.origin(batch[OBS_STATE][0]))
        for target in named:
            found = written.get(target.name)
            if found is None:
                missing += 1
            else:
                errors.append(100 * float(np.linalg.norm(found - target.position)))
            print(f"scene {args.seed + i}: {task!r}: {target.name} true {np.round(target.position, 2).tolist()}, "
                  f"written {None if found is None else found.tolist()}", flush=True)
    env.close()
    e = np.array(errors)
    print(f"{args.task}: {len(e)} named objects located in {args.scenes} plans; error {np.median(e) if len(e) else float('nan'):.1f} cm median, "
          f"{e.mean() if len(e) else float('nan'):.1f} cm mean (3-D); {missing} written nowhere")
    return 0


if __name__ == "__main__":
    sys.exit(main())
