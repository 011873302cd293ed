"""``policystack train``: train a policy on a LeRobot v3 dataset with the shared loop.

    policystack train policy=bc dataset.path=DIR [steps=2000] [batch_size=64] [env=pickplace
        eval.every=500] [out=runs/x] [ema.enabled=true] [optim.lr=3e-4] [key=value ...]
    policystack train resume=RUN_DIR [steps=N] [key=value ...]   continue RUN_DIR from checkpoints/latest
    policystack train out=RUN_DIR resume=true [...]               the same
    policystack train --cfg [overrides]                            print the composed config and exit
    torchrun --nproc_per_node 2 -m policystack.cli train ...        DDP (gloo on CPU, nccl on GPU)

Arguments are Hydra overrides of policystack/configs/train.yaml (groups: policy=, dataset=, env=;
every key is documented in policystack/training/config.py). A resumed run uses the config saved in
its directory; overrides then change single fields (e.g. steps= to train further).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from policystack.types import DataError

USAGE = __doc__.split("\n\n")[1]


def resolve_args(argv: list[str]):
    """The TrainConfig the arguments ask for: composed from train.yaml, or for a resume the run's
    saved config with the other arguments applied."""
    from policystack.training.config import load_config, load_run_config

    resume = next((a.partition("=")[2] for a in argv if a.startswith("resume=")), None)
    out = next((a.partition("=")[2] for a in argv if a.startswith("out=")), None)
    if resume is None or resume.lower() in ("false", "no", "0"):
        return load_config(argv)
    rest = [a for a in argv if not a.startswith(("resume=", "out="))]
    if resume.lower() in ("true", "yes", "1"):
        if not out:
            raise ValueError("resume=true needs out=<run dir> (or pass resume=<run dir>)")
        run_dir = Path(out)
    else:
        run_dir = Path(resume)
        if out and Path(out).resolve() != run_dir.resolve():
            raise ValueError(f"resume={resume} and out={out} name different runs; give one of them")
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"resume: {run_dir}/config.yaml not found; {run_dir} is not a training run "
                                f"directory (start one with out={run_dir})")
    cfg = load_run_config(run_dir, rest)
    cfg.out, cfg.resume = str(run_dir), True
    return cfg


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    from policystack.training.config import config_to_dict

    print_cfg = "--cfg" in argv
    argv = [a for a in argv if a != "--cfg"]
    bad = [a for a in argv if a.startswith("-")]
    if bad:
        print(f"policystack train: unknown option(s) {bad}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        cfg = resolve_args(argv)
        if print_cfg:
            from omegaconf import OmegaConf

            from policystack.training.config import recipe_note

            if cfg.recipe:  # what the policy preset's recipe set (the command line's keys win over it)
                print(f"#{recipe_note(cfg).removeprefix(';')} (command-line keys win over it)")
            print(OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg))), end="")
            return 0
        from policystack.training.loop import train

        run_dir = train(cfg)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, DataError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"policystack train: error: {msg}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        from policystack.training.checkpoint import latest_checkpoint

        print(f"run: {run_dir}\nlatest checkpoint: {latest_checkpoint(run_dir)}")
    return 0
