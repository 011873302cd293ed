"""Feature names, feature specs and the batch contract shared by every part of policystack.

Every dataset, environment and policy speaks LeRobot's feature names (DESIGN.md, "The data
contract"), so they fit together with no renaming:

| key                              | loader output (one sample)        | at inference (one step) |
|----------------------------------|-----------------------------------|-------------------------|
| ``observation.state``            | float32 [T_obs, D]                | float32 [B, D]          |
| ``observation.images.<camera>``  | uint8 [T_obs, 3, H, W]            | uint8 [B, 3, H, W]      |
| ``action``                       | float32 [H, A]                    | -                       |
| ``action_is_pad``                | bool [H]                          | -                       |
| ``task``                         | str                               | list[str]               |
| ``episode_index`` ... ``index``  | int64 / float32                   | -                       |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# --- feature names -------------------------------------------------------------------------
OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"  # privileged object poses (LeRobot's name)
OBS_IMAGES = "observation.images"  # a camera key is f"{OBS_IMAGES}.{camera}"
OBS_IMAGE = "observation.image"  # LeRobot's key for a single camera (its MetaWorld / PushT envs and datasets)
ACTION = "action"
# Privileged simulator state recorded beside demonstrations (``policystack collect privileged=true``) for
# policies that learn to reason about the scene (EMMA's automatically built labels); never an input at
# inference: the training loop gives these columns only to a family whose config sets ``reads_privileged``.
PRIVILEGED_PREFIX = "privileged."
PRIVILEGED_OBJECTS = "privileged.objects"  # float32 [K*5]: per object slot colour id, kind id, x, y, z
PRIVILEGED_DECISION = "privileged.decision"  # float32 [1]: the expert's phase, an id into its info's names
TASK = "task"
PAD_SUFFIX = "_is_pad"  # f"{key}{PAD_SUFFIX}" marks frames repeated at episode edges
END_SUFFIX = "_episode_end"  # f"{key}{END_SUFFIX}": the last frames of the sample's episode (loader end_indices)

EPISODE_INDEX = "episode_index"
FRAME_INDEX = "frame_index"
TIMESTAMP = "timestamp"
INDEX = "index"
TASK_INDEX = "task_index"
# Columns LeRobot writes for every frame besides the user's features.
DEFAULT_FEATURE_KEYS = (TIMESTAMP, FRAME_INDEX, EPISODE_INDEX, INDEX, TASK_INDEX)

# Normalisation statistics kept per feature (each an array shaped like one value of it;
# images: [3, 1, 1]) plus "count".
STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")

# dtypes a feature may have in meta/info.json
VISUAL_DTYPES = ("video", "image")
NUMERIC_DTYPES = ("float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
FEATURE_DTYPES = VISUAL_DTYPES + NUMERIC_DTYPES + ("string",)


class DataError(ValueError):
    """Bad input data or metadata. The message names the file and key and what was expected."""


def camera_key(camera: str) -> str:
    return f"{OBS_IMAGES}.{camera}"


def is_image_key(key: str) -> bool:
    """A camera's key: ``observation.images.<camera>``, or LeRobot's single-camera ``observation.image``."""
    return key == OBS_IMAGE or key.startswith(OBS_IMAGES + ".")


@dataclass(frozen=True)
class Feature:
    """One feature of a dataset / env / policy, as in LeRobot's meta/info.json ``features``.

    ``shape`` is the shape of one frame's value; visual features are (H, W, 3) in info.json
    (LeRobot's convention) and reach policies as uint8 [3, H, W].
    """

    dtype: str
    shape: tuple[int, ...]
    names: Any = None  # list of names per dimension, or LeRobot's dict form, or None
    info: dict | None = field(default=None, compare=False)  # video codec info etc.

    def __post_init__(self):
        if self.dtype not in FEATURE_DTYPES:
            raise DataError(f"feature dtype {self.dtype!r} is not one of {FEATURE_DTYPES}")
        if not all(isinstance(s, int) and s >= 0 for s in self.shape):
            raise DataError(f"feature shape {self.shape!r} must be a tuple of non-negative ints")

    @property
    def is_visual(self) -> bool:
        return self.dtype in VISUAL_DTYPES

    @classmethod
    def from_json(cls, d: Any, where: str) -> Feature:
        """Parse one entry of info.json ``features``; ``where`` names file and key for errors."""
        if not isinstance(d, dict):
            raise DataError(f"{where}: expected an object with 'dtype' and 'shape', got {d!r}")
        if "dtype" not in d or "shape" not in d:
            raise DataError(f"{where}: missing 'dtype' or 'shape' (got keys {sorted(d)})")
        dtype, shape = d["dtype"], d["shape"]
        if dtype not in FEATURE_DTYPES:
            raise DataError(f"{where}.dtype: {dtype!r} is not one of {list(FEATURE_DTYPES)}")
        if not isinstance(shape, (list, tuple)) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise DataError(f"{where}.shape: expected a list of non-negative ints, got {shape!r}")
        if dtype in VISUAL_DTYPES and (len(shape) != 3 or 3 not in (shape[0], shape[-1])):
            raise DataError(f"{where}.shape: a {dtype} feature needs [H, W, 3], got {list(shape)}")
        return cls(dtype=dtype, shape=tuple(shape), names=d.get("names"), info=d.get("info"))

    def to_json(self) -> dict:
        out: dict[str, Any] = {"dtype": self.dtype, "shape": list(self.shape), "names": self.names}
        if self.info is not None:
            out["info"] = self.info
        return out

    @property
    def chw(self) -> tuple[int, int, int]:
        """(3, H, W) of a visual feature, whichever way info.json stores it."""
        if not self.is_visual:
            raise DataError(f"feature of dtype {self.dtype} has no image shape")
        h, w, c = self.shape if self.shape[-1] == 3 else (self.shape[1], self.shape[2], self.shape[0])
        return (c, h, w)


FeatureSpec = dict[str, Feature]
Stats = dict[str, dict[str, np.ndarray]]  # feature -> stat name -> array


def image_keys(features: FeatureSpec) -> list[str]:
    return [k for k, f in features.items() if f.is_visual]


# --- how a camera's images were made ------------------------------------------------------------
# A visual feature's ``info`` may hold ``camera.*`` entries beside LeRobot's ``video.*`` ones, written
# by envs that can render one camera in more than one way (MetaWorld: which camera, its orientation
# convention, shadows and reflections; docs/envs.md). They travel with the features from the dataset
# into every checkpoint, so whatever feeds a policy images can be checked against how its training
# images were made.
CAMERA_INFO_PREFIX = "camera."


def camera_record(feature: Feature) -> dict[str, Any]:
    """The ``camera.*`` entries of a feature's ``info`` ({} when nothing is recorded)."""
    return {k: v for k, v in (feature.info or {}).items() if k.startswith(CAMERA_INFO_PREFIX)}


def check_camera_records(policy: FeatureSpec, source: FeatureSpec, source_name: str, hint: str = "") -> None:
    """Raise a ValueError naming every camera the policy reads whose images ``source`` (the features
    of an env or a robot, called ``source_name`` in the message) makes differently from how the
    policy's training images were made: a ``camera.*`` record on one side that differs from the other
    side's or is missing there. A camera recorded on neither side passes (nothing says they differ).
    ``hint`` ends the message (how to fix it). Eval calls this before any rollout; the daemon can call
    it with its scene's features before it starts an episode.
    """
    problems = []
    for key, f in policy.items():
        if not f.is_visual or key not in source:
            continue
        want, have = camera_record(f), camera_record(source[key])
        if want == have:
            continue
        if not want:
            problems.append(f"{key}: the checkpoint does not record how its images were made; {source_name} "
                            f"makes them as {have}")
        elif not have:
            problems.append(f"{key}: the checkpoint's images were made as {want}; {source_name} does not say "
                            f"how it makes its images")
        else:
            diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
            problems.append(f"{key}: the checkpoint's images were made with "
                            + ", ".join(f"{k}={want.get(k)!r}" for k in diff) + f"; {source_name} makes them with "
                            + ", ".join(f"{k}={have.get(k)!r}" for k in diff))
    if problems:
        raise ValueError("camera images differ from the training data's: " + "; ".join(problems)
                         + (f". {hint}" if hint else ""))


def stats_to_json(stats: Stats) -> dict:
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def stats_from_json(d: dict, where: str) -> Stats:
    out: Stats = {}
    for k, sd in d.items():
        if not isinstance(sd, dict):
            raise DataError(f"{where}: stats for {k!r} must be an object of stat -> list")
        out[k] = {s: np.asarray(v, dtype=np.float64 if s != "count" else np.int64) for s, v in sd.items()}
    return out
