"""The one ``policystack`` command. Subcommands live beside the code they drive and are imported
only when called, so ``policystack --help`` stays fast (no torch import).

Each entry of COMMANDS names a module with ``main(argv: list[str]) -> int``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "dataset": ("policystack.datasets.commands", "inspect, validate, compute stats of and convert datasets"),
    "collect": ("policystack.envs.collect", "roll out a task's scripted expert into a LeRobot v3 dataset"),
    "vqa": ("policystack.envs.vqa", "render vision-language examples (captions, VQA, pointing) of the suite's scenes"),
    "endframes": ("policystack.envs.endframes", "end-of-episode frames labelled by is_success (the success detector's data)"),
    "daemon": ("policystack.robot.commands", "run a checkpoint on a robot through the control daemon; status"),
    "train": ("policystack.training.commands", "train a policy on a dataset with the shared loop (Hydra overrides)"),
    "autoencoder": ("policystack.training.autoencoder", "train the small image autoencoder whose latents a world model (uwm) predicts"),
    "eval": ("policystack.eval.commands", "evaluate a checkpoint (or the scripted expert) in simulation: success rate, videos, plot"),
    "detector": ("policystack.eval.detector", "score a success detector (describer) on held-out end-of-episode frames"),
    "compare": ("policystack.eval.compare", "side-by-side markdown table and bar plot of several evaluations"),
    "say": ("policystack.interaction.commands", "speak a text (piper, espeak-ng, IndexTTS2), or a running daemon's events"),
    "scene": ("policystack.envs.scenegen.commands", "make simulator objects from text, mesh, SLAT or TRELLIS; drop tests; gallery"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: policystack <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `policystack <command> --help` for a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from policystack import __version__

        print(__version__)
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"policystack: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
