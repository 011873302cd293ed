"""Durable file writes and MP4 encoding: the one place every package writes files through.

Atomic writes (a crash leaves either the old file or the new one, never a half-written one):

    atomic_write_json(path, obj)            atomic_write_bytes(path, data)
    atomic_write_parquet(path, table)       with atomic_writer(path) as f: f.write(...)

Each writes a temporary file beside ``path`` (``.<name>.<random>.tmp``, which no reader of this
project looks at), fsyncs it, renames it onto ``path`` and fsyncs the directory. ``temp_path`` +
``commit_file`` do the same in two steps for a file written over time (an episode's parquet or
video). ``fsync_dir`` makes a rename in a directory durable.

Video: ``VideoEncoder`` streams RGB frames into an MP4 with LeRobot's encoder settings (the
dataset writer's cameras); ``write_video`` encodes a list of frames in one call (evaluation
videos). Both write through ``temp_path`` / ``commit_file``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


# --- atomic writes ------------------------------------------------------------------------------
def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename or a new file in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | Path, durable: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for writing; on success it is fsync'd and renamed onto
    ``path``, so a crash leaves either the old file or the new one, never a half-written one.
    ``durable=False`` skips the fsyncs (a cache that can be rebuilt: after a power loss a reader may
    find a short file, which it must treat as absent; a process crash still leaves no partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as indented JSON (4 spaces, trailing newline)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=4) + "\n").encode())


def atomic_write_parquet(path: str | Path, table) -> None:
    """A ``pyarrow.Table`` as one parquet file."""
    import pyarrow.parquet as pq

    with atomic_writer(path) as f:
        pq.write_table(table, f)


@contextmanager
def atomic_directory(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path`` to fill; on success every file in it is fsync'd
    and it is renamed onto ``path`` in one step, so ``path`` is either absent (or the old one) or
    complete. On an error the temporary directory is removed.

    If ``path`` exists by then: with ``replace`` the old directory is renamed aside, the new one
    into place, and only then is the old one deleted; without, ``FileExistsError`` (e.g. another
    process finished the same work first) and the existing directory is left as it is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()  # not mkdtemp: its mode 0700 would become the directory's
    old = None
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        if replace and path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old)
        try:
            os.rename(tmp, path)  # fails on an existing non-empty directory
        except OSError:
            if old is not None:  # put the old one back
                os.replace(old, path)
                old = None
            if path.exists():
                raise FileExistsError(f"{path}: already exists; not replaced") from None
            raise
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def temp_path(final: Path) -> Path:
    """A new empty temporary file beside ``final`` (its directory created), to be written over time
    and then moved into place by ``commit_file``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def commit_file(tmp: Path, final: Path) -> None:
    """fsync ``tmp`` and rename it to ``final`` (durable when this returns)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


# --- video ----------------------------------------------------------------------------------------
# vcodec argument -> (PyAV encoder, codec name in LeRobot's info.json, encoder options as LeRobot's
# _get_codec_options: g=2, crf=30, and preset 12 for SVT-AV1)
VIDEO_CODECS = {
    "libsvtav1": ("libsvtav1", "av1", {"g": "2", "crf": "30", "preset": "12"}),
    "h264": ("libx264", "h264", {"g": "2", "crf": "30"}),
}
PIX_FMT = "yuv420p"
# SVT-AV1 (as bundled with PyAV 15.1) dies with SIGFPE on frames narrower than 26 px (measured:
# 24 crashes, 26 works); callers refuse them up front with a margin
MIN_SVTAV1_WIDTH = 32


class VideoEncoder:
    """Streams RGB frames (uint8 [H, W, 3]) into an MP4 at ``final`` as LeRobot's encode_video_frames
    would: written to a temporary file, moved into place by ``commit``, deleted by ``abort``."""

    def __init__(self, final: Path, fps: int, height: int, width: int, vcodec: str):
        import av

        if vcodec not in VIDEO_CODECS:
            raise ValueError(f"vcodec {vcodec!r} is not one of {sorted(VIDEO_CODECS)}")
        encoder, _, options = VIDEO_CODECS[vcodec]
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its config banner to stderr otherwise
        self.final, self.tmp = final, temp_path(final)
        self.container = av.open(str(self.tmp), "w", format="mp4")
        self.stream = self.container.add_stream(encoder, rate=fps, options=dict(options))
        self.stream.pix_fmt = PIX_FMT
        self.stream.width, self.stream.height = width, height
        self.time_base = Fraction(1, fps)
        self.n = 0
        self._av = av  # imported on use: encoding video is the only part of this module that needs PyAV

    def add(self, hwc: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(hwc), format="rgb24")
        frame.pts, frame.time_base = self.n, self.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.n += 1

    def commit(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        commit_file(self.tmp, self.final)

    def abort(self) -> None:
        try:
            for packet in self.stream.encode():  # end of stream, so the encoder shuts down cleanly
                self.container.mux(packet)
            self.container.close()
        except (self._av.FFmpegError, OSError, ValueError):
            pass
        self.tmp.unlink(missing_ok=True)


def write_video(path: str | Path, frames: Sequence[np.ndarray], fps: int, vcodec: str = "h264") -> Path:
    """Encode uint8 HWC RGB ``frames`` to an MP4 at ``path`` (atomically) with ``VideoEncoder``
    (h264 by default: plays everywhere). Odd sizes are padded by one black row / column (yuv420p
    needs even sizes)."""
    if not frames:
        raise ValueError(f"{path}: no frames to encode")
    h, w = frames[0].shape[:2]
    ph, pw = h + h % 2, w + w % 2
    encoder = VideoEncoder(Path(path), fps=fps, height=ph, width=pw, vcodec=vcodec)
    try:
        for f in frames:
            if f.shape != (h, w, 3) or f.dtype != np.uint8:
                raise ValueError(f"{path}: frames must all be uint8 [{h}, {w}, 3], got {f.dtype} {list(f.shape)}")
            encoder.add(np.pad(f, ((0, ph - h), (0, pw - w), (0, 0))) if (ph, pw) != (h, w) else f)
        encoder.commit()
    except BaseException:
        encoder.abort()
        raise
    return Path(path)
