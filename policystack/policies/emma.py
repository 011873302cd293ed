"""EMMA-style policy (Hwang et al. 2024, Waymo's End-to-end Multimodal Model for Autonomous driving,
here driving a robot arm): a vision-language model reads the cameras, the instruction and the end
effector's recent path written as text, writes its reasoning, then the future trajectory as text
waypoints; a waypoint follower turns the text into the env's actions.

Data flow, one sample (C cameras, K image tokens per camera, D the text model's width, k waypoints):

    images uint8 [C, 3, h, w] (the current frame) -> frozen Lite0 + projector (layers/vlm_policy.py)
        -> [C, K, D] image tokens (``instruction_image``: + [1, K, D] pooled from them by K queries made
        from the instruction, ``Locator``)
    prompt "In: {instruction}. Gripper path: (x, y, z), (x, y, z), (x, y, z).\\nOut:"
        the pinch point's last ``n_obs_steps`` positions, oldest first
    answer (reasoning "full"):
        "Scene: a red ball, a green ball and a blue ball. Objects: red ball at (0.42, -0.10, 0.03).
         Behaviour: gripper 21 cm from it, open. Decision: move to the ball.
         Trajectory: [(0.44, -0.06, 0.25, 0), (0.43, -0.08, 0.18, 0), ...]"
        reasoning "objects": only "Objects: ... Trajectory: [...]"; "none": only "Trajectory: [...]"

Units and frame (everything written as text): metres, two decimals, along the arm's base frame's axes (the
simulator's world frame: the Panda's base at the origin, x forward, y left, z up, the table top at
z = 0); a waypoint is ``(x, y, z, g)`` with ``g`` 1 = gripper closed, 0 = open, and waypoint j is where
the pinch point is ``j * waypoint_stride`` policy steps ahead (0.3 s apart at 10 Hz by default).
``frame``: "base" writes the Objects step's positions and the waypoints in the base frame; "ee" writes
them as offsets from the pinch point now (EMMA's ego frame: its coordinates are the vehicle's), so a
waypoint is the motion still to make and an object is where it is from the gripper, which the wrist camera
sees directly; the prompt's path stays in the base frame either way (where the gripper is).

Labels, built automatically from the demonstrations (EMMA built its labels automatically too): the
dataset records the simulator's privileged state beside each frame (``policystack collect
privileged=true``: every coloured object's colour, kind and true position, and the scripted expert's
phase); the answer text is written from it in ``compute_loss``: Scene = the objects, Objects = the
critical ones (those the instruction names, by name or else by colour) with their true coordinates, Behaviour = the gripper's
distance to the first of them and its state, Decision = the expert's phase in words, Trajectory = the
recorded future pinch-point path subsampled to k waypoints. At inference nothing privileged is read
(the policy's features drop the ``privileged.*`` columns; eval and the daemon never produce them).

Decoding: greedy; the reasoning is free text (at most ``max_reasoning_tokens``; then " Trajectory:"
is forced), the trajectory is constrained by ``TrajectoryGrammar``, a LogitsProcessor state machine over
the tokenizer's own tokens: only tokens whose characters continue ``" [(N, N, N, G), ...]"`` (N a
number ``-?d.dd``, G ``0`` or ``1``, exactly k waypoints) are possible, then the end token. Why not a
library (outlines, lm-format-enforcer, xgrammar): none is installed in the project's environment, they
pin their own transformers / tokenizer versions, and the language here is one fixed-width template,
whose automaton is a position in a list of character classes (~60 lines, tested below).

Parsing never raises: text that does not parse into finite waypoints (malformed, truncated, NaN,
huge numbers) or a waypoint outside ``workspace`` means "hold" (zero motion, the gripper kept as it is)
for the whole chunk, and is counted (``episode_stats``: plans, parse_failures, out_of_workspace, holds;
``policystack eval`` reports them).

Follower: from the measured pinch point, each of the ``horizon`` steps moves toward the current waypoint
by at most ``max_speed`` x ``ee_step_m`` (the env's ee_delta action: 0.05 m at |a| = 1), passing to the
next waypoint within ``waypoint_tolerance``; rotation deltas 0; the gripper command is +1 (close) when
the waypoint says 1, else -1. ``n_action_steps`` of them run before the next plan (replanning every N
steps), through the ordinary Policy interface, so ``policystack eval`` runs it unchanged (the control daemon
drives joint targets: a joint-mode follower, waypoints through IK, is not written yet).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LogitsProcessor

from policystack.perception.text import encode_instructions, text_encoder_dim
from policystack.policies.layers.vlm_policy import VLMPolicy, VLMPolicyConfig
from policystack.types import (
    ACTION,
    OBS_STATE,
    PRIVILEGED_DECISION,
    PRIVILEGED_OBJECTS,
    PRIVILEGED_PREFIX,
    TASK,
    FeatureSpec,
    Stats,
)

PROMPT = "In: {instruction}. Gripper path: {path}.\nOut:"
TRAJECTORY = "Trajectory:"
REASONING = ("full", "objects", "none")
FRAMES = ("base", "ee")
NUMBER_TOKENS = [f"{v / 100:.2f}" for v in range(-100, 101) if v]  # number_tokens: as fmt writes them ("0.00" is
NUMBER_TOKENS.insert(100, "0.00")  # there once, never "-0.00")
NUMBER_VALUES = torch.tensor([float(t) for t in NUMBER_TOKENS])  # ascending: -1.00 .. 1.00
HUGE = 100.0  # |value| above this (m) is a "huge number": a parse failure, not just out of the workspace


# ----------------------------------------------------------------------------------------------
# Config: defaults are the `tiny` preset (configs/policy/emma.yaml); emma_paper.yaml has a 3B-class size
# ----------------------------------------------------------------------------------------------
@dataclass
class EmmaConfig(VLMPolicyConfig):
    reads_privileged = True  # ClassVar of PolicyConfig: the labels are built from privileged.* columns

    # --- history and replanning (PolicyConfig fields) ---
    n_obs_steps: int = 3  # pinch-point positions in the prompt (the last 3 policy steps); images: current only
    horizon: int = 5  # follower steps computed per plan
    n_action_steps: int = 5  # of them executed before replanning (replan every N steps)
    normalization: dict[str, str] = field(default_factory=dict)  # nothing: text in metres, actions from the follower
    context_length: int = 1024  # images + prompt + reasoning + trajectory

    # --- the text it writes ---
    reasoning: str = "full"  # chain-of-thought ablation: "full", "objects" (critical objects only), "none"
    waypoints: int = 4  # k future waypoints per plan
    waypoint_stride: int = 3  # policy steps between waypoints (and from now to the first)
    max_reasoning_tokens: int = 200  # then " Trajectory:" is forced
    # where the Objects step's positions and the waypoints are measured from: "base" (the arm's base) or "ee"
    # (offsets from the pinch point now, EMMA's ego frame; same axes); the prompt's path is in the base frame
    frame: str = "base"
    # one vocabulary token per number -1.00 .. 1.00 ("0.42", "-0.10"; the text is unchanged): a coordinate is
    # one token (one class of 201, as RT-2's action bins) instead of 4-5 characters (full answer 305 -> 223 tokens)
    number_tokens: bool = False
    # number_tokens: > 0 (m) trains each number token on a Gaussian of this width over the 201 number tokens
    # around the true value instead of one-hot (HL-Gauss, Farebrother et al. 2024): a near miss costs less than
    # a far one, a graded signal as regression has; 0: one-hot cross-entropy like every other token
    number_sigma: float = 0.0
    # auxiliary training loss (0: off): the first critical object's position (privileged, the Objects step's)
    # regressed from the image tokens by attention pooling with the instruction as the query, weight x MSE in dm^2;
    # a training signal into the projector (and FiLM) only, never read at inference
    locate_weight: float = 0.0
    # the first text_batch samples of a batch train the text, all of them the locate head (None: all): the text
    # model costs ~100x the image side per sample, so batch 128 with text_batch 16 gives the cheap auxiliary
    # target 8x the samples at ~the text's cost
    text_batch: int | None = None
    # one more image for the text model: K instruction-aware tokens (K = a camera's tokens), each a learned query
    # plus the instruction's sentence embedding attending over every camera's image tokens (InstructBLIP's
    # instruction-aware Q-Former, one cross-attention layer; RT-1's TokenLearner plays this part there); the
    # locate head, when on, reads its first token, so the position it learns is in what the text reads
    instruction_image: bool = False

    # --- reading the state, following the plan (the tabletop suite's ee_delta action) ---
    ee_state_names: list[str] = field(default_factory=lambda: ["ee_x", "ee_y", "ee_z"])  # in observation.state
    gripper_state_name: str = "gripper"  # closure in [0, 1] in observation.state
    ee_step_m: float = 0.05  # metres per step at |action| = 1 (the env's POS_SCALE)
    max_speed: float = 0.5  # |motion action| per step (the experts' 0.5: 0.025 m per step)
    waypoint_tolerance: float = 0.01  # m: a waypoint closer than this is passed
    # a waypoint outside this box (low, high; m) means hold (the env's pinch-site WORKSPACE)
    workspace: list[list[float]] = field(default_factory=lambda: [[0.2, -0.45, 0.005], [0.85, 0.45, 0.55]])

    def __post_init__(self):
        super().__post_init__()
        name = type(self).__name__
        if self.reasoning not in REASONING:
            raise ValueError(f"{name}.reasoning is {self.reasoning!r}; choose one of {REASONING}")
        if self.frame not in FRAMES:
            raise ValueError(f"{name}.frame is {self.frame!r}; choose one of {FRAMES}")
        if self.locate_weight < 0:
            raise ValueError(f"{name}.locate_weight must be >= 0, got {self.locate_weight}")
        if self.number_sigma < 0 or (self.number_sigma > 0 and not self.number_tokens):
            raise ValueError(f"{name}.number_sigma={self.number_sigma}: expected 0, or > 0 with number_tokens: true")
        if self.text_batch is not None and (self.text_batch < 1 or self.locate_weight == 0):
            raise ValueError(f"{name}.text_batch={self.text_batch}: expected null, or >= 1 with locate_weight > 0 "
                             "(the rest of the batch trains only the locate head)")
        for f in ("waypoints", "waypoint_stride", "max_reasoning_tokens"):
            if getattr(self, f) < 1:
                raise ValueError(f"{name}.{f} must be >= 1, got {getattr(self, f)}")
        if len(self.ee_state_names) != 3:
            raise ValueError(f"{name}.ee_state_names must name the 3 pinch-point coordinates in observation.state, "
                             f"got {self.ee_state_names}")
        if not (self.ee_step_m > 0 and 0 < self.max_speed <= 1 and self.waypoint_tolerance >= 0):
            raise ValueError(f"{name}: ee_step_m > 0, max_speed in (0, 1] and waypoint_tolerance >= 0 expected, got "
                             f"{self.ee_step_m}, {self.max_speed}, {self.waypoint_tolerance}")
        box = np.asarray(self.workspace, dtype=float)
        if box.shape != (2, 3) or not np.all(box[0] < box[1]):
            raise ValueError(f"{name}.workspace must be [[x, y, z low], [x, y, z high]] with low < high, got "
                             f"{self.workspace}")

    @property
    def future_offsets(self) -> list[int]:
        """Frame offsets of the k waypoints: stride, 2 stride, ..., k stride."""
        return [self.waypoint_stride * (j + 1) for j in range(self.waypoints)]

    def delta_indices(self, keys) -> dict[str, list[int]]:
        """The state: the pinch-point history and the future waypoints' frames; cameras and the
        privileged columns: the current frame; the action: 0 .. H-1 (loaded, not in the loss)."""
        out = {}
        for k in keys:
            if k == OBS_STATE:
                out[k] = self.observation_delta_indices + self.future_offsets
            elif k.startswith("observation.") or k.startswith(PRIVILEGED_PREFIX):
                out[k] = [0]
            elif k == ACTION:
                out[k] = self.action_delta_indices
        return out


# ----------------------------------------------------------------------------------------------
# Text: numbers, the trajectory grammar, the parser
# ----------------------------------------------------------------------------------------------
def fmt(v: float) -> str:
    """A coordinate as the text writes it: two decimals, clamped to what the grammar allows (|v| < 10),
    no "-0.00"."""
    v = round(min(max(float(v), -9.99), 9.99), 2)
    return f"{v + 0.0:.2f}" if v != 0 else "0.00"


def point(p) -> str:
    return "(" + ", ".join(fmt(v) for v in p) + ")"


def trajectory_text(waypoints: np.ndarray) -> str:
    """[k, 4] (x, y, z, g) -> "Trajectory: [(x, y, z, g), ...]" (g written 1 when > 0.5, else 0)."""
    return TRAJECTORY + " [" + ", ".join(
        f"({fmt(x)}, {fmt(y)}, {fmt(z)}, {int(g > 0.5)})" for x, y, z, g in np.asarray(waypoints, dtype=float)) + "]"


# the grammar's character classes: a literal, an optional minus sign, a digit, a gripper digit
_SIGN, _DIGIT, _GRIP = "S", "D", "G"


def trajectory_template(k: int) -> list[tuple[str, str]]:
    """The trajectory after "Trajectory:" as a list of (class, literal) atoms: " [(N, N, N, G), ...]"
    with N = sign? digit "." digit digit."""
    number = [(_SIGN, ""), (_DIGIT, ""), ("L", "."), (_DIGIT, ""), (_DIGIT, "")]
    lit = [("L", ch) for ch in " [("]
    atoms = lit[:]
    for j in range(k):
        if j:
            atoms += [("L", ch) for ch in ", ("]
        for _ in range(3):
            atoms += number + [("L", ch) for ch in ", "]
        atoms += [(_GRIP, ""), ("L", ")")]
    return atoms + [("L", "]")]


def advance(atoms: list[tuple[str, str]], pos: int, text: str) -> int | None:
    """The template position after reading ``text`` from ``pos``, or None if it leaves the grammar."""
    for ch in text:
        while True:
            if pos >= len(atoms):
                return None
            kind, lit = atoms[pos]
            if kind == _SIGN:
                if ch == "-":
                    pos += 1
                    break
                pos += 1  # no sign: the character must be the digit that follows
                continue
            ok = ch == lit if kind == "L" else ch.isdigit() and ch.isascii() if kind == _DIGIT else ch in "01"
            if not ok:
                return None
            pos += 1
            break
    return pos


class TrajectoryGrammar(LogitsProcessor):
    """Constrained decoding of EMMA's answer (see the module docstring): free reasoning, at most
    ``budget`` tokens, without the end token; " Trajectory:" forced when the budget is spent (at once
    with ``budget`` 0, where the answer is the trajectory alone); after "Trajectory:" only tokens that
    continue the k-waypoint template; when it is complete only the end token. One instance per
    ``generate`` call (it keeps each row's state).

    Args:
        token_strings: the decoded text of every token id (``len`` = the model's logits per step).
        eos_id: the end token. k: waypoints. budget: reasoning tokens before forcing.
        force_ids / force_ids_no_space: the tokens of " Trajectory:" and of "Trajectory:".
        special_ids: ids never generated in the reasoning or trajectory (image placeholders, padding).
    """

    def __init__(self, token_strings: list[str], eos_id: int, k: int, budget: int, force_ids: list[int],
                 force_ids_no_space: list[int], special_ids: list[int] = ()):
        self.strings, self.eos, self.budget = token_strings, eos_id, budget
        self.atoms = trajectory_template(k)
        alphabet = set(" 0123456789.-,()[]")
        special = {eos_id, *special_ids}
        self.candidates = [i for i, s in enumerate(token_strings) if s and set(s) <= alphabet and i not in special]
        # free reasoning: any text token (no special token: image placeholders, padding, the end token)
        self.text = torch.tensor([bool(s) and i not in special for i, s in enumerate(token_strings)])
        self.force = (force_ids_no_space, force_ids)
        self._masks: dict[int, Tensor] = {}
        self._rows: list[dict] | None = None
        self._seen = 0

    def max_tokens(self) -> int:
        """Most tokens an answer can take (reasoning, the forced words, every template character, end)."""
        return self.budget + max(map(len, self.force)) + len(self.atoms) + 1

    def _mask(self, pos: int, vocab: int) -> Tensor:
        """bool [V]: the tokens allowed at template position ``pos`` (only the end token at the end)."""
        if pos not in self._masks:
            mask = torch.zeros(vocab, dtype=torch.bool)
            if pos >= len(self.atoms):
                mask[self.eos] = True
            else:
                ok = [i for i in self.candidates if advance(self.atoms, pos, self.strings[i]) is not None]
                mask[ok] = True
            self._masks[pos] = mask
        return self._masks[pos]

    def _step(self, row: dict, token: int) -> None:
        text = self.strings[token] if token < len(self.strings) else ""
        if row["mode"] == "free":
            row["n"] += 1
            row["tail"] = (row["tail"] + text)[-64:]
            at = row["tail"].find(TRAJECTORY)
            if at >= 0:
                pos = advance(self.atoms, 0, row["tail"][at + len(TRAJECTORY):])
                row.update(mode="traj" if pos is not None else "end", pos=pos or 0)
            elif row["n"] >= self.budget:
                row.update(mode="force", forced=self.force[1], i=0)
        elif row["mode"] == "force":
            row["i"] += 1
            if row["i"] == len(row["forced"]):
                row.update(mode="traj", pos=0)
        elif row["mode"] == "traj":
            row["pos"] = advance(self.atoms, row["pos"], text)
            if row["pos"] is None:  # cannot happen through the mask; a caller feeding other ids ends the row
                row.update(mode="end", pos=0)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """input_ids int64 [B, L] (prompt + generated so far), scores float [B, V] -> masked scores."""
        B, V = scores.shape
        if self._rows is None:
            start = {"mode": "force", "forced": self.force[0], "i": 0} if self.budget == 0 else \
                {"mode": "free", "n": 0, "tail": ""}
            self._rows = [dict(start) for _ in range(B)]
            self._seen = input_ids.shape[1]
        for t in range(self._seen, input_ids.shape[1]):
            for b in range(B):
                self._step(self._rows[b], int(input_ids[b, t]))
        self._seen = input_ids.shape[1]
        allowed = torch.zeros(B, V, dtype=torch.bool, device=scores.device)
        for b, row in enumerate(self._rows):
            if row["mode"] == "free":
                allowed[b] = self.text.to(scores.device)
            elif row["mode"] == "force":
                allowed[b, row["forced"][row["i"]]] = True
            elif row["mode"] == "traj":
                allowed[b] = self._mask(row["pos"], V).to(scores.device)
            else:
                allowed[b, self.eos] = True
        return scores.masked_fill(~allowed, float("-inf"))


_NUMBER = r"\s*([^,()\[\]\s]+)\s*"
_TUPLE = re.compile(r"\(" + ",".join([_NUMBER] * 4) + r"\)")
_LIST = re.compile(r"\s*\[\s*(" + _TUPLE.pattern + r"(?:\s*,\s*" + _TUPLE.pattern + r")*)\s*\]\s*$")


def parse_trajectory(text: str, workspace, max_waypoints: int = 32, origin=None) -> tuple[np.ndarray | None, str]:
    """The waypoints of an answer, or why not; never raises. ``origin`` [3] (m): what the written positions
    are offsets from (``frame: ee``: the pinch point now), added before the workspace check (None: zeros).

    Returns:
        (float64 [n, 4] (x, y, z, g with g in {0, 1}), "ok"), or (None, reason) with reason one of
        "malformed" (no "Trajectory:" list of 4-tuples, truncated, or a value that is not a number or a
        gripper value other than 0 / 1), "non-finite" (NaN or inf), "huge" (|value| > 100 m) and
        "out of workspace" (a waypoint outside the box ``workspace`` [[low], [high]]).
    """
    try:
        at = text.rfind(TRAJECTORY)
        match = _LIST.match(text[at + len(TRAJECTORY):]) if at >= 0 else None
        if match is None:
            return None, "malformed"
        rows = [m.groups() for m in _TUPLE.finditer(match.group(1))]
        if not 1 <= len(rows) <= max_waypoints:
            return None, "malformed"
        values = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except (ValueError, OverflowError):
        return None, "malformed"
    if not np.all(np.isfinite(values)):
        return None, "non-finite"
    if np.any(np.abs(values) > HUGE):
        return None, "huge"
    if not np.all(np.isin(values[:, 3], (0.0, 1.0))):
        return None, "malformed"
    if origin is not None:
        values[:, :3] += np.asarray(origin, dtype=np.float64)
    box = np.asarray(workspace, dtype=np.float64)
    if np.any(values[:, :3] < box[0]) or np.any(values[:, :3] > box[1]):
        return None, "out of workspace"
    return values, "ok"


_OBJECT = re.compile(r"([a-z]+ [a-z]+) at \(\s*([^,()\s]+)\s*,\s*([^,()\s]+)\s*,\s*([^,()\s]+)\s*\)")


def objects_in(text: str, origin=None) -> dict[str, np.ndarray]:
    """The "Objects:" step of an answer as name -> position [3] (m; plus ``origin`` [3], what they are written
    from, see ``EmmaPolicy.origin``): the same weights used as an object locator ("where is the red ball?");
    entries that do not parse into finite numbers are left out."""
    out = {}
    for m in _OBJECT.finditer(section(text, "Objects")):
        try:
            xyz = np.array([float(v) for v in m.groups()[1:]])
        except ValueError:
            continue
        if np.all(np.isfinite(xyz)):
            out[m.group(1)] = xyz if origin is None else xyz + np.asarray(origin, dtype=np.float64)
    return out


def section(text: str, name: str) -> str:
    """The words after "{name}:" up to the next section (or the end), stripped of the final full stop."""
    m = re.search(rf"{name}:\s*(.*?)\s*(?:\b(?:Scene|Objects|Behaviour|Decision|Trajectory):|$)", text, re.S)
    return m.group(1).rstrip(".").strip() if m else ""


def follow(waypoints: np.ndarray | None, ee: np.ndarray, closure: float, steps: int, step_m: float,
           max_speed: float, tolerance: float) -> np.ndarray:
    """The waypoint follower: float [steps, 4] (motion dx, dy, dz in action units, gripper -1 / +1)
    from the pinch point ``ee`` [3] along ``waypoints`` [k, 4] (None: hold: zero motion, the gripper
    kept as ``closure`` in [0, 1] says)."""
    out = np.zeros((steps, 4))
    if waypoints is None:
        out[:, 3] = 1.0 if closure > 0.5 else -1.0
        return out
    pos, j = np.array(ee, dtype=np.float64), 0
    for t in range(steps):
        while j < len(waypoints) - 1 and np.linalg.norm(waypoints[j, :3] - pos) < tolerance:
            j += 1
        step = (waypoints[j, :3] - pos) / step_m
        norm = np.linalg.norm(step)
        if norm > max_speed:
            step *= max_speed / norm
        pos = pos + step * step_m
        out[t, :3] = step
        out[t, 3] = 1.0 if waypoints[j, 3] > 0.5 else -1.0
    return out


def _names(feature, key: str) -> list[str]:
    names = feature.names
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if not isinstance(names, list):
        raise ValueError(f"EmmaPolicy needs the names of {key!r}'s entries (features[{key!r}].names, as the "
                         f"tabletop suite records them), got {feature.names!r}")
    return list(names)


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


class Locator(nn.Module):
    """Image tokens [B, N, D] and the instruction's sentence embedding [B, E] -> (the named object's position
    [B, 3] (m), the pooled tokens [B, Q, D]) by 4-head attention pooling with Q queries: the instruction's
    projection (plus a learned vector per query when Q > 1). ``locate_weight``'s head reads the position from
    the first; ``instruction_image`` gives the text model all Q as one more image."""

    def __init__(self, width: int, cond_dim: int, queries: int = 1):
        super().__init__()
        self.query = nn.Linear(cond_dim, width)
        self.queries = nn.Parameter(0.02 * torch.randn(queries, width)) if queries > 1 else None
        self.attend = nn.MultiheadAttention(width, 4, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 3))

    def forward(self, tokens: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        q = self.query(cond.to(tokens.dtype))[:, None]
        if self.queries is not None:
            q = q + self.queries
        pooled, _ = self.attend(q, tokens, tokens, need_weights=False)
        return self.out(pooled[:, 0]), pooled


# ----------------------------------------------------------------------------------------------
# The policy
# ----------------------------------------------------------------------------------------------
class EmmaPolicy(VLMPolicy):
    """EMMA-style reasoning + text-trajectory policy; see the module docstring."""

    name = "emma"
    config_class = EmmaConfig

    def __init__(self, config: EmmaConfig, features: FeatureSpec, stats: Stats | None):
        c = config
        # the privileged columns give the label vocabularies; the policy never reads them at inference
        vocab = {k: features[k].info for k in (PRIVILEGED_OBJECTS, PRIVILEGED_DECISION)
                 if k in features and features[k].info}
        super().__init__(config, {k: f for k, f in features.items() if not k.startswith(PRIVILEGED_PREFIX)}, stats)
        self.vocab = vocab
        if OBS_STATE not in features:
            raise KeyError(f"EmmaPolicy needs {OBS_STATE!r} (the pinch point's path is in the prompt); got "
                           f"{sorted(features)}")
        state_names = _names(features[OBS_STATE], OBS_STATE)
        missing = [n for n in [*c.ee_state_names, c.gripper_state_name] if n not in state_names]
        if missing:
            raise ValueError(f"EmmaPolicy: features[{OBS_STATE!r}].names lack {missing} (ee_state_names / "
                             f"gripper_state_name); its names: {state_names}")
        self.ee_index = [state_names.index(n) for n in c.ee_state_names]
        self.gripper_index = state_names.index(c.gripper_state_name)
        action_names = _names(features[ACTION], ACTION)
        needed = ["dx", "dy", "dz", "gripper"]
        if any(n not in action_names for n in needed):
            raise ValueError(f"EmmaPolicy drives the end effector (action_mode=ee_delta): features[{ACTION!r}].names "
                             f"must hold {needed}, got {action_names}")
        self.action_index = [action_names.index(n) for n in needed]
        self.action_dim = len(action_names)
        # ordinary text tokens (LoRA trains their rows); none by default: the answer is byte-level text
        self.number_ids = self.vlm.add_tokens(NUMBER_TOKENS, special=False) if c.number_tokens else []
        self.finish_init(self.number_ids)
        self.locator = None
        if c.instruction_image:
            tokens_per_image = self.projector.grid ** 2 if self.projector is not None else self.vlm.tokens_per_image
            self.locator = Locator(self.vlm.hidden_size, text_encoder_dim(self._locate_encoder), tokens_per_image)
        elif c.locate_weight > 0:
            self.locator = Locator(self.vlm.hidden_size, text_encoder_dim(self._locate_encoder))
        self._token_strings: list[str] | None = None
        self.counts = self._zero_counts()

    @property
    def _locate_encoder(self) -> str:
        return self.config.film if self.config.film != "none" else "hashed"

    @staticmethod
    def _zero_counts() -> dict[str, int]:
        return {"plans": 0, "parse_failures": 0, "out_of_workspace": 0, "holds": 0}

    # --- text ---------------------------------------------------------------------------------------
    def prompt(self, instruction: str, path: Tensor) -> str:
        """The prompt of one sample: its instruction and the pinch point's last positions [T, 3]."""
        return PROMPT.format(instruction=instruction.rstrip("."), path=", ".join(point(p) for p in path.tolist()))

    def scene_objects(self, instruction: str, objects: np.ndarray) -> tuple[list, list]:
        """The scene's objects and the critical ones, each a list of (name, position [3]), from a
        ``privileged.objects`` row [K*5]. Critical: the objects the instruction names ("red ball"), else
        those whose colour it names ("touch the red sphere"), else those of a kind it names, else all."""
        colors, kinds = self.vocab[PRIVILEGED_OBJECTS]["colors"], self.vocab[PRIVILEGED_OBJECTS]["kinds"]
        scene = []
        for color, kind, *xyz in np.asarray(objects, dtype=np.float64).reshape(-1, 5):
            ci, ki = int(round(color)), int(round(kind))
            if 0 <= ci < len(colors) and 0 <= ki < len(kinds):
                scene.append((f"{colors[ci]} {kinds[ki]}", np.array(xyz)))
        words = f" {instruction.lower().replace('.', ' ').replace(',', ' ')} "
        critical = [o for o in scene if f" {o[0]} " in words] or \
            [o for o in scene if f" {o[0].split()[0]} " in words] or \
            [o for o in scene if f" {o[0].split()[1]} " in words] or scene
        return scene, critical

    def answer(self, instruction: str, ee: np.ndarray, closure: float, objects: np.ndarray | None,
               decision: float | None, waypoints: np.ndarray) -> str:
        """The label text of one sample: reasoning (per ``config.reasoning``) and the trajectory.

        ee [3]: the pinch point now; closure: the gripper's in [0, 1]; objects [K*5] (privileged.objects)
        and decision (privileged.decision): None with reasoning "none"; waypoints [k, 4] (base frame; written
        from the pinch point with ``frame: ee``)."""
        shift = np.asarray(ee, dtype=np.float64) if self.config.frame == "ee" else np.zeros(3)
        waypoints = np.asarray(waypoints, dtype=np.float64).copy()
        waypoints[:, :3] -= shift
        parts = []
        if self.config.reasoning != "none":
            scene, critical = self.scene_objects(instruction, objects)
            if self.config.reasoning == "full":
                names = [_a(n) for n, _ in scene]
                listing = "nothing" if not names else names[0] if len(names) == 1 else \
                    ", ".join(names[:-1]) + " and " + names[-1]
                parts.append(f"Scene: {listing}.")
            parts.append("Objects: " + ("; ".join(f"{n} at {point(p - shift)}" for n, p in critical) or "none") + ".")
            if self.config.reasoning == "full":
                state = "closed" if closure > 0.5 else "open"
                if critical:
                    cm = round(100 * float(np.linalg.norm(critical[0][1] - ee)))
                    parts.append(f"Behaviour: gripper {cm} cm from it, {state}.")
                else:
                    parts.append(f"Behaviour: gripper {state}.")
                decisions = self.vocab[PRIVILEGED_DECISION]["decisions"]
                di = min(max(int(round(float(decision))), 0), len(decisions) - 1)
                parts.append(f"Decision: {decisions[di]}.")
        parts.append(trajectory_text(waypoints))
        return " ".join(parts)

    # --- training -----------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy on every answer token (reasoning and trajectory) and the end token (``text_loss``),
        plus ``locate_weight`` x the locate head's squared error (dm^2) where the batch names an object."""
        c, T = self.config, self.config.n_obs_steps
        need = [*self.camera_keys, TASK, OBS_STATE]
        privileged = c.reasoning != "none" or c.locate_weight > 0
        if privileged:
            need += [PRIVILEGED_OBJECTS, PRIVILEGED_DECISION]
            if len(self.vocab) < 2:
                raise KeyError(f"EmmaPolicy(reasoning={c.reasoning!r}, locate_weight={c.locate_weight}) builds its "
                               "labels from the privileged columns "
                               f"{PRIVILEGED_OBJECTS!r} and {PRIVILEGED_DECISION!r} (with their vocabularies in the "
                               "features' info); collect the demos with `policystack collect ... privileged=true`, "
                               "or train with reasoning=none (and locate_weight=0)")
        missing = [k for k in need if k not in batch]
        if missing:
            raise KeyError(f"EmmaPolicy.compute_loss: the batch has no {missing}; got {sorted(batch)}")
        state = batch[OBS_STATE].float().cpu()  # [B, T + k, D]
        if state.shape[1] != T + c.waypoints:
            raise ValueError(f"batch[{OBS_STATE!r}] has {state.shape[1]} frames; expected {T + c.waypoints} "
                             f"(n_obs_steps + waypoints, EmmaConfig.delta_indices)")
        ee, grip = state[..., self.ee_index], state[..., self.gripper_index]
        waypoints = torch.cat([ee[:, T:], (grip[:, T:, None] > 0.5).float()], -1).numpy()  # [B, k, 4]
        objects = decisions = None
        if privileged:  # the current frame's columns: [B, 1, K*5] and [B, 1] (a [1] feature's window)
            objects = batch[PRIVILEGED_OBJECTS].float().cpu().reshape(len(state), -1).numpy()
            decisions = batch[PRIVILEGED_DECISION].float().cpu().reshape(len(state), -1)[:, -1].tolist()
        prompts, answers = [], []
        n = len(state) if c.text_batch is None else min(c.text_batch, len(state))  # samples whose text trains
        for b, task in enumerate(batch[TASK][:n]):
            prompts.append(self.prompt(task, ee[b, :T]))
            answers.append(self.answer(task, ee[b, T - 1].numpy(), float(grip[b, T - 1]),
                                       None if c.reasoning == "none" else objects[b],
                                       None if c.reasoning == "none" else decisions[b], waypoints[b]))
        tokens = self.image_tokens({k: batch[k][:, -1:] for k in self.camera_keys}, batch[TASK])  # current frame
        tokens, located = self.with_instruction_image(tokens, list(batch[TASK]))
        inputs = self.vlm.encode(prompts, answers=answers, image_features=tokens[:n])
        logits, targets, _ = self.vlm.answer_logits(inputs)  # [N, V], [N]
        loss = self.text_loss(logits.float(), targets)
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == targets).float().mean().item()
        info = {"text_loss": loss.item(), "token_accuracy": accuracy,
                "answer_tokens": float(len(targets)) / len(prompts)}
        if c.locate_weight > 0:
            critical = [self.scene_objects(t, objects[b])[1] for b, t in enumerate(batch[TASK])]
            has = torch.tensor([bool(o) for o in critical], dtype=torch.float32)  # samples naming an object
            goal = torch.tensor(np.array([o[0][1] if o else np.zeros(3) for o in critical]), dtype=torch.float32)
            err = located.float().cpu() - goal
            locate = ((10 * err).square().sum(-1) * has).sum() / has.sum().clamp(min=1)  # dm^2; 0 without any
            loss = loss + c.locate_weight * locate
            info["locate_loss"] = locate.item()
            if has.any():
                info["locate_cm"] = 100 * err.norm(dim=-1)[has.bool()].mean().item()
        info["loss"] = loss.item()
        return loss, info

    def with_instruction_image(self, tokens: Tensor, tasks: list[str]) -> tuple[Tensor, Tensor | None]:
        """Image tokens [B, n, K, D] -> (the tokens the text model reads: + the instruction-aware image
        [B, n + 1, K, D] with ``instruction_image``, else as they are; the locate head's positions [B, 3] or
        None without the head)."""
        if self.locator is None:
            return tokens, None
        cond = encode_instructions(self._locate_encoder, tasks, len(tokens), self.device)
        located, pooled = self.locator(tokens.flatten(1, 2), cond)
        if self.config.instruction_image:
            tokens = torch.cat([tokens, pooled[:, None]], 1)
        return tokens, located

    def text_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy over the answer tokens, logits float [N, V], targets [N]; with ``number_sigma`` a
        number token's target is a Gaussian over the number tokens (by value) centred on it."""
        sigma = self.config.number_sigma
        if sigma == 0:
            return F.cross_entropy(logits, targets)
        logp = F.log_softmax(logits, -1)
        nll = -logp.gather(1, targets[:, None])[:, 0]
        first, n = self.number_ids[0], len(self.number_ids)
        is_number = (targets >= first) & (targets < first + n)
        if is_number.any():
            values = NUMBER_VALUES.to(logits.device)
            soft = torch.softmax(-(values[None] - values[targets[is_number] - first][:, None]).square()
                                 / (2 * sigma ** 2), -1)  # [M, 201]
            nll = nll.clone()
            nll[is_number] = -(soft * logp[is_number, first:first + n]).sum(-1)
        return nll.mean()

    # --- inference ----------------------------------------------------------------------------------
    def history_step(self, obs: dict[str, Any]) -> Any:
        """The history keeps the state only (the prompt's pinch-point path); images: the current frame."""
        return {OBS_STATE: obs[OBS_STATE]}

    def grammar(self) -> TrajectoryGrammar:
        """A fresh constrained-decoding processor for one ``generate`` call."""
        tok, vocab = self.vlm.tokenizer, self.vlm.vocab_size
        if self._token_strings is None:  # decoded once: 49k decodes for SmolLM2
            n = len(tok)  # not in the loop: len() of a fast tokenizer rebuilds its vocabulary (18 ms for SmolLM2's)
            self._token_strings = [tok.decode([i]) if i < n else "" for i in range(vocab)]
        c = self.config
        encode = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
        return TrajectoryGrammar(self._token_strings, tok.eos_token_id, c.waypoints,
                                 0 if c.reasoning == "none" else c.max_reasoning_tokens,
                                 encode(" " + TRAJECTORY), encode(TRAJECTORY), tok.all_special_ids)

    @torch.no_grad()
    def plan(self, obs: dict[str, Any]) -> list[str]:
        """The text answer for each sample of one step's observation (cameras, state, task; the history)."""
        missing = [k for k in (*self.camera_keys, TASK, OBS_STATE) if k not in obs]
        if missing:
            raise KeyError(f"EmmaPolicy: the observation has no {missing}; got {sorted(obs)}")
        B = obs[OBS_STATE].shape[0]
        tasks = [obs[TASK]] * B if isinstance(obs[TASK], str) else list(obs[TASK])
        window, _ = self.history.window(self.history_step(obs))
        path = window[OBS_STATE].float().cpu()[..., self.ee_index]  # [B, T, 3]
        prompts = [self.prompt(t, path[b]) for b, t in enumerate(tasks)]
        tokens = self.image_tokens({k: obs[k][:, None] for k in self.camera_keys}, tasks)
        if self.config.instruction_image:
            tokens = self.with_instruction_image(tokens, tasks)[0]
        grammar = self.grammar()
        try:
            gen = self.vlm.generate(prompts, image_features=tokens, max_new_tokens=grammar.max_tokens(),
                                    logits_processors=[grammar])
        except ValueError as e:  # an instruction longer than the context
            raise ValueError(f"EmmaPolicy: {e} (instruction {tasks[0]!r:.200})") from None
        return gen.texts

    def origin(self, state: Tensor) -> np.ndarray:
        """[3] (m): what the answer's positions are written from for a measured state [D]: the pinch point
        (``frame: ee``) or the base (zeros)."""
        if self.config.frame == "base":
            return np.zeros(3)
        return state.float().cpu()[self.ee_index].numpy().astype(np.float64)

    def actions_from_text(self, texts: list[str], state: Tensor) -> Tensor:
        """The follower's [B, H, A] actions for each answer (hold where it does not parse or leaves the
        workspace) from the measured state [B, D]; counts plans, failures and holds."""
        c = self.config
        state = state.float().cpu()
        out = torch.zeros(len(texts), c.horizon, self.action_dim)
        for b, text in enumerate(texts):
            waypoints, why = parse_trajectory(text, c.workspace, origin=self.origin(state[b]))
            self.counts["plans"] += 1
            if why == "out of workspace":
                self.counts["out_of_workspace"] += 1
            elif why != "ok":
                self.counts["parse_failures"] += 1
            self.counts["holds"] += waypoints is None
            steps = follow(waypoints, state[b, self.ee_index].numpy(), float(state[b, self.gripper_index]),
                           c.horizon, c.ee_step_m, c.max_speed, c.waypoint_tolerance)
            out[b][:, self.action_index] = torch.from_numpy(steps).float()
        return out

    def predict_action_chunk(self, obs: dict[str, Any]) -> Tensor:
        """[B, H, A]: plan in text, parse, follow. Sets ``decision`` (sample 0's) and counts the plan."""
        texts = self.plan(obs)
        self.decision = section(texts[0], "Decision") if texts else ""
        self.last_texts = texts
        return self.actions_from_text(texts, obs[OBS_STATE]).to(obs[OBS_STATE].device)

    def episode_stats(self) -> dict[str, int]:
        """Plans since ``reset``, those that failed to parse, left the workspace, and were held."""
        return dict(self.counts)

    def reset(self) -> None:
        super().reset()
        self.counts = self._zero_counts()
        self.decision = ""
