import numpy as np
import pytest

from policystack.types import DataError, Feature, camera_key, is_image_key, stats_from_json, stats_to_json


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
