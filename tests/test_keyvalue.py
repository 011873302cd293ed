from dataclasses import dataclass
from pathlib import Path

import pytest

from policystack.keyvalue import parse_key_values


@dataclass
class Args:
    env: str
    out: Path
    episodes: int = 1
    size: float = 0.0
    only_success: bool = True
    cameras: tuple[str, ...] | None = None


def test_converts_by_annotation():
    kw = parse_key_values(["env=Reach", "out=d", "episodes=5", "only_success=no", "cameras=front,wrist"], Args,
                          required=("env", "out"))
    assert kw == {"env": "Reach", "out": Path("d"), "episodes": 5, "only_success": False, "cameras": ("front", "wrist")}
    assert parse_key_values(["cameras=none"], Args)["cameras"] == ()
    assert parse_key_values(["size=0.08"], Args) == {"size": 0.08}


@pytest.mark.parametrize("argv, msg", [
    (["episodes"], "expected key=value"),
    (["epsiodes=3"], "unknown argument 'epsiodes'; valid: env, out, episodes"),
    (["episodes=three"], "episodes='three': expected an integer"),
    (["size=big"], "size='big': expected a number"),
    (["only_success=maybe"], "only_success='maybe': expected true or false"),
    (["env=Reach"], "missing required argument(s): out="),
])
def test_errors_name_the_argument(argv, msg):
    with pytest.raises(ValueError) as e:
        parse_key_values(argv, Args, required=("env", "out"))
    assert msg in str(e.value)
