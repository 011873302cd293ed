import numpy as np
import pytest

from policystack.types import (
    OBS_IMAGE,
    DataError,
    Feature,
    camera_key,
    camera_record,
    check_camera_records,
    is_image_key,
    stats_from_json,
    stats_to_json,
)


def test_feature_json_round_trip():
    f = Feature.from_json({"dtype": "video", "shape": [96, 128, 3], "names": ["height", "width", "channels"]}, "x")
    assert f.is_visual and f.chw == (3, 96, 128)
    assert Feature.from_json(f.to_json(), "x") == f


@pytest.mark.parametrize(
    "bad, msg",
    [
        ({"dtype": "float16", "shape": [3]}, "dtype"),
        ({"dtype": "float32", "shape": [-1]}, "shape"),
        ({"dtype": "float32", "shape": "3"}, "shape"),
        ({"dtype": "video", "shape": [96, 96]}, "[H, W, 3]"),
        ({"shape": [3]}, "missing"),
        ([1, 2], "expected an object"),
    ],
)
def test_feature_from_json_names_the_key(bad, msg):
    with pytest.raises(DataError) as e:
        Feature.from_json(bad, "meta/info.json: features['observation.state']")
    assert "features['observation.state']" in str(e.value) and msg in str(e.value)


def test_camera_keys():
    assert camera_key("front") == "observation.images.front"
    assert is_image_key("observation.images.front") and not is_image_key("observation.state")


def test_stats_json_round_trip():
    stats = {"action": {"mean": np.array([0.5, 1.0]), "count": np.array([10])}}
    back = stats_from_json(stats_to_json(stats), "stats.json")
    np.testing.assert_array_equal(back["action"]["mean"], stats["action"]["mean"])
    assert back["action"]["count"].dtype == np.int64


def test_lerobots_single_camera_key_is_a_camera():
    assert is_image_key(OBS_IMAGE) and not is_image_key("observation.imagery")


def _cam(**record):
    return Feature("video", (8, 8, 3), info={"video.codec": "av1", **record})


def test_camera_records_must_agree():
    made = {"camera.name": "metaworld/corner", "camera.convention": "lerobot", "camera.shadows": False}
    policy = {camera_key("a"): _cam(**made), "observation.state": Feature("float32", (3,))}
    assert camera_record(policy[camera_key("a")]) == made  # LeRobot's video.* entries are not part of it
    check_camera_records(policy, {camera_key("a"): _cam(**made)}, "env x")
    check_camera_records({camera_key("b"): _cam()}, {camera_key("b"): _cam()}, "env x")  # recorded on neither side
    check_camera_records(policy, {}, "env x")  # a camera the source lacks is check_features' business
    with pytest.raises(ValueError, match=r"observation.images.a: the checkpoint's images were made with "
                                         r"camera.convention='lerobot'; env x makes them with "
                                         r"camera.convention='upright'\. Fix it so"):
        check_camera_records(policy, {camera_key("a"): _cam(**{**made, "camera.convention": "upright"})},
                             "env x", hint="Fix it so")
    with pytest.raises(ValueError, match="the checkpoint does not record how its images were made; env x makes"):
        check_camera_records({camera_key("a"): _cam()}, {camera_key("a"): _cam(**made)}, "env x")
    with pytest.raises(ValueError, match="env x does not say how it makes its images"):
        check_camera_records(policy, {camera_key("a"): _cam()}, "env x")
