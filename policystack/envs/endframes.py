"""``policystack endframes``: end-of-episode frames labelled by the simulator's ``is_success``, as a
vision-language dataset for the success detector (``perception/describe.py``).

    policystack endframes env=Reach,PressButton,OpenDrawer episodes=600 out=data/endframes
        [seed=500000] [cameras=front,wrist] [image_size=96] [noise=1.0] [captions=true] [group=50]
        [vcodec=libsvtav1]

Episode ``i`` of a task is that task's scripted expert from ``reset(seed=seed + i)``, played one of
three ways (drawn from the seed), so that the frames hold successes AND failures near the boundary:

| mode | share | what runs | ends |
|---|---|---|---|
| expert | 25% | the plain expert | at success (the env terminates) or the task's step limit |
| noisy | 25% | the expert with Gaussian noise of std ``noise`` on its motion (``experts.perturb``) | as expert |
| truncated | 50% | the plain expert, stopped after k steps, k uniform in 1 .. max_episode_steps / 3 | after k steps (or at success before) |

The last observation's camera frames are written (``datasets/vqa.py``) as the frame with "``success_question(instruction)``\\nA: yes|no" (``envs.vqa.success_question``; the answer is
``info["is_success"]`` of the last step) and, with ``captions=true``, the same frame with
"describe the scene.\\nA: <caption>" (``envs.vqa.scene_questions``: visible objects, left to right).
The frames of ``group`` rollouts in a row make one dataset episode (the frames are independent
examples; a video file per rollout would make reading and feature caching pay a file open per frame).
Rollouts run without cameras; only the end frame is rendered (``TabletopEnv._render_camera``, the env's
own renderer and settings), so a frame is exactly what the env's observation shows.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from policystack.datasets.vqa import vl_task
from policystack.envs.vqa import (
    CAPTION_QUESTION,
    scene_objects,
    scene_questions,
    success_question,
    tabletop_tasks,
)
from policystack.keyvalue import parse_key_values
from policystack.types import TASK, Feature, camera_key

USAGE = __doc__.split("\n\n")[1]
MODES = (("expert", 0.25), ("noisy", 0.25), ("truncated", 0.50))


@dataclass
class EndFramesConfig:
    env: str  # tabletop tasks "A,B,C"
    episodes: int  # per task
    out: Path
    seed: int = 500000  # episode i of every task: reset(seed=seed + i)
    cameras: tuple[str, ...] = ("front", "wrist")
    image_size: int = 96
    noise: float = 1.0  # std of the noisy expert's motion noise (normalised action units)
    captions: bool = True  # also write the end frame's caption
    group: int = 50  # rollouts per dataset episode
    vcodec: str = "libsvtav1"

    @property
    def tasks(self) -> list[str]:
        return tabletop_tasks(self.env)

    def __post_init__(self):
        tabletop_tasks(self.env)  # unknown names fail here
        for name in ("episodes", "image_size", "group"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        if self.noise <= 0:
            raise ValueError(f"noise={self.noise}: expected > 0 (the noisy expert's motion noise)")
        if not self.cameras:
            raise ValueError("cameras=: expected at least one camera (the detector looks at frames)")
        if self.captions and "front" not in self.cameras:
            raise ValueError(f"cameras={','.join(self.cameras)}: captions name objects left to right in the front "
                             "camera's image; include front or pass captions=false")


def end_of_episode(env, expert, seed: int, noise: float) -> tuple[str, int, bool]:
    """Play episode ``seed`` in one of ``MODES`` (drawn from the seed); the env is left at its last
    state. Returns (mode, steps, the last step's is_success)."""
    from policystack.envs.experts import perturb

    rng = np.random.default_rng([seed, 0xE4DF])
    mode = MODES[int(np.searchsorted(np.cumsum([p for _, p in MODES]), rng.random(), side="right"))][0]
    limit = int(rng.integers(1, env.unwrapped.max_episode_steps // 3 + 1)) if mode == "truncated" else None
    env.reset(seed=seed)
    expert.reset(seed=seed)
    steps, success = 0, False
    while True:
        action = expert.act()
        if mode == "noisy":
            action = perturb(env, action, noise, rng)
        _, _, terminated, truncated, info = env.step(action)
        steps += 1
        success = bool(info["is_success"])
        if terminated or truncated or (limit is not None and steps >= limit):
            return mode, steps, success


def generate(cfg: EndFramesConfig, progress: bool = True) -> dict:
    """Write the end frames of ``cfg`` (module docstring); returns counts per task and mode."""
    from tqdm import tqdm

    from policystack import envs
    from policystack.datasets.writer import DatasetWriter
    from policystack.envs.experts import make_expert

    h = w = cfg.image_size
    features = {camera_key(c): Feature("video", (h, w, 3), names=["height", "width", "channels"]) for c in cfg.cameras}
    counts: dict[str, dict[str, list[int]]] = {}  # task -> mode -> [episodes, successes]
    bar = tqdm(total=cfg.episodes * len(cfg.tasks), desc="endframes", unit="ep", disable=not progress)
    with DatasetWriter.create(cfg.out, fps=10, features=features, robot_type="panda", use_videos=True,
                              vcodec=cfg.vcodec) as writer:
        for task in cfg.tasks:
            env = envs.make(task, cameras=(), image_size=cfg.image_size)  # rendered at the end only
            base = env.unwrapped
            seg = mujoco.Renderer(base.model, *base.image_hw) if cfg.captions else None
            if seg is not None:
                seg.enable_segmentation_rendering()
            expert = make_expert(env)
            try:
                for i in range(cfg.episodes):
                    mode, _, success = end_of_episode(env, expert, cfg.seed + i, cfg.noise)
                    frames = {camera_key(c): np.ascontiguousarray(base._render_camera(c).transpose(2, 0, 1))
                              for c in cfg.cameras}
                    writer.add_frame({**frames, TASK: vl_task(success_question(base.task), "yes" if success else "no")})
                    if seg is not None:
                        seg.update_scene(base.data, camera="front")
                        caption = scene_questions(scene_objects(base, seg.render()), base.ee_pos, None)["caption"][0]
                        writer.add_frame({**frames, TASK: vl_task(CAPTION_QUESTION, caption[1])})
                    if (i + 1) % cfg.group == 0 or i + 1 == cfg.episodes:
                        writer.save_episode()
                    tally = counts.setdefault(task, {}).setdefault(mode, [0, 0])
                    tally[0] += 1
                    tally[1] += success
                    bar.update(1)
            finally:
                if seg is not None:
                    seg.close()
                env.close()
    bar.close()
    total = sum(n for modes in counts.values() for n, _ in modes.values())
    positives = sum(k for modes in counts.values() for _, k in modes.values())
    return {"episodes": total, "successes": positives, "counts": counts, "out": str(cfg.out)}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return 0
    try:
        cfg = EndFramesConfig(**parse_key_values(argv, EndFramesConfig, required=("env", "episodes", "out")))
    except (KeyError, ValueError) as e:
        print(f"policystack endframes: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    try:
        summary = generate(cfg)
    except (FileExistsError, ValueError) as e:
        print(f"policystack endframes: {e}", file=sys.stderr)
        return 1
    parts = "; ".join(f"{t}: " + ", ".join(f"{m} {k}/{n}" for m, (n, k) in sorted(modes.items()))
                      for t, modes in summary["counts"].items())
    print(f"wrote {summary['episodes']} end frames ({summary['successes']} successes) to {summary['out']}: {parts}")
    return 0
