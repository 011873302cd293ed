"""decode_frames / decode_segment: LeRobot's (torchcodec's) pixels, random access, clear errors."""

from __future__ import annotations

import av
import numpy as np
import pytest

from policystack.datasets.video import decode_frames, decode_segment, probe_video
from policystack.types import DataError

FPS, N, SIZE = 30, 40, 48


@pytest.fixture(scope="module", params=["libsvtav1", "h264"])
def video(request, tmp_path_factory):
    """N frames of a moving gradient, GOP 2 as LeRobot encodes, in codec ``param``."""
    path = tmp_path_factory.mktemp("video") / f"{request.param}.mp4"
    opts = {"g": "2", "crf": "30", **({"preset": "12"} if request.param == "libsvtav1" else {})}
    yy, xx = np.mgrid[:SIZE, :SIZE]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(request.param, FPS, options=opts)
        stream.pix_fmt, stream.width, stream.height = "yuv420p", SIZE, SIZE
        for i in range(N):
            img = np.stack([(xx * 5 + 9 * i) % 256, (yy * 3 + 4 * i) % 256, (xx + yy) % 256], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_probe(video):
    info = probe_video(video)
    assert (info.width, info.height, info.fps, info.num_frames) == (SIZE, SIZE, FPS, N)


def test_same_pixels_as_torchcodec(video):
    """LeRobot decodes with torchcodec; our PyAV frames are bit-identical (so loader == LeRobot * 255)."""
    from torchcodec.decoders import VideoDecoder

    idx = [0, 39, 17, 17, 3, 25, 1]
    ours = decode_frames(video, [i / FPS for i in idx])
    theirs = VideoDecoder(str(video)).get_frames_at(indices=idx).data.numpy()
    assert ours.dtype == np.uint8 and ours.shape == (len(idx), 3, SIZE, SIZE)
    np.testing.assert_array_equal(ours, theirs)


def test_segment_equals_random_access(video):
    frames, times = decode_segment(video)
    assert frames.shape == (N, 3, SIZE, SIZE)
    np.testing.assert_allclose(times, np.arange(N) / FPS, atol=1e-6)
    part, t = decode_segment(video, 10 / FPS, 20 / FPS)
    np.testing.assert_array_equal(part, frames[10:20])
    rng = np.random.default_rng(0)
    idx = rng.integers(0, N, 25)
    np.testing.assert_array_equal(decode_frames(video, idx / FPS), frames[idx])
    # far-apart timestamps take the seek path (SEEK_GAP_S) and still match
    np.testing.assert_array_equal(decode_frames(video, [39 / FPS, 0.0], threads=1), frames[[39, 0]])


def test_timestamp_outside_the_file(video):
    with pytest.raises(DataError, match=rf"{video.name}: no frame within .*\[5\.0\]"):
        decode_frames(video, [0.0, 5.0])
    with pytest.raises(DataError, match="no frame within"):
        decode_frames(video, [0.5 / FPS])  # between two frames, beyond the tolerance


def test_missing_and_truncated_and_garbage(video, tmp_path):
    with pytest.raises(DataError, match=r"nope\.mp4: video file not found"):
        decode_frames(tmp_path / "nope.mp4", [0.0])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    with pytest.raises(DataError, match=r"garbage\.mp4: cannot open video"):
        decode_frames(garbage, [0.0])
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.mp4: .*(truncated|no frame within)"):
        decode_frames(cut, np.arange(N) / FPS)
