"""``policystack autoencoder``: train the small image autoencoder whose latents a world model predicts.

    policystack autoencoder dataset=data/opendrawer[,data/video] out=models/ae [steps=3000] [batch_size=64]
        [lr=1e-3] [channels=4] [widths=32,64,128] [kl_weight=1e-6] [crop=0] [cameras=front,wrist] [seed=0]
        [threads=1]

Frames of every camera (or ``cameras``) of the datasets (LeRobot v3; with or without actions) train a
``perception.latents.ConvAutoencoder``: L1 reconstruction of a posterior sample plus ``kl_weight`` times
the KL to N(0, 1), AdamW with 200 warm-up steps and cosine decay (the training loop's schedule). The
network is fully convolutional, so ``crop=S`` trains on random S x S windows of the frames (S = half the
side costs a quarter per step); statistics and the held-out error are measured on whole frames. Every
20th episode of each dataset is held out. At the end the per-channel statistics of the latents are
measured on up to 4096 training frames (they scale what ``encode`` returns), the held-out reconstruction
error is measured, and the directory ``out`` (config.json with the architecture, statistics and this
record; model.safetensors) is written in one atomic step. A UWM config names it in ``latent_model``
(with ``latent_channels`` = channels, ``latent_downsample`` = 2 ** len(widths)).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from policystack.keyvalue import parse_key_values
from policystack.perception.latents import LATENT_SPREAD, ConvAutoencoder, to_signed
from policystack.types import EPISODE_INDEX, camera_key

USAGE = __doc__.split("\n\n")[1]
HOLD_OUT_EVERY = 20  # episode e is held out when e % 20 == 0
WARMUP_STEPS = 200


@dataclass
class AutoencoderConfig:
    dataset: tuple[str, ...]  # LeRobot v3 dataset directories
    out: Path  # the autoencoder directory to write
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    channels: int = 4  # latent channels
    widths: tuple[int, ...] = (32, 64, 128)  # stride-2 stages: downsample 2 ** len(widths)
    kl_weight: float = 1e-6
    crop: int = 0  # train on random crop x crop windows (a multiple of 2 ** len(widths)); 0 = whole frames
    cameras: tuple[str, ...] = ()  # camera names; () = every camera of the first dataset
    seed: int = 0
    threads: int = 1  # torch threads
    log_every: int = 100
    overwrite: bool = False

    def __post_init__(self):
        if not self.dataset:
            raise ValueError("dataset=: give at least one LeRobot v3 dataset directory")
        for name in ("steps", "batch_size", "channels", "threads", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths={','.join(map(str, self.widths))}: expected positive channel counts")
        if self.crop < 0 or self.crop % 2 ** len(self.widths):
            raise ValueError(f"crop={self.crop}: expected 0 or a multiple of the downsample factor {2 ** len(self.widths)}")
        if self.lr <= 0 or self.kl_weight < 0:
            raise ValueError(f"lr must be > 0 and kl_weight >= 0, got {self.lr}, {self.kl_weight}")
        if self.out.exists() and not self.overwrite:
            raise FileExistsError(f"out={self.out} exists; choose another out= or pass overwrite=true")


class FramePool:
    """Every camera frame of some datasets, split into training and held-out episodes; ``draw`` gives
    uint8 frames [N, 3, H, W] (decoded through the loader's frame cache)."""

    def __init__(self, roots: tuple[str, ...], cameras: tuple[str, ...]):
        from policystack.datasets.loader import WindowedDataset
        from policystack.types import is_image_key

        self.parts = []  # (dataset, camera keys, train indices, held-out indices)
        shapes = set()
        for root in roots:
            probe = WindowedDataset(root, keys=[EPISODE_INDEX])
            have = [k for k, f in probe.meta.features.items() if is_image_key(k) and f.is_visual]
            keys = [camera_key(c) for c in cameras] if cameras else have
            missing = [k for k in keys if k not in have]
            if missing or not keys:
                raise KeyError(f"{probe.root}: cameras {missing or keys} not in the dataset; its cameras: {have}")
            ds = WindowedDataset(root, keys=keys)
            shapes |= {ds.meta.features[k].chw for k in keys}
            ep = probe.get_batch(np.arange(len(probe)))[EPISODE_INDEX].numpy()
            held = ep % HOLD_OUT_EVERY == 0
            self.parts.append((ds, keys, np.flatnonzero(~held), np.flatnonzero(held)))
        if len(shapes) != 1:
            raise ValueError(f"the cameras of {', '.join(roots)} have different sizes {sorted(shapes)}; "
                             f"one autoencoder trains on one frame size")
        self.shape = shapes.pop()

    def draw(self, n: int, rng: np.random.Generator, held_out: bool = False) -> torch.Tensor:
        """n random frames (dataset, camera and frame drawn uniformly over all frames of the split)."""
        sizes = np.array([len(p[3] if held_out else p[2]) * len(p[1]) for p in self.parts])
        if sizes.sum() == 0:
            raise ValueError(f"no {'held-out' if held_out else 'training'} frames")
        which = rng.choice(len(self.parts), size=n, p=sizes / sizes.sum())
        out = []
        for i in np.unique(which):
            ds, keys, train, held = self.parts[i]
            pool = held if held_out else train
            m = int((which == i).sum())
            idx = rng.choice(pool, size=m)
            cam = rng.integers(0, len(keys), size=m)
            batch = ds.get_batch(idx)
            frames = torch.stack([batch[k] for k in keys], 1)  # [m, V, 3, H, W]
            out.append(frames[torch.arange(m), torch.from_numpy(cam)])
        return torch.cat(out)


@torch.no_grad()
def evaluate(model: ConvAutoencoder, frames: torch.Tensor) -> dict[str, float]:
    """Reconstruction of uint8 frames through encode -> decode: L1 in [-1, 1] units and PSNR (dB, 8-bit)."""
    model.eval()
    recon = model.decode(model.encode(frames))
    err = (to_signed(recon) - to_signed(frames)).abs().mean().item()
    mse = ((recon.float() - frames.float()) ** 2).mean().item()
    return {"l1": err, "psnr_db": 10 * float(np.log10(255.0**2 / max(mse, 1e-10)))}


def train_autoencoder(cfg: AutoencoderConfig, progress: bool = True) -> Path:
    """Train, measure, write ``cfg.out``; returns it."""
    from policystack.policies.layers.augment import crop
    from policystack.training.loop import lr_factor, param_groups

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    pool = FramePool(cfg.dataset, cfg.cameras)
    model = ConvAutoencoder(cfg.channels, cfg.widths)
    model.latent_shape(*pool.shape[1:])  # the frame size divides by the downsample factor
    if cfg.crop > min(pool.shape[1:]):
        raise ValueError(f"crop={cfg.crop} exceeds the {pool.shape[1]}x{pool.shape[2]} frames")
    opt = torch.optim.AdamW(param_groups(model, 1e-4), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, WARMUP_STEPS, cfg.steps, 0.0))
    t0 = time.perf_counter()
    logs: dict[str, float] = {}
    for step in range(cfg.steps):
        model.train()
        frames = pool.draw(cfg.batch_size, rng)
        if cfg.crop:
            frames = crop(frames, cfg.crop, cfg.crop, random=True)
        loss, logs = model.loss(frames, cfg.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if progress and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
            print(f"autoencoder step {step + 1}/{cfg.steps}: l1 {logs['l1']:.4f} kl {logs['kl']:.1f} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    model.eval()
    with torch.no_grad():  # per-channel latent statistics over training frames
        means = torch.cat([model.posterior(to_signed(pool.draw(256, rng)))[0] for _ in range(16)])
        model.latent_mean.copy_(means.mean(dim=(0, 2, 3)))
        model.latent_std.copy_(means.std(dim=(0, 2, 3)).clamp(min=1e-6))
    held = evaluate(model, pool.draw(512, rng, held_out=True))
    model.record = {"trained_on": [str(Path(d).resolve()) for d in cfg.dataset], "frame_shape": list(pool.shape),
                    "cameras": sorted({k for p in pool.parts for k in p[1]}), "steps": cfg.steps,
                    "batch_size": cfg.batch_size, "lr": cfg.lr, "kl_weight": cfg.kl_weight, "crop": cfg.crop,
                    "seed": cfg.seed,
                    "latent_spread": LATENT_SPREAD, "final_train_l1": logs.get("l1"),
                    "held_out_l1": held["l1"], "held_out_psnr_db": held["psnr_db"],
                    "train_seconds": round(time.perf_counter() - t0, 1)}
    model.save(cfg.out, replace=cfg.overwrite)
    return cfg.out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        cfg = AutoencoderConfig(**parse_key_values(argv, AutoencoderConfig, required=("dataset", "out")))
        out = train_autoencoder(cfg)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
        print(f"policystack autoencoder: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    rec = ConvAutoencoder.load(out).record
    print(f"wrote {out}: held-out L1 {rec['held_out_l1']:.4f}, PSNR {rec['held_out_psnr_db']:.1f} dB "
          f"({rec['train_seconds']:.0f} s)")
    return 0
