"""Daemon configuration: rates, safety limits, workspace box, watchdog, transport limits.

Loaded from ``policystack/configs/robot/<name>.yaml`` (limits there carry commented margins, as
polymetis' ``franka_hardware.yaml`` does) with ``key=value`` overrides from the command line.
Every field is validated in ``__post_init__`` with a message naming the field.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "robot"
TOKEN_ENV = "POLICYSTACK_DAEMON_TOKEN"


def _vec(name: str, v: Any, n: int | None = None) -> list[float]:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if n is not None and a.size != n:
        raise ValueError(f"limits.{name}: expected {n} numbers, got {a.size} ({v!r})")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"limits.{name}: values must be finite, got {v!r}")
    return a.tolist()


@dataclass
class Limits:
    """Per command component (A = 7 joints + gripper): positions, velocity, acceleration."""

    joint_low: list[float]
    joint_high: list[float]
    velocity: list[float]
    acceleration: list[float]
    max_step: float = 0.005  # per tick, any component
    workspace_low: list[float] = field(default_factory=lambda: [-1e9] * 3)
    workspace_high: list[float] = field(default_factory=lambda: [1e9] * 3)
    tool_offset: list[float] | None = None  # None: no end-effector check (robot without FK)
    # per component: measured farther than this from the command -> hold (a gripper closing on an
    # object never reaches its command: give it a bound it cannot exceed, e.g. 10)
    max_tracking_error: list[float] | float = 0.25

    def __post_init__(self):
        n = len(self.joint_low)
        self.joint_low = _vec("joint_low", self.joint_low)
        self.joint_high = _vec("joint_high", self.joint_high, n)
        self.velocity = _vec("velocity", self.velocity, n)
        self.acceleration = _vec("acceleration", self.acceleration, n)
        if isinstance(self.max_tracking_error, (int, float)):
            self.max_tracking_error = [float(self.max_tracking_error)] * n
        self.max_tracking_error = _vec("max_tracking_error", self.max_tracking_error, n)
        self.workspace_low = _vec("workspace_low", self.workspace_low, 3)
        self.workspace_high = _vec("workspace_high", self.workspace_high, 3)
        if self.tool_offset is not None:
            self.tool_offset = _vec("tool_offset", self.tool_offset, 3)
        if any(lo >= hi for lo, hi in zip(self.joint_low, self.joint_high)):
            raise ValueError(f"limits: joint_low {self.joint_low} must be below joint_high {self.joint_high}")
        if any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high)):
            raise ValueError(f"limits: workspace_low {self.workspace_low} must be below {self.workspace_high}")
        for name in ("velocity", "acceleration"):
            if any(x <= 0 for x in getattr(self, name)):
                raise ValueError(f"limits.{name}: every value must be > 0, got {getattr(self, name)}")
        if not self.max_step > 0 or not min(self.max_tracking_error) > 0:
            raise ValueError(f"limits.max_step ({self.max_step}) and max_tracking_error "
                             f"({self.max_tracking_error}) must be > 0")

    @property
    def dim(self) -> int:
        return len(self.joint_low)


@dataclass
class TransportConfig:
    max_message_bytes: int = 4 << 20
    window_s: float = 5.0
    # observations queued for a busy policy worker (at the daemon and at the worker each) before any is
    # dropped; the worker counts a dropped one (obs_missed) and the daemon reports it
    obs_queue: int = 100
    # frames the daemon reads per second at most from its chunk socket (chunks, hellos, commands: ~10-20/s
    # in use); under a flood the rest wait in ZeroMQ's bounded per-peer queues, fair-queued, so a worker's
    # chunk waits behind at most one frame of each other peer and junk costs a bounded share of a CPU
    max_frames_per_s: int = 2000
    # CurveZMQ (robot/curve.py): the server's key pair, a ZeroMQ secret certificate
    # (NAME.key_secret); None: no encryption (the HMAC token authenticates either way)
    curve_server_secret: str | None = None
    # a directory of client public certificates (*.key): only those clients may connect (ZAP);
    # None: any client that knows the server's public key
    curve_allowed_clients: str | None = None

    def __post_init__(self):
        if self.max_message_bytes < 1024 or self.window_s <= 0:
            raise ValueError(f"transport: max_message_bytes ({self.max_message_bytes}) must be >= 1024 "
                             f"and window_s ({self.window_s}) > 0")
        if isinstance(self.max_frames_per_s, bool) or not isinstance(self.max_frames_per_s, int) \
                or self.max_frames_per_s < 100:
            raise ValueError(f"transport.max_frames_per_s={self.max_frames_per_s!r}: expected a whole number >= 100 "
                             "(frames read per second from the chunk socket; default 2000)")
        if isinstance(self.obs_queue, bool) or not isinstance(self.obs_queue, int) or self.obs_queue < 1:
            raise ValueError(f"transport.obs_queue={self.obs_queue!r}: expected a whole number of observations >= 1 "
                             "(e.g. 100: 10 s at 10 Hz)")
        for name in ("curve_server_secret", "curve_allowed_clients"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v):
                raise ValueError(f"transport.{name}={v!r}: expected a path or null")
        if self.curve_allowed_clients and not self.curve_server_secret:
            raise ValueError("transport.curve_allowed_clients needs transport.curve_server_secret "
                             "(an allow-list of client keys only works with curve on)")


@dataclass
class RobotConfig:
    name: str
    driver: str  # "sim" | "lerobot"
    limits: Limits
    rate_hz: float = 500.0
    policy_hz: float = 10.0
    watchdog_s: float = 1.0
    blend_s: float = 0.2  # seam cross-fade (interpolation "linear" only)
    interpolation: str = "hold"  # "hold": action i is the setpoint during step i (as in the env); "linear"
    spin_s: float = 0.0003
    rt_priority: int = 80
    cpu: int = -1
    transport: TransportConfig = field(default_factory=TransportConfig)
    driver_options: dict[str, Any] = field(default_factory=dict)  # e.g. lerobot robot type / port
    # --- episodes on a real robot (driver lerobot; the sim's scene resets itself) ---
    # camera name -> LeRobot camera config ({type: opencv, index_or_path: 0, width, height, fps, ...})
    # plus an optional ``feature`` (the checkpoint's image key; default observation.images.<name>)
    cameras: dict[str, dict[str, Any]] = field(default_factory=dict)
    home: list[float] | None = None  # [A] joint positions the arm moves to before every episode
    home_tolerance: list[float] | float = 2.0  # per component: |measured - home| for "home reached"
    home_timeout_s: float = 15.0  # not home within this long -> hold, the run ends with an error
    episode_s: float = 30.0  # an episode ends after this long (no success check on hardware)
    reset_wait_s: float = 0.0  # between episodes, at home: time for a person to reset the scene

    def __post_init__(self):
        if self.driver not in ("sim", "lerobot"):
            raise ValueError(f"driver={self.driver!r}: expected 'sim' or 'lerobot'")
        if not 1 <= self.rate_hz <= 10000:
            raise ValueError(f"rate_hz={self.rate_hz}: expected 1..10000")
        if not 0 < self.policy_hz <= self.rate_hz:
            raise ValueError(f"policy_hz={self.policy_hz}: expected 0 < policy_hz <= rate_hz ({self.rate_hz})")
        if self.interpolation not in ("hold", "linear"):
            raise ValueError(f"interpolation={self.interpolation!r}: expected 'hold' (action i is the setpoint "
                             "during policy step i, as in the env) or 'linear'")
        if self.watchdog_s <= 0 or self.blend_s < 0 or self.spin_s < 0:
            raise ValueError(f"watchdog_s ({self.watchdog_s}) must be > 0, blend_s ({self.blend_s}) and "
                             f"spin_s ({self.spin_s}) >= 0")
        self._check_episode_keys()

    def _check_episode_keys(self) -> None:
        n = self.limits.dim
        for name in ("home_timeout_s", "episode_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise ValueError(f"{name}={v!r}: expected a number of seconds > 0")
        if isinstance(self.reset_wait_s, bool) or not isinstance(self.reset_wait_s, (int, float)) \
                or not 0 <= self.reset_wait_s < float("inf"):
            raise ValueError(f"reset_wait_s={self.reset_wait_s!r}: expected a number of seconds >= 0")
        tol = self.home_tolerance
        tol = [tol] * n if isinstance(tol, (int, float)) and not isinstance(tol, bool) else tol
        try:
            self.home_tolerance = _vec("home_tolerance", tol, n)
        except (TypeError, ValueError):
            raise ValueError(f"home_tolerance={self.home_tolerance!r}: expected a number or {n} numbers > 0 "
                             "(one per command component)") from None
        if min(self.home_tolerance) <= 0:
            raise ValueError(f"home_tolerance={self.home_tolerance}: every value must be > 0")
        if self.home is not None:
            try:
                self.home = _vec("home", self.home, n)
            except (TypeError, ValueError):
                raise ValueError(f"home={self.home!r}: expected {n} joint positions (one per command component, "
                                 f"in the units of limits.joint_low)") from None
            out = [i for i, (h, lo, hi) in enumerate(zip(self.home, self.limits.joint_low, self.limits.joint_high))
                   if not lo <= h <= hi]
            if out:
                raise ValueError(f"home={self.home}: components {out} lie outside limits.joint_low .. joint_high "
                                 f"({self.limits.joint_low} .. {self.limits.joint_high})")
        if not isinstance(self.cameras, dict):
            raise ValueError(f"cameras={self.cameras!r}: expected a mapping camera name -> LeRobot camera config")
        for name, cam in self.cameras.items():
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"cameras: camera name {name!r} must be a non-empty string without '/'")
            if not isinstance(cam, dict) or not isinstance(cam.get("type"), str):
                raise ValueError(f"cameras.{name}={cam!r}: expected a mapping with a 'type' "
                                 "(a LeRobot camera type: opencv, intelrealsense, ...)")
            feat = cam.get("feature", f"observation.images.{name}")
            if not isinstance(feat, str) or not feat.startswith("observation.images.") \
                    or feat == "observation.images.":
                raise ValueError(f"cameras.{name}.feature={feat!r}: expected a checkpoint image key "
                                 "observation.images.<camera>")
        feats = [c.get("feature", f"observation.images.{k}") for k, c in self.cameras.items()]
        if len(set(feats)) != len(feats):
            raise ValueError(f"cameras: two cameras feed the same feature ({feats})")

    @property
    def period(self) -> float:
        return 1.0 / self.rate_hz

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "robot config") -> RobotConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KeyError(f"{where}: unknown keys {unknown}; valid keys: {sorted(known)}")
        for key in ("name", "driver", "limits"):
            if key not in d:
                raise KeyError(f"{where}: missing key {key!r}")
        try:
            d["limits"] = Limits(**d["limits"])
            d["transport"] = TransportConfig(**d.get("transport", {}))
        except TypeError as e:
            raise KeyError(f"{where}: {e}") from None
        return cls(**d)


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def load_robot_config(name_or_path: str, overrides: dict[str, Any] | None = None) -> RobotConfig:
    """A robot config by name (``configs/robot/<name>.yaml``) or path; ``overrides`` maps dotted keys
    (``limits.max_step``) to values."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"robot config {name_or_path!r} not found ({path}); available: {names}")
    d = yaml.safe_load(path.read_text())
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping at top level")
    for k, v in (overrides or {}).items():
        _set_dotted(d, k, v)
    return RobotConfig.from_dict(d, where=str(path))


def token_from_env(required: bool = True) -> bytes | None:
    """The shared authentication token from ``$POLICYSTACK_DAEMON_TOKEN`` (never on argv)."""
    tok = os.environ.get(TOKEN_ENV, "")
    if not tok:
        if required:
            raise KeyError(f"${TOKEN_ENV} is not set: the daemon and its workers share a token through it")
        return None
    if len(tok) < 16:
        raise ValueError(f"${TOKEN_ENV} is {len(tok)} characters; use at least 16 (e.g. `openssl rand -hex 32`)")
    return tok.encode()
