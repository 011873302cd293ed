"""``policystack vqa``: vision-language examples rendered from the suite's own scenes, for co-training a
vision-language-action policy (RT-2 mixes web VQA / captions into robot data; we have no web data offline,
so the questions are about the robot's own table).

    policystack vqa env=Reach,PressButton,OpenDrawer scenes=1000 out=data/vqa [seed=300000]
        [questions=8] [cameras=front,wrist] [image_size=96] [vcodec=libsvtav1]

Scene ``i`` of a task is that task's ``reset(seed=seed + i)`` (objects, colours and the arm's random start
pose, exactly as in demonstrations), OpenDrawer's drawer pulled to a random opening (closed, 0-2 cm, or
open, 10-20 cm). Its camera frames are one episode of ``questions`` frames, each frame one example, the
question and its answer in the frame's ``task`` (``datasets/vqa.py``: "question\\nA: answer"). Answers
come from the simulator (a segmentation render of the front camera for what is visible and where):

| kind | question | answer |
|---|---|---|
| caption | describe the scene. | a red ball, a blue ball and a green ball (visible objects, left to right) |
| color | what colour is the ball on the left? (right, in the middle; or "the drawer") | red |
| exists | is there a purple cube? | yes / no |
| count | how many buttons are there? | three |
| relation | is the red ball left of the blue ball? | yes / no |
| closest | which ball is closest to the gripper? | blue (3-D distance to the pinch point) |
| drawer | is the drawer open? | yes / no |
| point | where is the red ball? | (0.42, 0.61): the object's centre in the front image, x right, y down, in [0, 1] |

One more kind is not drawn here but asked of end-of-episode frames (``policystack endframes``,
``envs/endframes.py``): "success", ``success_question(instruction)`` ("has the robot done this: reach the
red ball?"), answered "yes" / "no" by the simulator's ``is_success``.

"Left", "right" and "where" refer to the front camera's image; an object counts as visible with at least
``MIN_PIXELS`` pixels there. Each scene's examples are drawn from every question its scene allows, kinds
first (uniform over the kinds it has), then a question of that kind, all seeded by the scene's seed.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from policystack.datasets.vqa import vl_task
from policystack.keyvalue import parse_key_values
from policystack.types import TASK, Feature, camera_key

USAGE = __doc__.split("\n\n")[1]
KINDS = ("ball", "button", "cube", "bowl", "zone", "drawer")
QUESTION_KINDS = ("caption", "color", "exists", "count", "relation", "closest", "drawer", "point", "success")
CAPTION_QUESTION = "describe the scene."
SUCCESS_PREFIX = "has the robot done this: "
NUMBERS = ("zero", "one", "two", "three", "four", "five")
MIN_PIXELS = 4  # pixels of an object in the front image for it to count as visible
DRAWER_CLOSED, DRAWER_OPEN = (0.0, 0.02), (0.10, 0.20)  # openings (m) of the two drawer states rendered


@dataclass
class SceneObject:
    """One coloured object of a scene: kind ("ball", ...), colour name, its front-image pixels and centre
    (x right, y down, in [0, 1]; None when not visible), its world position."""

    kind: str
    color: str
    pixels: int
    center: tuple[float, float] | None
    position: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


def _color_name(rgba: np.ndarray) -> str | None:
    from policystack.envs.scene import COLORS

    for name, ref in COLORS.items():
        if np.allclose(rgba[:3], ref[:3], atol=1e-3):
            return name
    return None


def scene_objects(env, segmentation: np.ndarray | None = None) -> list[SceneObject]:
    """The coloured objects of a tabletop env (bodies named ball0, button1, cube, bowl, zone, drawer...),
    with their pixels in ``segmentation`` (the front camera's [H, W, 2] segmentation render; None: no
    pixels counted, every centre None, for a caller that needs the objects and positions only)."""
    m, d = env.model, env.data
    if segmentation is None:
        segmentation = np.zeros((1, 1, 2), np.int32)
    geom_ids = np.where(segmentation[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM), segmentation[..., 0], -1)
    h, w = geom_ids.shape
    out = []
    for b in range(m.nbody):
        match = re.fullmatch(rf"({'|'.join(KINDS)})\d*", m.body(b).name)
        if not match:
            continue
        geoms = [g for g in range(m.ngeom) if m.geom_bodyid[g] == b]
        colors = [c for c in (_color_name(m.geom_rgba[g]) for g in geoms) if c]
        if not colors:
            continue
        rows, cols = np.nonzero(np.isin(geom_ids, geoms))
        center = ((cols.mean() + 0.5) / w, (rows.mean() + 0.5) / h) if len(rows) >= MIN_PIXELS else None
        out.append(SceneObject(match.group(1), colors[0], len(rows), center, d.xpos[b].copy()))
    return out


def _a(words: str) -> str:
    """``words`` with its indefinite article ("a red ball", "an orange cube")."""
    return ("an " if words[0] in "aeiou" else "a ") + words


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def scene_questions(objects: list[SceneObject], ee_pos: np.ndarray, drawer_open: bool | None
                    ) -> dict[str, list[tuple[str, str]]]:
    """Every question the scene allows, by kind: kind -> [(question, answer)]."""
    from policystack.envs.scene import COLORS

    visible = sorted((o for o in objects if o.center is not None), key=lambda o: o.center[0])
    qs: dict[str, list[tuple[str, str]]] = {k: [] for k in QUESTION_KINDS}
    qs["caption"].append((CAPTION_QUESTION, _listing([_a(o.name) for o in visible]) if visible else "nothing"))
    for kind in dict.fromkeys(o.kind for o in objects):
        seen = [o for o in visible if o.kind == kind]
        everywhere = [o for o in objects if o.kind == kind]
        if len(seen) == len(everywhere):  # all of this kind visible: counting and naming by place are exact
            qs["count"].append((f"how many {kind}s are there?", NUMBERS[len(seen)] if len(seen) < len(NUMBERS) else str(len(seen))))
            if len(seen) == 1:
                qs["color"].append((f"what colour is the {kind}?", seen[0].color))
            elif len(seen) > 1 and min(np.diff([o.center[0] for o in seen])) > 0.04:
                qs["color"].append((f"what colour is the {kind} on the left?", seen[0].color))
                qs["color"].append((f"what colour is the {kind} on the right?", seen[-1].color))
                if len(seen) == 3:
                    qs["color"].append((f"what colour is the {kind} in the middle?", seen[1].color))
        present = {o.color for o in everywhere}
        qs["exists"] += [(f"is there {_a(f'{c} {kind}')}?", "yes" if c in present else "no") for c in COLORS]
        if len(everywhere) > 1:
            dist = sorted((float(np.linalg.norm(o.position - ee_pos)), o.color) for o in everywhere)
            if dist[1][0] - dist[0][0] > 0.03:
                qs["closest"].append((f"which {kind} is closest to the gripper?", dist[0][1]))
    for a in visible:
        qs["point"].append((f"where is the {a.name}?", f"({a.center[0]:.2f}, {a.center[1]:.2f})"))
        for b in visible:
            if a is not b and abs(a.center[0] - b.center[0]) > 0.05:
                qs["relation"].append((f"is the {a.name} left of the {b.name}?", "yes" if a.center[0] < b.center[0] else "no"))
    if drawer_open is not None:
        qs["drawer"].append(("is the drawer open?", "yes" if drawer_open else "no"))
    return {k: v for k, v in qs.items() if v}


def success_question(instruction: str) -> str:
    """The success question of a task, worded from its instruction alone (what a real robot has too)."""
    instruction = " ".join(instruction.split()).rstrip(".?!")
    if not instruction:
        raise ValueError("success_question: the instruction is empty; expected the task's words, e.g. 'reach the red ball'")
    return f"{SUCCESS_PREFIX}{instruction}?"


def question_kind(question: str) -> str:
    """Which of ``QUESTION_KINDS`` a question of this generator is (from its wording)."""
    for prefix, kind in (("describe", "caption"), ("what colour", "color"), ("is there", "exists"),
                         ("how many", "count"), ("which", "closest"), ("is the drawer open", "drawer"),
                         ("where is", "point"), (SUCCESS_PREFIX, "success")):
        if question.startswith(prefix):
            return kind
    if question.startswith("is the ") and " left of " in question:
        return "relation"
    raise ValueError(f"question {question!r} is not one `policystack vqa` asks; kinds: {QUESTION_KINDS}")


def _balanced(pairs: list[tuple[str, str]], rng: np.random.Generator) -> tuple[str, str]:
    """One question; yes/no kinds draw the answer first (half yes, half no) when both occur."""
    answers = sorted({a for _, a in pairs})
    if answers == ["no", "yes"]:
        want = answers[int(rng.integers(2))]
        pairs = [p for p in pairs if p[1] == want]
    return pairs[int(rng.integers(len(pairs)))]


def draw_examples(questions: dict[str, list[tuple[str, str]]], n: int, rng: np.random.Generator
                  ) -> list[tuple[str, str, str]]:
    """``n`` (kind, question, answer) examples: a kind uniformly, then a question of it; no repeats while
    unused questions are left."""
    pool = {k: list(v) for k, v in questions.items()}
    out = []
    for _ in range(n):
        if not pool:
            pool = {k: list(v) for k, v in questions.items()}
        kind = sorted(pool)[int(rng.integers(len(pool)))]
        q, a = _balanced(pool[kind], rng)
        pool[kind].remove((q, a))
        if not pool[kind]:
            del pool[kind]
        out.append((kind, q, a))
    return out


# --- rendering a scene ------------------------------------------------------------------------------
class SceneRenderer:
    """A task's env, reset scene by scene, plus a segmentation renderer of its front camera."""

    def __init__(self, task: str, cameras: tuple[str, ...], image_size: int):
        from policystack import envs

        if "front" not in cameras:
            raise ValueError(f"cameras={','.join(cameras)}: the answers refer to the front camera's image; include front")
        self.env = envs.make(task, cameras=cameras, image_size=image_size)
        self.base = self.env.unwrapped
        self._seg = mujoco.Renderer(self.base.model, *self.base.image_hw)
        self._seg.enable_segmentation_rendering()

    def scene(self, seed: int) -> tuple[dict[str, np.ndarray], list[SceneObject], bool | None]:
        """Camera frames (key -> uint8 [3, H, W]), objects and drawer state (None: no drawer) of scene ``seed``."""
        obs, _ = self.env.reset(seed=seed)
        drawer = None
        m, d = self.base.model, self.base.data
        if mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "drawer") >= 0:
            rng = np.random.default_rng([seed, 1])
            drawer = bool(rng.integers(2))
            d.qpos[m.joint("drawer").qposadr[0]] = rng.uniform(*(DRAWER_OPEN if drawer else DRAWER_CLOSED))
            mujoco.mj_forward(m, d)
            obs = self.base._observation()
        self._seg.update_scene(d, camera="front")
        objects = scene_objects(self.base, self._seg.render())
        return {k: v for k, v in obs.items() if k.startswith("observation.images.")}, objects, drawer

    def close(self) -> None:
        self._seg.close()
        self.env.close()


# --- the command --------------------------------------------------------------------------------------
def tabletop_tasks(env: str) -> list[str]:
    """``env="Reach,policystack/PressButton-v0"`` -> ["Reach", "PressButton"]; a KeyError naming unknown ones."""
    from policystack.envs import task_names

    tasks = [t.strip().removeprefix("policystack/").removesuffix("-v0") for t in env.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in task_names()]
    if unknown or not tasks:
        raise KeyError(f"env={env!r}: unknown task(s) {unknown}; valid tasks: {', '.join(task_names())}")
    return tasks


@dataclass
class VQAConfig:
    env: str  # tabletop tasks "A,B,C"
    scenes: int  # per task
    out: Path
    seed: int = 300000  # scene i of every task: reset(seed=seed + i)
    questions: int = 8  # examples (frames) per scene
    cameras: tuple[str, ...] = ("front", "wrist")
    image_size: int = 96
    vcodec: str = "libsvtav1"

    @property
    def tasks(self) -> list[str]:
        return tabletop_tasks(self.env)

    def __post_init__(self):
        tabletop_tasks(self.env)  # unknown names fail here
        for name in ("scenes", "questions", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")


def generate(cfg: VQAConfig, progress: bool = True) -> dict:
    """Write the examples of ``cfg`` (module docstring); returns counts per task and per question kind."""
    from tqdm import tqdm

    from policystack.datasets.writer import DatasetWriter

    h = w = cfg.image_size
    features = {camera_key(c): Feature("video", (h, w, 3), names=["height", "width", "channels"]) for c in cfg.cameras}
    counts: dict[str, int] = {}
    bar = tqdm(total=cfg.scenes * len(cfg.tasks), desc="vqa", unit="scene", disable=not progress)
    with DatasetWriter.create(cfg.out, fps=10, features=features, robot_type="panda", use_videos=True,
                              vcodec=cfg.vcodec) as writer:
        for task in cfg.tasks:
            renderer = SceneRenderer(task, cfg.cameras, cfg.image_size)
            try:
                for i in range(cfg.scenes):
                    seed = cfg.seed + i
                    frames, objects, drawer = renderer.scene(seed)
                    questions = scene_questions(objects, renderer.base.ee_pos, drawer)
                    for kind, q, a in draw_examples(questions, cfg.questions, np.random.default_rng([seed, 2])):
                        writer.add_frame({**frames, TASK: vl_task(q, a)})
                        counts[kind] = counts.get(kind, 0) + 1
                    writer.save_episode()
                    bar.update(1)
            finally:
                renderer.close()
    bar.close()
    return {"scenes": cfg.scenes * len(cfg.tasks), "examples": sum(counts.values()), "kinds": counts,
            "out": str(cfg.out)}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return 0
    try:
        cfg = VQAConfig(**parse_key_values(argv, VQAConfig, required=("env", "scenes", "out")))
    except (KeyError, ValueError) as e:
        print(f"policystack vqa: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    try:
        summary = generate(cfg)
    except (FileExistsError, ValueError) as e:
        print(f"policystack vqa: {e}", file=sys.stderr)
        return 1
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(summary["kinds"].items()))
    print(f"wrote {summary['examples']} examples of {summary['scenes']} scenes to {summary['out']}: {kinds}")
    return 0
