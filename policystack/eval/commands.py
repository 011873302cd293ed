"""``policystack eval``: evaluate a checkpoint (or the scripted expert) in simulation.

    policystack eval checkpoint=DIR|expert env=TASK[,TASK...] [episodes=20] [n_envs=1] [seed=1000]
        [out=DIR] [videos=2] [max_steps=N] [device=cpu] [policy=NAME] [overwrite=false]
        [cameras=front,wrist] [image_size=96] [action_mode=ee_delta] [start_pose=random|home]
        [swap_instruction=false] [variations=30-49] [camera_convention=lerobot|upright|vflip]
        [instructions=templates|paraphrases] [target_color=COLOUR] [threads=1] [n_action_steps=N]
        [detector=DIR] [detector_threshold=0.5] [embodiment=NAME]

checkpoint: a policy directory, a training checkpoint or a run directory (its latest checkpoint),
or ``expert`` for the task's scripted expert. policy=NAME checks the checkpoint is of that family.
cameras / image_size / action_mode override the env settings, which otherwise follow the
checkpoint's features. MetaWorld only: ``variations`` pins MT1 task variations (episode seed s
runs variation ``variations[s % n]``, so evaluate on ones held out of the demos); the camera
convention and look follow what the checkpoint records, and ``camera_convention`` says how the
images of a checkpoint that records nothing (trained on data from LeRobot's tools, or collected
before issue 14) were made (docs/envs.md). max_steps=150 matches demos capped at 150 steps.
Writes OUT/eval_info.json, OUT/eval.png and OUT/videos/<task>/*.mp4 (OUT
defaults to CHECKPOINT/eval/<tasks>, or outputs/eval/expert/<tasks>); prints each task's success
rate with its Wilson 95% interval.

detector=DIR: a success detector (a ``describer`` checkpoint, ``policystack train policy=describer``;
docs/perception.md) judges each episode's last frame from the instruction; its verdict is recorded beside
the simulator's is_success and each task's agreement, precision and recall (Wilson 95% intervals) are
printed and written to eval_info.json (``detector`` per task and overall). The env then also renders the
detector's cameras (checkpoint=expert included).

swap_instruction=true: the same seeded scenes, but each instruction names another of the scene's
objects (the same template, another colour) and success is judged on that object: the rate printed
is how often the policy follows the instruction (docs/evaluation.md). OUT defaults to ..._swap.
n_action_steps=N: execute N actions of each predicted chunk before predicting again, instead of the
checkpoint's own setting (at most its horizon): an inference-time setting, tried without retraining.
instructions=paraphrases: the same scenes, the instructions worded by the task's paraphrases, which no
demonstration uses (docs/envs.md). OUT defaults to ..._paraphrases.
embodiment=NAME: a checkpoint that acts on several robots (Gato trained with another robot's dataset in
``dataset.mixture``) acts as that one (its features choose the env's cameras and sizes); the checkpoint's
own robot is ``main``, the others are named after their datasets (``mw_reach``).
target_color=purple (Reach, PressButton): every episode's goal is the purple object (the seed's scene, with
the goal and a purple distractor swapping colours, or the goal repainted): the held-out colour of demos
collected with ``exclude=purple``, evaluated alone. OUT defaults to ..._purple.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policystack.keyvalue import parse_int_ranges, parse_key_values

USAGE = __doc__.split("\n\n")[1]


@dataclass
class EvalArgs:
    checkpoint: str
    env: str
    episodes: int = 20
    n_envs: int = 1
    seed: int = 1000
    out: str = ""
    videos: int = 2
    max_steps: int = 0  # 0: the task's own limit
    device: str = "cpu"
    policy: str = ""
    overwrite: bool = False
    cameras: str | None = None
    image_size: int = 0
    action_mode: str = ""
    start_pose: str = ""
    swap_instruction: bool = False
    variations: str = ""  # MetaWorld MT1 variations, e.g. 30-49
    camera_convention: str = ""  # MetaWorld: lerobot | upright | vflip, for checkpoints that record none
    # torch threads: a small-batch rollout gains little from more, and on shared cores more threads
    # spin against each other (2 threads beside two busy processes: 37 s per PressButton episode, 1: 0.5 s)
    threads: int = 1
    instructions: str = ""
    target_color: str = ""  # every episode's goal has this colour (Reach, PressButton)
    n_action_steps: int = 0  # 0: the checkpoint's; N: execute N actions of each chunk (<= its horizon)
    detector: str = ""  # a describer checkpoint judging each episode's last frame
    detector_threshold: float = 0.5  # its verdict: P(done) >= this
    embodiment: str = ""  # a multi-robot checkpoint's robot to act as (Gato: main, or a mixed-in dataset's name)

    @property
    def tasks(self) -> list[str]:
        return [t for t in self.env.split(",") if t]

    def env_overrides(self) -> dict[str, Any] | None:
        kw: dict[str, Any] = {}
        if self.cameras is not None:
            kw["cameras"] = tuple(c for c in self.cameras.split(",") if c and c != "none")
        if self.image_size:
            kw["image_size"] = self.image_size
        if self.action_mode:
            kw["action_mode"] = self.action_mode
        if self.start_pose:
            kw["start_pose"] = self.start_pose
        if self.variations:
            kw["variations"] = tuple(parse_int_ranges(self.variations, "variations"))
        if self.instructions:
            kw["instructions"] = self.instructions
        if self.target_color:
            kw["target_color"] = self.target_color
        return kw or None

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        name = "_".join(self.tasks) + ("_swap" if self.swap_instruction else "") \
            + ("_paraphrases" if self.instructions == "paraphrases" else "") \
            + (f"_{self.target_color}" if self.target_color else "")
        if self.checkpoint == "expert":
            return Path("outputs/eval/expert") / name
        return Path(self.checkpoint) / "eval" / name


def parse_args(argv: list[str]) -> EvalArgs:
    """key=value arguments -> EvalArgs; errors name the offending argument."""
    args = EvalArgs(**parse_key_values(argv, EvalArgs, required=("checkpoint", "env")))
    if not args.tasks:
        raise ValueError("env=: expected at least one task name")
    if args.variations or args.camera_convention:
        from policystack.eval.envs import resolve_task

        tabletop = [t for t in args.tasks if resolve_task(t)[0] != "metaworld"]
        if tabletop:
            raise ValueError(f"variations= and camera_convention= apply to MetaWorld tasks only, not {tabletop}")
        args.env_overrides()  # a bad variations= fails here
    return args


def load_policy(checkpoint: str, policy: str = "", device: str = "cpu") -> Any:
    """The policy to evaluate: ``expert`` -> ScriptedExpert; else ``Policy.from_pretrained`` (with
    ``policy`` set, the checkpoint must be of that family)."""
    if checkpoint == "expert":
        from policystack.eval.expert import ScriptedExpert

        return ScriptedExpert()
    from policystack.policies.base import Policy, get_policy_class

    klass = get_policy_class(policy) if policy else Policy
    return klass.from_pretrained(checkpoint, map_location=device)


def as_embodiment(policy: Any, name: str, checkpoint: str) -> Any:
    """``policy`` acting as its robot ``name`` (``GatoPolicy.for_embodiment``); refused, naming what the
    checkpoint has, for a policy of one robot or an unknown name."""
    names = sorted(getattr(policy, "embodiments", None) or [])
    if not hasattr(policy, "for_embodiment"):
        raise ValueError(f"embodiment={name}: {checkpoint} acts on one robot (only multi-robot checkpoints, "
                         "such as Gato trained with another robot's dataset mixed in, have embodiments)")
    if name not in names:
        raise ValueError(f"embodiment={name}: {checkpoint} has no such embodiment; it has {names}")
    return policy.for_embodiment(name)


def set_n_action_steps(policy: Any, n: int, checkpoint: str) -> None:
    """Execute ``n`` actions of each predicted chunk (``PolicyConfig.n_action_steps``) instead of the
    checkpoint's own number; refused for the expert and past the policy's horizon."""
    horizon = getattr(getattr(policy, "config", None), "horizon", None)
    if horizon is None:
        raise ValueError(f"n_action_steps={n}: {checkpoint} predicts no action chunks")
    if not 1 <= n <= horizon:
        raise ValueError(f"n_action_steps={n}: expected 1 .. {horizon} (the horizon of {checkpoint})")
    policy.config.n_action_steps = n
    policy.reset()


def training_scenes(policy: Any, tasks: list[str], seed: int, episodes: int) -> dict[str, str]:
    """Task -> a warning, for each task whose eval seeds ``seed .. seed + episodes - 1`` overlap the
    simulator seeds the policy's training demos were collected with (``Policy.data_provenance``, from
    the dataset's info.json ``sim_seeds``): those episodes replay training scenes, so their success
    is not held-out success."""
    data = getattr(policy, "data_provenance", None) or {}
    out = {}
    for task, (first, last) in (data.get("sim_seeds") or {}).items():
        n = len(range(max(seed, first), min(seed + episodes - 1, last) + 1))
        if task in tasks and n:
            out[task] = (f"{task}: {n} of the eval seeds {seed}-{seed + episodes - 1} are training scenes (the demos "
                         f"of {data.get('dataset', 'the training dataset')} used seeds {first}-{last}); pass "
                         f"seed={last + 1} or higher for held-out scenes")
    return out


def evaluate(args: EvalArgs, progress: bool = True) -> dict[str, Any]:
    """Run every task of ``args``; write the report. Returns {"results", "eval_info", "plot"}."""
    import torch

    from policystack.eval.report import EVAL_INFO, write_report
    from policystack.eval.runner import EvalRunner

    if args.threads < 1:
        raise ValueError(f"threads={args.threads}: expected >= 1")
    torch.set_num_threads(args.threads)
    out = args.out_dir()
    runners = [EvalRunner(task=t, episodes=args.episodes, n_envs=args.n_envs, seed=args.seed,
                          max_steps=args.max_steps or None, env_kwargs=args.env_overrides(),
                          video_dir=out / "videos" / t if args.videos else None, n_videos=args.videos,
                          progress=progress, swap_instruction=args.swap_instruction,
                          camera_convention=args.camera_convention or None,
                          detector_threshold=args.detector_threshold)
               for t in args.tasks]  # validates all names before loading
    policy = load_policy(args.checkpoint, args.policy, args.device)
    if args.embodiment:
        policy = as_embodiment(policy, args.embodiment, args.checkpoint)
    if args.n_action_steps:
        set_n_action_steps(policy, args.n_action_steps, args.checkpoint)
    if args.detector:
        detector = load_policy(args.detector, "describer", args.device).eval()
        for runner in runners:
            runner.detector = detector
    if (out / EVAL_INFO).exists() and not args.overwrite:
        raise FileExistsError(f"{out / EVAL_INFO} exists; pass another out= or overwrite=true")
    seen = training_scenes(policy, args.tasks, args.seed, args.episodes)
    for warning in seen.values():
        print(f"policystack eval: warning: {warning}", file=sys.stderr)
    results = [runner.run(policy) for runner in runners]
    paths = write_report(out, results, args.checkpoint)
    return {"results": results, "training_scenes": seen, **paths}


def detector_line(d: dict[str, Any]) -> str:
    """One line of a detector summary (eval.metrics.detector_summary)."""
    def rate(name: str) -> str:
        low, high = d[f"{name}_ci"]
        return f"{name} " + ("n/a" if d[name] is None else f"{d[name]:.1%} [{low:.1%}, {high:.1%}]")
    return (f"{rate('agreement')}, {rate('precision')}, {rate('recall')} over {d['episodes']} episodes "
            f"(tp {d['tp']}, fp {d['fp']}, tn {d['tn']}, fn {d['fn']}; majority answer {d['majority']:.1%})")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return 0
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering (inherited by env workers)
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    try:
        args = parse_args(argv)
        report = evaluate(args)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"policystack eval: {msg}", file=sys.stderr)
        return 2
    for r in report["results"]:
        what = "follows the swapped instruction" if r.swap_instruction else "success"
        print(f"{r.task}: {what} {r.success_rate:.1%} [{r.ci_low:.1%}, {r.ci_high:.1%}] "
              f"({r.successes}/{r.n_episodes}), mean length {r.mean_length:.1f}, mean reward {r.mean_reward:.2f}")
        if r.policy_stats:
            print("  policy: " + ", ".join(f"{k} {v}" for k, v in r.policy_stats.items()))
        if r.detector is not None:
            print(f"  detector: {detector_line(r.detector)}")
        for v in r.videos:
            print(f"  video: {v}")
    print(f"eval_info: {report['eval_info']}")
    print(f"plot:      {report['plot']}")
    return 0
