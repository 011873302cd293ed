"""The generated objects of the tabletop suite's PlaceObject task, split into the objects demos are
collected on (``seen``) and objects kept out of every demo for evaluation (``heldout``).

Each object is a prompt of the offline generator, sized so the Robotiq 2F-85 (85 mm opening) can
close across it at its grasp hint. Its instruction word is the prompt's noun ("mug"); colours are
drawn per episode, so the prompt's colour does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from policystack.envs.scenegen.asset import Asset
from policystack.envs.scenegen.procedural import generate, parse_prompt

SPLITS: dict[str, tuple[str, ...]] = {
    "seen": ("a mug", "a cup", "a small can", "a small bottle", "a block", "a small apple"),
    "heldout": ("a banana", "a small pear", "a carrot"),
}
MAX_GRASP_WIDTH = 0.07  # m: the gripper opens 85 mm; leave room for approach errors


@dataclass(frozen=True)
class TaskObject:
    noun: str  # the word the instruction uses
    prompt: str
    asset: Asset


@cache
def object_set(split: str) -> tuple[TaskObject, ...]:
    """The split's objects, generated (or read from the asset cache) once per process."""
    if split not in SPLITS:
        raise KeyError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    out = []
    for prompt in SPLITS[split]:
        asset = generate(prompt)
        width = asset.grasp["width"]
        if width > MAX_GRASP_WIDTH:
            raise ValueError(f"{prompt!r}: {width * 1000:.0f} mm across its grasp, more than the {MAX_GRASP_WIDTH * 1000:.0f} "
                             "mm the gripper can close on reliably; make it smaller in SPLITS")
        out.append(TaskObject(parse_prompt(prompt).shape, prompt, asset))
    return tuple(out)
