"""UWM's measurements -> docs/results.md (sections ``uwm_*``) and docs/figures/uwm_*.png.

Stages (``--stage``; each skips work whose output exists, so a grid is built over several sittings):

  success   per task, per spec (``specs()``: a preset plus overrides: UWM on frozen Lite0 features, UWM with
            the ResNet-18-style encoder, LeRobot's Diffusion Policy): ``policystack train`` on the same
            demos for the same compute budget (``--minutes`` of the training process's CPU time; constant
            rate after 20 warm-up steps; the steps and wall time each took are reported), then ``policystack eval`` on the same
            seeds 5000.. (as every section of docs/results.md) -> section uwm_success.
  cotrain   the same spec on the same demos, with and without action-free video mixed into every batch
            (``--video DIR[,DIR]`` as ``dataset.mixture``, ``--video-share`` of each batch) -> section uwm_cotrain.
  world     a UWM checkpoint on held-out demos (collected at seeds 320000+): forward dynamics p(o'|o,a) and
            video prediction p(o'|o) error of the future frame (latent MSE; decoded-pixel MAE and PSNR),
            beside copying the current frame and the codec's own reconstruction; inverse dynamics p(a|o,o')
            and policy p(a|o) action error against the demo's actions; a PNG grid of frames -> section uwm_world.
  ddim      a UWM checkpoint: success and predict_action_chunk latency per number of DDIM steps, and
            select_action latency of UWM and Diffusion Policy (1 torch thread) -> section uwm_ddim.

    .venv/bin/python benchmarks/bench_uwm.py --stage success --tasks OpenDrawer,Reach,PressButton \\
        --specs uwm_lite0,diffusion --minutes 20 --ae /tmp/uwm/ae --work /tmp/uwm
    .venv/bin/python benchmarks/bench_uwm.py --stage world --tasks OpenDrawer --work /tmp/uwm
    .venv/bin/python benchmarks/bench_uwm.py --stage ddim --tasks OpenDrawer --ddim 1,2,5,10 --work /tmp/uwm

Demos are ``policystack collect`` output at ``<work>/data/<Task>`` (seed 300000 on: never the evaluation
seeds); runs go to ``<work>/runs/<Task>_<spec>``. Every long process runs niced (10) with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402
from bench_success import cell, eval_info, run, train_minutes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results.md"
FIGURES = ROOT / "docs" / "figures"
DEMO_SEED, HELD_OUT_SEED, EVAL_SEED = 300000, 320000, 5000
COMMON = ["seed=0", "threads=1", "log.progress=false", "log.wandb.enabled=false", "log.every=25",
          "checkpoint.every=250"]
TRAIN_ARGS: list[str] = []  # --train-args: more `policystack train` overrides for every run


def specs(ae: str | None) -> dict[str, list[str]]:
    """Spec name -> `policystack train` overrides (besides data, steps, warm-up)."""
    latents = [f"policy.latent_model={ae}", "policy.latent_channels=4"] if ae else []
    uwm = ["policy=uwm", *latents, "policy.patch_size=3", "batch_size=32"]
    return {
        # frozen ImageNet features, cached by the loader; the instruction only joins the condition
        "uwm_lite0": [*uwm, "policy.image_encoder=lite0", "policy.film=false"],
        # the same, the instruction also FiLM-modulating the Lite0 map before pooling (as RT-1 and bc; the preset)
        "uwm_lite0_film": [*uwm, "policy.image_encoder=lite0", "policy.film=true"],
        "uwm_resnet": [*uwm, "policy.image_encoder=resnet"],  # the ResNet-18-style encoder trained on pixels
        "diffusion": ["policy=diffusion"],  # LeRobot's Diffusion Policy, its preset and recipe (batch 64)
    }


def niced(cmd: list[str], log: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if os.nice(0) < 10:
        os.nice(10 - os.nice(0))  # children inherit it
    run(cmd, log)


def budget(minutes: float) -> list[str]:
    """The same compute budget for every spec: stop after `minutes` of the training process's CPU time
    (time_limit_clock=cpu, data loading in the same process so that decoding and feature caching count),
    a constant rate after 20 warm-up steps (a budget cut short would leave a cosine schedule half-way), the
    spec's own lr and batch. CPU time, not wall time: on a shared machine a run's wall time follows the
    others' load (the same run took 4-60% of a core at different times here)."""
    return ["steps=1000000", f"time_limit_min={minutes}", "time_limit_clock=cpu", "dataset.num_workers=0",
            "optim.warmup_steps=20", "optim.min_lr_ratio=1.0"]


def train_and_eval(work: Path, task: str, name: str, spec: list[str], minutes: float, episodes: int,
                   extra: tuple[str, ...] = ()) -> tuple[dict | None, Path]:
    out = work / "runs" / f"{task}_{name}"
    info = out / "eval" / "eval_info.json"
    log = work / "logs" / f"{task}_{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if not (out / "checkpoints" / "latest").exists():
        niced(["train", f"dataset.path={work / 'data' / task}", *spec, *budget(minutes), *COMMON, *TRAIN_ARGS,
               *extra, f"out={out}"], log)
    if not info.is_file():
        niced(["eval", f"checkpoint={out}", f"env={task}", f"episodes={episodes}", f"seed={EVAL_SEED}", "n_envs=2",
               "videos=0", f"out={out / 'eval'}"], log)
    return eval_info(info), out


def steps_done(out: Path) -> str:
    lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").is_file() else []
    return str(json.loads(lines[-1])["step"]) if lines else "?"


# --- success ---------------------------------------------------------------------------------------------
def stage_success(args, work: Path) -> str:
    table = specs(args.ae)
    rows, notes = [], []
    for task in args.tasks:
        cells = []
        for name in args.specs:
            res, out = train_and_eval(work, task, name, table[name], args.minutes, args.eval_episodes)
            cells.append(cell(res))
            notes.append(f"{task} {name}: {steps_done(out)} steps in {train_minutes(out)} min")
        rows.append(f"| {task} | " + " | ".join(cells) + " |")
    head = f"| task | {' | '.join(args.specs)} |\n|---|" + "---|" * len(args.specs)
    return (f"{head}\n" + "\n".join(rows) + "\n\nTraining (steps reached in the budget, wall minutes they took): " + "; ".join(notes)
            + "\n\nSpecs: " + "; ".join(f"`{n}`: `{' '.join(table[n])}`" for n in args.specs)
            + f". Produced by `benchmarks/bench_uwm.py --stage success --tasks {','.join(args.tasks)} --specs "
              f"{','.join(args.specs)} --minutes {args.minutes} --eval-episodes {args.eval_episodes}"
              + (f" --train-args '{args.train_args}'" if args.train_args else "") + "`; every run: "
              f"`{' '.join(budget(args.minutes))}`.")


def stage_cotrain(args, work: Path) -> str:
    name = args.specs[0]
    spec = specs(args.ae)[name]
    videos = [v for v in args.video.split(",") if v]
    rows = []
    for task in args.tasks:
        base, out0 = train_and_eval(work, task, name, spec, args.minutes, args.eval_episodes)
        co, out1 = train_and_eval(work, task, f"{name}_cotrain", spec, args.minutes, args.eval_episodes,
                                  extra=(f"dataset.mixture=[{','.join(videos)}]",
                                         f"dataset.mixture_weights=[{','.join([str(args.video_share / len(videos))] * len(videos))}]"))
        rows.append(f"| {task} | {cell(base)} | {cell(co)} | {train_minutes(out0)} / {train_minutes(out1)} |")
    return ("| task | demos only | demos + action-free video | train min (without / with) |\n|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\nSpec `{name}`, {args.minutes} min each; video: {', '.join(videos)}, {args.video_share:.0%} of every batch. Produced "
            f"by `benchmarks/bench_uwm.py --stage cotrain --tasks {','.join(args.tasks)} --specs {name} --minutes "
            f"{args.minutes} --video {args.video} --video-share {args.video_share} --eval-episodes {args.eval_episodes}"
            + (f" --train-args '{args.train_args}'" if args.train_args else "") + "`.")


# --- world model ------------------------------------------------------------------------------------------
def held_out(work: Path, task: str) -> Path:
    data = work / "data" / f"{task}_heldout"
    if not (data / "meta" / "info.json").is_file():
        niced(["collect", f"env={task}", "episodes=20", f"seed={HELD_OUT_SEED}", f"out={data}"],
              work / "logs" / f"{task}_heldout.log")
    return data


def stage_world(args, work: Path) -> str:
    import torch

    from policystack.datasets.loader import WindowedDataset
    from policystack.policies.base import Policy
    from policystack.policies.uwm import Mode
    from policystack.types import ACTION, TASK

    torch.set_num_threads(1)
    rows, act_rows = [], []
    for task in args.tasks:
        policy = Policy.from_pretrained(work / "runs" / f"{task}_{args.specs[0]}").eval()
        c = policy.config
        ds = WindowedDataset(held_out(work, task), delta_indices=c.delta_indices(policy.features),
                             keys=list(policy.features))
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(len(ds), size=min(args.windows, len(ds)), replace=False))
        batch = ds.get_batch(idx)
        obs = {k: v[:, c.n_obs_steps - 1] for k, v in batch.items() if k.startswith("observation.")}
        obs[TASK] = batch[TASK]
        future = {k: batch[k][:, c.n_obs_steps:] for k in policy.cameras}  # [B, F, 3, H, W]
        truth = policy.encode_frames(future)  # [B, V, C, F, h, w]
        g = torch.Generator().manual_seed(0)
        fwd = policy.sample(Mode.FORWARD_DYNAMICS, obs, action=batch[ACTION], generator=g)
        vid = policy.sample(Mode.VIDEO, obs, generator=g)
        recon = policy.decode_latents(truth)
        now = {k: obs[k][:, None] for k in policy.cameras}

        for label, lat, frames in [("forward dynamics p(o' \\| o, a)", fwd.latents, fwd.frames),
                                   ("video prediction p(o' \\| o)", vid.latents, vid.frames),
                                   ("copy the current frame", policy.encode_frames(now), now),
                                   ("codec reconstruction of the true frame", truth, recon)]:
            mae, psnr = pixel_error(frames, future)
            rows.append(f"| {task} | {label} | {float(((lat - truth) ** 2).mean()):.4f} | {mae:.1f} | {psnr:.1f} |")
        inv = policy.sample(Mode.INVERSE_DYNAMICS, obs, frames=future, generator=g).actions
        pol = policy.sample(Mode.POLICY, obs, generator=g).actions
        demo = batch[ACTION]
        scale = demo.flatten(0, 1).std(0).clamp(min=1e-6)
        for label, a in [("inverse dynamics p(a \\| o, o')", inv), ("policy p(a \\| o)", pol),
                         ("mean demo action", demo.mean((0, 1), keepdim=True).expand_as(demo))]:
            act_rows.append(f"| {task} | {label} | {float((a - demo).abs().mean()):.4f} | "
                            f"{float((((a - demo) / scale) ** 2).mean()):.3f} |")
        png = grid_png(policy, obs, future, fwd.frames, vid.frames, recon, task)
        print(f"wrote {png}")
    n = min(args.windows, 10**9)
    return ("Future frame (offset = horizon, the frame after the chunk), " + f"{n} held-out windows per task:\n\n"
            "| task | prediction | latent MSE | pixel MAE (0-255) | PSNR dB |\n|---|---|---:|---:|---:|\n" + "\n".join(rows)
            + "\n\nAction chunk against the demo's (unnormalised; nMSE = per-dimension MSE / demo variance):\n\n"
            "| task | prediction | MAE | nMSE |\n|---|---|---:|---:|\n" + "\n".join(act_rows)
            + f"\n\nCheckpoints `{args.specs[0]}` of the success runs; grids (rows: windows; per camera, left to right: "
              "the current frame, the true future frame, forward dynamics, video prediction, the codec's "
              "reconstruction of the true frame): "
            + ", ".join(f"docs/figures/uwm_forward_dynamics_{t}.png" for t in args.tasks)
            + f". Produced by `benchmarks/bench_uwm.py --stage world --tasks {','.join(args.tasks)} --specs "
              f"{args.specs[0]} --windows {args.windows}`.")


def pixel_error(frames: dict, truth: dict) -> tuple[float, float]:
    """Mean absolute error (0-255) and PSNR (dB) of uint8 frames {camera: [B, F, 3, H, W]} against the truth."""
    import torch

    diff = torch.cat([frames[k].flatten(0, 1).float() - truth[k].flatten(0, 1).float() for k in truth])
    mse = float((diff**2).mean())
    return float(diff.abs().mean()), 10 * np.log10(255.0**2 / max(mse, 1e-10))


def grid_png(policy, obs, future, fwd, vid, recon, task: str, rows: int = 6) -> Path:
    """Rows: windows; columns per camera: current | true future | forward dynamics | video | codec recon."""
    from PIL import Image

    from policystack.io import atomic_write_bytes

    n = min(rows, obs[policy.cameras[0]].shape[0])
    pick = np.linspace(0, obs[policy.cameras[0]].shape[0] - 1, n).round().astype(int)
    tiles = []
    for i in pick:
        row = []
        for k in policy.cameras:
            row += [obs[k][i], future[k][i, 0], fwd[k][i, 0], vid[k][i, 0], recon[k][i, 0]]
        tiles.append(np.concatenate([t.permute(1, 2, 0).numpy() for t in row], 1))
    img = np.concatenate(tiles, 0)
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"uwm_forward_dynamics_{task}.png"
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


# --- DDIM steps and latency -------------------------------------------------------------------------------
def latency_ms(fn, obs, repeats: int = 15) -> float:
    fn(obs)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(obs)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def stage_ddim(args, work: Path) -> str:
    import torch

    from policystack.eval.runner import EvalRunner
    from policystack.policies.base import Policy
    from policystack.types import TASK

    torch.set_num_threads(1)
    task = args.tasks[0]
    path = work / "runs" / f"{task}_{args.specs[0]}"
    policy = Policy.from_pretrained(path).eval()
    obs = {k: (torch.randint(0, 256, (1, *f.chw), dtype=torch.uint8) if f.is_visual else torch.zeros(1, *f.shape))
           for k, f in policy.features.items() if k.startswith("observation.")}
    obs[TASK] = ["open the drawer"]
    rows = []
    for k in [int(s) for s in args.ddim.split(",")]:
        policy.config.num_inference_steps = k
        cache = path / "eval" / f"ddim_{k}.json"
        if not cache.is_file():
            res = EvalRunner(task=task, episodes=args.eval_episodes, n_envs=2, seed=EVAL_SEED, video_dir=None,
                             progress=False).run(policy)
            from policystack.io import atomic_write_json

            atomic_write_json(cache, {"success_rate": res.success_rate, "ci_low": res.ci_low, "ci_high": res.ci_high,
                                      "successes": res.successes, "episodes": res.n_episodes})
        res = json.loads(cache.read_text())
        ms = latency_ms(policy.predict_action_chunk, obs)
        per_step = ms / policy.config.n_action_steps
        rows.append(f"| {k} | {cell(res)} | {ms:.0f} | {per_step:.0f} |")
    out = ("| DDIM steps | success | predict_action_chunk ms | select_action ms per step (amortised) |\n"
           "|---:|---|---:|---:|\n" + "\n".join(rows))
    dp = work / "runs" / f"{task}_diffusion"
    if (dp / "checkpoints").is_dir():
        peer = Policy.from_pretrained(dp).eval()
        pobs = {k: v for k, v in obs.items() if k in peer.features or k == TASK}
        ms = latency_ms(peer.predict_action_chunk, pobs)
        out += (f"\n\nLeRobot's Diffusion Policy (tiny preset, {peer.config.num_inference_steps} DDIM steps, "
                f"{peer.config.n_action_steps} actions per chunk) on the same machine and thread: predict_action_chunk "
                f"{ms:.0f} ms, {ms / peer.config.n_action_steps:.0f} ms per step amortised.")
    return (out + f"\n\n{task}, checkpoint `{args.specs[0]}`, {args.eval_episodes} episodes per row (seeds "
            f"{EVAL_SEED}+); latency: median of 15 calls, batch 1, 1 torch thread, on the shared 2-core machine. "
            f"Produced by `benchmarks/bench_uwm.py --stage ddim --tasks {task} --specs {args.specs[0]} "
            f"--ddim {args.ddim} --eval-episodes {args.eval_episodes}`.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", required=True, choices=("success", "cotrain", "world", "ddim"))
    ap.add_argument("--tasks", default="OpenDrawer")
    ap.add_argument("--specs", default="uwm_lite0", help=f"comma-separated, of {sorted(specs(None))}")
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget per run, CPU minutes")
    ap.add_argument("--ae", default=None, help="autoencoder directory (policystack autoencoder) for UWM's latents")
    ap.add_argument("--video", default="", help="action-free datasets for --stage cotrain, comma-separated")
    ap.add_argument("--video-share", type=float, default=0.5, help="their share of every batch (split evenly)")
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--windows", type=int, default=200, help="held-out windows for --stage world")
    ap.add_argument("--ddim", default="1,2,5,10")
    ap.add_argument("--work", type=Path, default=Path("runs/uwm"))
    ap.add_argument("--train-args", default="", help="more train overrides for every run, e.g. 'dataset.episodes=0-99'")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    TRAIN_ARGS[:] = args.train_args.split()
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.specs = [s for s in args.specs.split(",") if s]
    unknown = [s for s in args.specs if s not in specs(None)]
    if unknown:
        ap.error(f"unknown specs {unknown}; valid: {sorted(specs(None))}")
    work = args.work.resolve()
    md = {"success": stage_success, "cotrain": stage_cotrain, "world": stage_world, "ddim": stage_ddim}[args.stage](
        args, work)
    print(md)
    if not args.no_write:
        print(f"wrote {write_section(f'uwm_{args.stage}', md, RESULTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
