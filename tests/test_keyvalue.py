from dataclasses import dataclass
from pathlib import Path

import pytest

from policystack.keyvalue import parse_int_ranges, parse_key_values


@dataclass
class Args:
    env: str
    out: Path
    episodes: int = 1
    rate: float = 1.0
    size: float = 0.0
    only_success: bool = True
    cameras: tuple[str, ...] | None = None
    widths: tuple[int, ...] = ()


def test_converts_by_annotation():
    kw = parse_key_values(["env=Reach", "out=d", "episodes=5", "rate=0.5", "only_success=no", "cameras=front,wrist"],
                          Args, required=("env", "out"))
    assert kw == {"env": "Reach", "out": Path("d"), "episodes": 5, "rate": 0.5, "only_success": False,
                  "cameras": ("front", "wrist")}
    assert parse_key_values(["cameras=none"], Args)["cameras"] == ()
    assert parse_key_values(["size=0.08"], Args) == {"size": 0.08}
    assert parse_key_values(["widths=16,32"], Args)["widths"] == (16, 32)


@pytest.mark.parametrize("argv, msg", [
    (["episodes"], "expected key=value"),
    (["epsiodes=3"], "unknown argument 'epsiodes'; valid: env, out, episodes"),
    (["episodes=three"], "episodes='three': expected an integer"),
    (["rate=fast"], "rate='fast': expected a number"),
    (["size=big"], "size='big': expected a number"),
    (["only_success=maybe"], "only_success='maybe': expected true or false"),
    (["env=Reach"], "missing required argument(s): out="),
    (["widths=16,x"], "widths='16,x': expected comma-separated integers"),
])
def test_errors_name_the_argument(argv, msg):
    with pytest.raises(ValueError) as e:
        parse_key_values(argv, Args, required=("env", "out"))
    assert msg in str(e.value)


def test_int_ranges():
    assert parse_int_ranges("30-34", "variations") == [30, 31, 32, 33, 34]
    assert parse_int_ranges("0,2,5-7,2", "x") == [0, 2, 5, 6, 7]
    assert parse_int_ranges(4, "x") == [4]
    for bad, msg in (("3-1", "range '3-1' is empty"), ("a-b", "expected numbers and ranges"), ("", "expected")):
        with pytest.raises(ValueError, match=msg) as e:
            parse_int_ranges(bad, "variations")
        assert "variations=" in str(e.value)
