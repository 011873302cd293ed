"""Import RLDS datasets (TFDS builder directories of TFRecord shards) as LeRobot v3, without TensorFlow.

An RLDS dataset as TensorFlow Datasets writes it is a directory::

    <name>/<version>/dataset_info.json                    splits, shard lengths, file template
    <name>/<version>/features.json                        the FeaturesDict schema
    <name>/<version>/<name>-train.tfrecord-00000-of-00002 TFRecord shards, one episode per record

Each record is one ``tf.train.Example`` whose keys are the schema's leaves flattened with "/"
(``steps/observation/image``, ``steps/action/world_vector``, ``episode_metadata/file_path``);
every step feature holds all of the episode's steps concatenated (JPEGs and text as bytes, bools
and int32 as int64, floats as float32). This module reads that with no TensorFlow: the TFRecord
framing (with masked CRC32C checks), the Example wire format and the schema are decoded here;
images are decoded with OpenCV.

``read_rlds_episodes(src)`` yields episodes as dicts of numpy arrays for inspection;
``convert_rlds(src, dst)`` writes a LeRobot v3 dataset through ``DatasetWriter``.

The mapping (``RLDSMapping``; a dict, or a YAML / JSON file with the same fields)
----------------------------------------------------------------------------------
Keys are RLDS step keys relative to the step, "/"-separated as in features.json
(``observation/image``, ``action/world_vector``, ``language_instruction``)::

    cameras:  {observation/image: front, observation/wrist_image: wrist}
              # RLDS image -> observation.images.<camera>
    state:    [observation/state]        # concatenated, in this order, into observation.state
    action:   [action]                   # concatenated, in this order, into action (float32)
    language: [language_instruction]     # the first key present gives each frame's task
    extra:    {reward: next.reward, is_terminal: next.done}   # copied as is, shape [1] per frame
    ignore:   [is_first, is_last, discount, "episode_metadata/*"]   # fnmatch patterns
    fps:      10                         # an int; RLDS stores no rate; null -> KNOWN_FPS or 10
    split:    train
    default_task: null                   # task of frames with an empty instruction; null -> the dataset name

Every listed key the dataset lacks is skipped, so one mapping serves many datasets; every
feature the dataset has must be mapped or ignored, else ``DataError`` names it (this also
catches misspelt keys). Fields left out of a dict take the defaults below, which cover the
Open X-Embodiment conventions: ``observation/image`` / ``wrist_image`` / ``hand_image``
cameras, ``observation/state`` (or RT-1's ``base_pose_tool_reached`` + ``gripper_closed``)
state, a tensor ``action`` (or RT-1's dict action ``world_vector`` + ``rotation_delta`` +
``gripper_closedness_action``), ``language_instruction`` (step-level Text) or
``observation/natural_language_instruction`` (a string Tensor), and the RT-1 observation
extras, language embeddings, RLDS flags and episode metadata ignored.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import logging
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from policystack.datasets.meta import read_json
from policystack.io import fsync_dir
from policystack.types import ACTION, OBS_STATE, TASK, DataError, Feature, FeatureSpec, camera_key

log = logging.getLogger(__name__)

# ============================================================================================
# TFRecord framing: [uint64 length][uint32 masked crc32c(length)][data][uint32 masked crc32c(data)]
# ============================================================================================
_CRC32C_POLY = 0x82F63B78  # Castagnoli, reflected


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (_CRC32C_POLY if c & 1 else 0)
        table[i] = c
    return table


_CRC_TABLE = _crc_table()
_CRC_TABLE_LIST = [int(x) for x in _CRC_TABLE]


@functools.cache
def _word_tables() -> tuple[np.ndarray, np.ndarray]:
    """Slicing-by-4 tables merged pairwise: after ``reg ^= word`` (4 bytes, little-endian), the
    register becomes ``lo[reg & 0xFFFF] ^ hi[reg >> 16]``."""
    t = [_CRC_TABLE]
    for _ in range(3):
        t.append((t[-1] >> 8) ^ _CRC_TABLE[t[-1] & 0xFF])
    i = np.arange(1 << 16, dtype=np.uint32)
    lo = t[3][i & 0xFF] ^ t[2][i >> 8]
    hi = t[1][i & 0xFF] ^ t[0][i >> 8]
    return lo, hi
_CRC_ROW = 512  # bytes per row in the vectorised CRC


def _crc_update(crc: int, data: bytes | memoryview) -> int:
    """Byte-at-a-time CRC32C register update (no pre/post inversion)."""
    t = _CRC_TABLE_LIST
    for b in bytes(data):
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


@functools.cache
def _zero_shift_tables(n: int) -> list[list[int]]:
    """tables[i][v] = register after feeding n zero bytes to register ``v << 8i`` (a linear map)."""
    regs = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None]).ravel()
    for _ in range(n):
        regs = _CRC_TABLE[regs & 0xFF] ^ (regs >> 8)
    return regs.reshape(4, 256).tolist()


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data``, e.g. ``crc32c(b"123456789") == 0xE3069283``.

    Long inputs are cut into rows of ``_CRC_ROW`` bytes whose CRCs numpy computes side by side;
    CRC is linear over GF(2), so the rows' CRCs are then chained with a precomputed
    "shift by one row of zeros" map. Pure numpy, no extension module.
    """
    n = len(data)
    if n < 8 * _CRC_ROW:
        return _crc_update(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    rows = n // _CRC_ROW
    words = np.frombuffer(data, dtype="<u4", count=rows * _CRC_ROW // 4).reshape(rows, _CRC_ROW // 4)
    cols = np.ascontiguousarray(words.T).astype(np.uint32)  # [ROW/4, rows]: one CRC per column
    lo, hi = _word_tables()
    reg = np.zeros(rows, dtype=np.uint32)
    tmp = np.empty(rows, dtype=np.uint32)
    for j in range(_CRC_ROW // 4):
        reg ^= cols[j]
        np.take(hi, reg >> 16, out=tmp)
        reg &= 0xFFFF
        np.take(lo, reg, out=reg)
        reg ^= tmp
    t0, t1, t2, t3 = _zero_shift_tables(_CRC_ROW)
    crc = 0xFFFFFFFF
    for r in reg.tolist():  # crc(all rows so far) = shift(crc, one row) ^ crc_from_zero(row)
        crc = t0[crc & 0xFF] ^ t1[(crc >> 8) & 0xFF] ^ t2[(crc >> 16) & 0xFF] ^ t3[crc >> 24] ^ r
    crc = _crc_update(crc, memoryview(data)[rows * _CRC_ROW :])
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def iter_tfrecord(path: str | Path, verify_crc: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yield ``(byte_offset, record)`` for each record of a TFRecord file (uncompressed).

    The length field's CRC is always checked; the data CRC when ``verify_crc``. A truncated or
    corrupt file raises ``DataError`` naming the file and the record's byte offset.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot open TFRecord shard ({e.strerror})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size:
            header = f.read(12)
            if len(header) < 12:
                raise DataError(
                    f"{path}: truncated TFRecord shard: record header at byte offset {offset} has "
                    f"{len(header)} of 12 bytes (file size {size})"
                )
            length = int.from_bytes(header[:8], "little")
            if int.from_bytes(header[8:], "little") != masked_crc32c(header[:8]):
                raise DataError(f"{path}: corrupt TFRecord shard: bad length checksum at byte offset {offset}")
            if offset + 12 + length + 4 > size:
                raise DataError(
                    f"{path}: truncated TFRecord shard: the record at byte offset {offset} declares "
                    f"{length} bytes but the file ends {size - offset - 12} bytes after its header"
                )
            body = f.read(length + 4)
            data = body[:length]
            if verify_crc and int.from_bytes(body[length:], "little") != masked_crc32c(data):
                raise DataError(f"{path}: corrupt TFRecord shard: data checksum mismatch in the record at byte offset {offset}")
            yield offset, data
            offset += 12 + length + 4


# ============================================================================================
# tf.train.Example wire format
#   Example  {1: Features}           Features {1: repeated map entry {1: key, 2: Feature}}
#   Feature  {1: BytesList {1: repeated bytes}, 2: FloatList {1: packed float},
#             3: Int64List {1: packed int64}}
# ============================================================================================
def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError(f"bad varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(field_number, wire_type, a, b)``: for LEN fields the slice [a, b), for varints
    (value, 0), for fixed32 / fixed64 the slice of their bytes."""
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, 0
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise ValueError(f"field {number} runs past the end of its message (byte {pos})")
            yield number, wire, pos, pos + n
            pos += n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if pos + n > end:
                raise ValueError(f"field {number} runs past the end of its message (byte {pos})")
            yield number, wire, pos, pos + n
            pos += n
        else:
            raise ValueError(f"unsupported wire type {wire} for field {number} at byte {pos}")


def _packed_varints(raw: np.ndarray) -> np.ndarray:
    """Decode concatenated varints (uint8 array) to int64, vectorised."""
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    if raw[-1] & 0x80:
        raise ValueError("packed int64 list ends inside a varint")
    if not (raw & 0x80).any():  # every value < 128 (flags, small ints)
        return raw.astype(np.int64)
    ends = np.flatnonzero(raw < 0x80)
    starts = np.concatenate([[0], ends[:-1] + 1])
    pos = np.arange(raw.size) - np.repeat(starts, ends - starts + 1)
    if pos.max() > 9:
        raise ValueError("varint longer than 10 bytes")
    parts = (raw & 0x7F).astype(np.uint64) << (7 * pos).astype(np.uint64)
    return np.bitwise_or.reduceat(parts, starts).view(np.int64)


def parse_example(record: bytes) -> dict[str, list[bytes] | np.ndarray]:
    """Parse a serialised ``tf.train.Example`` into ``{key: list[bytes] | float32[n] | int64[n]}``.

    Raises ValueError on malformed bytes (callers add the file and offset).
    """
    buf = memoryview(record)
    out: dict[str, list[bytes] | np.ndarray] = {}
    for num, wire, a, b in _fields(buf, 0, len(buf)):
        if num != 1 or wire != 2:
            continue  # Example has only `features`
        for num2, wire2, ea, eb in _fields(buf, a, b):
            if num2 != 1 or wire2 != 2:
                continue
            key, value = None, None
            for num3, wire3, fa, fb in _fields(buf, ea, eb):
                if num3 == 1 and wire3 == 2:
                    key = bytes(buf[fa:fb]).decode("utf-8")
                elif num3 == 2 and wire3 == 2:
                    value = _parse_feature(buf, fa, fb)
            if key is None:
                raise ValueError("a feature map entry has no key")
            out[key] = value if value is not None else np.zeros(0, dtype=np.float32)
    return out


def _parse_feature(buf: memoryview, a: int, b: int) -> list[bytes] | np.ndarray:
    value: list[bytes] | np.ndarray = np.zeros(0, dtype=np.float32)
    for kind, wire, la, lb in _fields(buf, a, b):
        if wire != 2:
            continue
        if kind == 1:  # BytesList
            value = [bytes(buf[x:y]) for n, w, x, y in _fields(buf, la, lb) if n == 1 and w == 2]
        elif kind == 2:  # FloatList: packed (wire 2) or one fixed32 per value (wire 5)
            chunks = [buf[x:y] for n, w, x, y in _fields(buf, la, lb) if n == 1 and w in (2, 5)]
            raw = b"".join(chunks)
            if len(raw) % 4:
                raise ValueError("float list byte length is not a multiple of 4")
            value = np.frombuffer(raw, dtype="<f4").copy()
        elif kind == 3:  # Int64List: packed (wire 2) or one varint per value (wire 0)
            parts: list[np.ndarray] = []
            for n, w, x, y in _fields(buf, la, lb):
                if n == 1 and w == 2:
                    parts.append(_packed_varints(np.frombuffer(buf[x:y], dtype=np.uint8)))
                elif n == 1 and w == 0:
                    parts.append(np.array([x], dtype=np.uint64).view(np.int64))
            value = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return value


# ============================================================================================
# features.json (TFDS FeaturesDict proto as JSON) -> flat leaf specs
# ============================================================================================
@dataclass(frozen=True)
class RLDSLeaf:
    """One leaf of the schema. ``key`` is the Example key (``steps/observation/image``).

    kind: "tensor" (numeric or string Tensor / Scalar / ClassLabel), "image" or "text".
    shape: one step's shape (-1 where features.json leaves it unknown).
    encoding: a tensor's TFDS encoding ("none", "bytes", "zlib"); an image's format ("jpeg", "png").
    """

    key: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str
    per_step: bool

    @property
    def name(self) -> str:
        """The key as mappings name it: relative to the step for step features."""
        return self.key[len("steps/") :] if self.per_step else self.key


@dataclass(frozen=True)
class RLDSSchema:
    root: Path
    leaves: dict[str, RLDSLeaf]  # by Example key

    @property
    def features_path(self) -> Path:
        return self.root / "features.json"

    def by_name(self) -> dict[str, RLDSLeaf]:
        return {leaf.name: leaf for leaf in self.leaves.values()}


_NUMERIC = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
            "uint32", "uint64", "bool"}


def _dims(spec: dict, where: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in spec.get("shape", {}).get("dimensions", []))
    except (TypeError, ValueError, AttributeError):
        raise DataError(f"{where}: bad shape {spec.get('shape')!r}; expected {{'dimensions': [ints]}}") from None


def _walk(node: Any, prefix: str, per_step: bool, out: dict[str, RLDSLeaf], where: str) -> None:
    here = f"{where} at {prefix or '<root>'}"
    if not isinstance(node, dict):
        raise DataError(f"{here}: expected a feature object, got {type(node).__name__}")
    cls = node.get("pythonClassName", "?")
    sep = "/" if prefix else ""
    for kind in ("featuresDict", "sequence", "image", "text", "tensor", "classLabel"):
        if kind in node and not isinstance(node[kind], dict):
            raise DataError(f"{here}: '{kind}' must be an object, got {node[kind]!r}")
    if "featuresDict" in node:
        feats = node["featuresDict"].get("features")
        if not isinstance(feats, dict):
            raise DataError(f"{here}: featuresDict has no 'features' object")
        for name, sub in feats.items():
            _walk(sub, f"{prefix}{sep}{name}", per_step, out, where)
    elif "sequence" in node:
        if per_step:
            raise DataError(f"{here}: a sequence nested inside the steps is not supported ({cls})")
        _walk(node["sequence"].get("feature"), prefix, True, out, where)
    elif "image" in node:
        img = node["image"]
        out[prefix] = RLDSLeaf(prefix, "image", img.get("dtype", "uint8"), _dims(img, here),
                               img.get("encodingFormat") or "png", per_step)
    elif "text" in node:
        out[prefix] = RLDSLeaf(prefix, "text", "string", (), "none", per_step)
    elif "tensor" in node or "classLabel" in node:
        t = node.get("tensor", {"dtype": "int64", "encoding": "none"})
        dtype = t.get("dtype", "?")
        if dtype not in _NUMERIC and dtype != "string":
            raise DataError(f"{here}: unsupported tensor dtype {dtype!r} ({cls})")
        encoding = t.get("encoding", "none")
        if encoding not in ("none", "bytes", "zlib"):
            raise DataError(f"{here}: unsupported tensor encoding {encoding!r}")
        out[prefix] = RLDSLeaf(prefix, "tensor", dtype, _dims(t, here), encoding, per_step)
    else:
        raise DataError(
            f"{here}: unsupported feature type {cls!r} (supported: FeaturesDict, Dataset/Sequence, "
            "Tensor, Scalar, ClassLabel, Image, Text)"
        )


def load_schema(root: str | Path) -> RLDSSchema:
    """Read ``features.json`` of a TFDS builder directory into flat leaves."""
    root = Path(root)
    path = root / "features.json"
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; a TFDS-built RLDS directory holds dataset_info.json, "
            "features.json and <name>-<split>.tfrecord-XXXXX-of-YYYYY shards"
        )
    doc = read_json(path)
    if isinstance(doc, dict) and "type" in doc and "content" in doc:
        raise DataError(f"{path}: the pre-2022 TFDS features.json format is not supported; "
                        "re-save the dataset with tensorflow-datasets >= 4.5")
    leaves: dict[str, RLDSLeaf] = {}
    _walk(doc, "", False, leaves, str(path))
    if not any(leaf.per_step for leaf in leaves.values()):
        raise DataError(f"{path}: no 'steps' Dataset feature; this is not an RLDS dataset")
    return RLDSSchema(root, leaves)


# ============================================================================================
# dataset_info.json -> shard files
# ============================================================================================
def resolve_builder_dir(src: str | Path) -> Path:
    """Accept ``<name>/<version>`` or ``<name>`` holding exactly one version directory."""
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: RLDS dataset directory not found")
    if (src / "dataset_info.json").is_file() or (src / "features.json").is_file():
        return src
    versions = sorted(p for p in src.iterdir() if (p / "dataset_info.json").is_file())
    if len(versions) == 1:
        return versions[0]
    if versions:
        raise DataError(f"{src}: holds several versions ({', '.join(p.name for p in versions)}); pass one of them")
    raise DataError(
        f"{src}/dataset_info.json: file not found; a TFDS-built RLDS directory holds dataset_info.json, "
        "features.json and <name>-<split>.tfrecord-XXXXX-of-YYYYY shards"
    )


def shard_files(root: Path, split: str = "train") -> tuple[str, list[tuple[Path, int | None]]]:
    """The dataset name and ``[(shard path, expected episode count or None)]`` of ``split``."""
    path = root / "dataset_info.json"
    info = read_json(path)
    name = info.get("name") if isinstance(info, dict) else None
    if not isinstance(name, str):
        raise DataError(f"{path}: missing 'name' (the dataset name in shard file names)")
    fmt = info.get("fileFormat", "tfrecord")
    if fmt != "tfrecord":
        raise DataError(f"{path}: fileFormat {fmt!r} is not supported (only 'tfrecord')")
    if not isinstance(info.get("splits", []), list):
        raise DataError(f"{path}: 'splits' must be a list of split objects")
    splits = {s.get("name"): s for s in info.get("splits", []) if isinstance(s, dict)}
    if split not in splits:
        raise DataError(f"{path}: no split {split!r}; splits are {sorted(map(str, splits))}")
    s = splits[split]
    lengths = s.get("shardLengths")
    template = s.get("filepathTemplate", "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}")
    if not lengths:  # older TFDS: no shard lengths, find the files
        pattern = re.compile(rf"{re.escape(name)}-{re.escape(split)}\.tfrecord-\d{{5}}-of-\d{{5}}$")
        files = sorted(p for p in root.iterdir() if pattern.match(p.name))
        if not files:
            raise DataError(f"{root}: no shard files {name}-{split}.tfrecord-XXXXX-of-YYYYY")
        return name, [(p, None) for p in files]
    try:
        counts = [int(n) for n in lengths]
    except (TypeError, ValueError):
        raise DataError(f"{path}: splits[{split}].shardLengths must be integers, got {lengths!r}") from None
    out = []
    for i, count in enumerate(counts):
        fname = (template.replace("{DATASET}", name).replace("{SPLIT}", split).replace("{FILEFORMAT}", fmt)
                 .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{len(counts):05d}"))
        shard = root / fname
        if not shard.is_file():
            raise DataError(f"{shard}: shard file not found (listed in {path}, splits[{split}])")
        out.append((shard, count))
    return name, out


# ============================================================================================
# Episodes
# ============================================================================================
def _decode_image(data: bytes, leaf: RLDSLeaf, where: str) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None:
        raise DataError(f"{where}: {leaf.key}: could not decode a {leaf.encoding} image ({len(data)} bytes)")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[-1] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.shape[-1] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    want = leaf.shape
    if len(want) == 3 and any(w not in (-1, g) for w, g in zip(want, arr.shape)):
        raise DataError(f"{where}: {leaf.key}: decoded image has shape {arr.shape}, features.json says {want}")
    return arr


def _leaf_value(leaf: RLDSLeaf, raw: list[bytes] | np.ndarray, where: str, decode_images: bool) -> np.ndarray:
    """Turn one Example value into an array: [T, *shape] for steps, [*shape] for episode keys."""
    here = f"{where}: {leaf.key}"
    if leaf.kind in ("image", "text") or leaf.dtype == "string":
        if not isinstance(raw, list):
            raise DataError(f"{here}: expected a bytes list for a {leaf.kind} {leaf.dtype} feature")
        if leaf.kind == "image":
            if not decode_images:
                return np.array(raw, dtype=object)
            return np.stack([_decode_image(b, leaf, where) for b in raw]) if raw else np.zeros((0, 0, 0, 3), np.uint8)
        strs = np.array([b.decode("utf-8", errors="replace") for b in raw], dtype=object)
        return _reshape(strs, leaf, here)
    if leaf.encoding != "none":  # each value is one serialised tensor
        if not isinstance(raw, list):
            raise DataError(f"{here}: expected a bytes list for a {leaf.encoding}-encoded tensor")
        try:
            blobs = [zlib.decompress(b) if leaf.encoding == "zlib" else b for b in raw]
            arrs = [np.frombuffer(b, dtype=np.dtype(leaf.dtype).newbyteorder("<")) for b in blobs]
        except (zlib.error, ValueError) as e:
            raise DataError(f"{here}: cannot decode {leaf.encoding}-encoded {leaf.dtype} tensor ({e})") from None
        flat = np.concatenate(arrs) if arrs else np.zeros(0, leaf.dtype)
    else:
        if isinstance(raw, list):
            raise DataError(f"{here}: expected numbers for a {leaf.dtype} tensor, found bytes")
        flat = raw
        floaty = leaf.dtype.startswith("float")
        if floaty != (flat.dtype.kind == "f") and flat.size:
            raise DataError(f"{here}: stored as {flat.dtype} but features.json says {leaf.dtype}")
    return _reshape(flat.astype(leaf.dtype), leaf, here)


def _reshape(flat: np.ndarray, leaf: RLDSLeaf, here: str) -> np.ndarray:
    """[T * prod(shape)] -> [T, *shape] for step features, -> shape for episode features."""
    if -1 in leaf.shape:
        raise DataError(f"{here}: tensors with unknown dimensions {list(leaf.shape)} are not supported")
    per = int(np.prod(leaf.shape))
    if leaf.per_step:
        if (per == 0 and flat.size) or (per and flat.size % per):
            raise DataError(f"{here}: {flat.size} values do not fill whole steps of shape {list(leaf.shape)}")
        return flat.reshape((flat.size // per if per else 0, *leaf.shape))
    if flat.size != per:
        raise DataError(f"{here}: {flat.size} values do not fit shape {list(leaf.shape)}")
    return flat.reshape(leaf.shape)


def read_rlds_episodes(
    src: str | Path,
    split: str = "train",
    max_episodes: int | None = None,
    decode_images: bool = True,
    verify_crc: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield the episodes of an RLDS dataset in shard order (TFDS's ``shuffle_files=False`` order).

    Each episode is a dict keyed by the leaf names of features.json: step features relative to
    the step (``"observation/image"``: uint8 [T, H, W, 3], ``"action"``: float32 [T, 7],
    ``"is_first"``: bool [T], ``"language_instruction"``: object [T] of str), episode features
    by full path (``"episode_metadata/file_path"``: object [] str). Images stay encoded bytes
    (object [T]) when ``decode_images`` is False.
    """
    root = resolve_builder_dir(src)
    schema = load_schema(root)
    _, shards = shard_files(root, split)
    names = schema.by_name()
    if len(names) != len(schema.leaves):
        raise DataError(f"{schema.features_path}: a step key and an episode key share a name")
    done = 0
    for shard, expected in shards:
        count = 0
        for offset, record in iter_tfrecord(shard, verify_crc=verify_crc):
            if max_episodes is not None and done >= max_episodes:
                return
            where = f"{shard} (record at byte offset {offset})"
            try:
                example = parse_example(record)
            except (ValueError, UnicodeDecodeError) as e:
                raise DataError(f"{where}: not a valid tf.train.Example ({e})") from None
            yield _episode(schema, example, where, decode_images)
            count += 1
            done += 1
        if expected is not None and count != expected:
            raise DataError(
                f"{shard}: holds {count} episodes but {root / 'dataset_info.json'} lists {expected} "
                "(truncated or replaced shard)"
            )


def _episode(schema: RLDSSchema, example: dict, where: str, decode_images: bool) -> dict[str, np.ndarray]:
    unknown = sorted(set(example) - set(schema.leaves))
    if unknown:
        raise DataError(f"{where}: key {unknown[0]!r} is not in {schema.features_path}")
    episode: dict[str, np.ndarray] = {}
    length: int | None = None
    for key, leaf in schema.leaves.items():
        if key not in example:  # TFDS writes every key of the schema
            raise DataError(f"{where}: key {key!r} from {schema.features_path} is missing")
        value = _leaf_value(leaf, example[key], where, decode_images)
        if leaf.per_step:
            if length is None:
                length = len(value)
            elif len(value) != length:
                raise DataError(f"{where}: {key} has {len(value)} steps, other step features have {length}")
        episode[leaf.name] = value
    return episode


# ============================================================================================
# The mapping RLDS -> LeRobot
# ============================================================================================
DEFAULT_CAMERAS = {"observation/image": "front", "observation/wrist_image": "wrist", "observation/hand_image": "hand"}
DEFAULT_STATE = ["observation/state", "observation/base_pose_tool_reached", "observation/gripper_closed"]
DEFAULT_ACTION = ["action", "action/world_vector", "action/rotation_delta", "action/gripper_closedness_action"]
DEFAULT_LANGUAGE = ["language_instruction", "observation/natural_language_instruction",
                    "observation/language_instruction"]
DEFAULT_EXTRA = {"reward": "next.reward", "is_terminal": "next.done"}
DEFAULT_IGNORE = [
    "is_first", "is_last", "discount", "episode_metadata/*",
    "language_embedding", "observation/natural_language_embedding",
    # RT-1 (fractal20220817_data) extras besides its state and 7-d arm action
    "action/base_displacement_vector", "action/base_displacement_vertical_rotation", "action/terminate_episode",
    "observation/gripper_closedness_commanded", "observation/height_to_bottom", "observation/orientation_box",
    "observation/orientation_start", "observation/robot_orientation_positions_box",
    "observation/rotation_delta_to_go", "observation/src_rotation", "observation/vector_to_go",
    "observation/workspace_bounds",
]
# Control rates of Open X-Embodiment datasets, by TFDS name (RLDS does not store one).
KNOWN_FPS = {"fractal20220817_data": 3, "bridge": 5, "bridge_dataset": 5}
DEFAULT_FPS = 10


@dataclass
class RLDSMapping:
    """How RLDS step keys become LeRobot features (see the module docstring)."""

    cameras: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CAMERAS))
    state: list[str] = field(default_factory=lambda: list(DEFAULT_STATE))
    action: list[str] = field(default_factory=lambda: list(DEFAULT_ACTION))
    language: list[str] = field(default_factory=lambda: list(DEFAULT_LANGUAGE))
    extra: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_EXTRA))
    ignore: list[str] = field(default_factory=lambda: list(DEFAULT_IGNORE))
    fps: int | None = None
    split: str = "train"
    default_task: str | None = None

    def __post_init__(self):
        for name in ("cameras", "extra"):
            d = getattr(self, name)
            if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in d.items()):
                raise ValueError(f"RLDS mapping '{name}' must map RLDS keys to names (str -> str), got {d!r}")
        for name in ("state", "action", "language", "ignore"):
            v = getattr(self, name)
            if not isinstance(v, list) or not all(isinstance(k, str) for k in v):
                raise ValueError(f"RLDS mapping '{name}' must be a list of RLDS keys, got {v!r}")
        for rlds_key, cam in self.cameras.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", cam):
                raise ValueError(f"RLDS mapping cameras[{rlds_key!r}]: camera name {cam!r} must be [A-Za-z0-9_]+")
        if isinstance(self.fps, float) and self.fps.is_integer():
            self.fps = int(self.fps)
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, int) or self.fps <= 0):
            raise ValueError(f"RLDS mapping 'fps' must be a positive integer (LeRobot stores an int) or null, "
                             f"got {self.fps!r}")
        if not isinstance(self.split, str):
            raise ValueError(f"RLDS mapping 'split' must be a string, got {self.split!r}")
        if self.default_task is not None and (not isinstance(self.default_task, str) or not self.default_task.strip()):
            raise ValueError(f"RLDS mapping 'default_task' must be a non-empty string or null, got {self.default_task!r}")

    @classmethod
    def load(cls, mapping: str | Path | dict | RLDSMapping | None) -> RLDSMapping:
        """From None (defaults), a dict, or a .yaml / .yml / .json file of the same fields."""
        if mapping is None:
            return cls()
        if isinstance(mapping, RLDSMapping):
            return mapping
        where = "RLDS mapping"
        if isinstance(mapping, (str, Path)):
            path = Path(mapping)
            if not path.is_file():
                raise ValueError(f"{path}: RLDS mapping file not found")
            where = str(path)
            try:
                if path.suffix in (".yaml", ".yml"):
                    import yaml

                    mapping = yaml.safe_load(path.read_text()) or {}
                else:
                    mapping = json.loads(path.read_text())
            except Exception as e:  # yaml / json syntax errors of several types
                raise ValueError(f"{path}: cannot parse RLDS mapping ({e})") from None
        if not isinstance(mapping, dict):
            raise ValueError(f"{where}: expected a mapping of fields, got {type(mapping).__name__}")
        valid = [f.name for f in fields(cls)]
        for k in mapping:
            if k not in valid:
                raise ValueError(f"{where}: unknown field {k!r}; valid fields are {valid}")
        try:
            return cls(**mapping)
        except ValueError as e:
            raise ValueError(f"{where}: {e}" if where != "RLDS mapping" else str(e)) from None


@dataclass
class _Plan:
    """A mapping resolved against one dataset's schema."""

    cameras: dict[str, str]  # RLDS name -> LeRobot key
    state: list[str]
    action: list[str]
    language: str | None
    extra: dict[str, str]
    fps: int


def _resolve(mapping: RLDSMapping, schema: RLDSSchema, dataset_name: str) -> _Plan:
    leaves = schema.by_name()
    src = schema.features_path
    present = [k for k in mapping.cameras if k in leaves]
    cams = {k: camera_key(mapping.cameras[k]) for k in present}
    if len(set(cams.values())) != len(cams):
        raise DataError(f"{src}: several RLDS images map to one camera: {cams}; give each its own name in 'cameras'")
    for k in cams:
        if leaves[k].kind != "image" or leaves[k].dtype != "uint8" or not leaves[k].per_step:
            raise DataError(f"{src}: {k} is mapped to a camera but is a {leaves[k].kind} {leaves[k].dtype} "
                            "feature; cameras must be uint8 step images")
    state = [k for k in mapping.state if k in leaves]
    action = [k for k in mapping.action if k in leaves]
    for k in state + action:
        leaf = leaves[k]
        if leaf.kind != "tensor" or leaf.dtype == "string" or not leaf.per_step:
            raise DataError(f"{src}: {k} ({leaf.kind} {leaf.dtype}) cannot go into state/action: "
                            "only numeric step tensors can")
    langs = [k for k in mapping.language if k in leaves]
    for k in langs:
        if leaves[k].kind != "text" and leaves[k].dtype != "string":
            raise DataError(f"{src}: language key {k} is a {leaves[k].dtype} {leaves[k].kind}, not text")
    extra = {k: v for k, v in mapping.extra.items() if k in leaves}
    for k in extra:
        if leaves[k].kind != "tensor" or leaves[k].dtype == "string" or not leaves[k].per_step:
            raise DataError(f"{src}: extra key {k} must be a numeric step tensor")
    covered = set(cams) | set(state) | set(action) | set(langs) | set(extra)
    for name in leaves:
        if name not in covered and not any(fnmatch.fnmatchcase(name, p) for p in mapping.ignore):
            where = "step" if leaves[name].per_step else "episode"
            raise DataError(
                f"{src}: RLDS {where} feature {name!r} ({leaves[name].kind} {leaves[name].dtype} "
                f"{list(leaves[name].shape)}) is not covered by the mapping; map it (cameras / state / "
                f"action / language / extra) or add it to 'ignore'"
            )
    if not action:
        raise DataError(f"{src}: none of the mapping's action keys {mapping.action} is in the dataset; "
                        f"set 'action' to the RLDS action keys (step keys: {sorted(leaves)})")
    fps = mapping.fps or KNOWN_FPS.get(dataset_name, DEFAULT_FPS)
    return _Plan(cams, state, action, langs[0] if langs else None, extra, fps)


def _dim_names(keys: list[str], leaves: dict[str, RLDSLeaf]) -> list[str]:
    names = []
    for k in keys:
        base = k.split("/")[-1]
        n = int(np.prod(leaves[k].shape)) if leaves[k].shape else 1
        names += [base] if n == 1 else [f"{base}_{i}" for i in range(n)]
    return names


def _features(plan: _Plan, leaves: dict[str, RLDSLeaf], first: dict[str, np.ndarray], use_videos: bool) -> FeatureSpec:
    feats: FeatureSpec = {}
    for name, key in plan.cameras.items():
        shape = first[name].shape[1:]
        if len(shape) != 3 or shape[-1] not in (1, 3):
            raise DataError(f"{name}: camera images must be [H, W, 3] (or 1 channel), got {list(shape)}")
        feats[key] = Feature("video" if use_videos else "image", (shape[0], shape[1], 3), ["height", "width", "channels"])
    if plan.state:
        names = _dim_names(plan.state, leaves)
        feats[OBS_STATE] = Feature("float32", (len(names),), names)
    names = _dim_names(plan.action, leaves)
    feats[ACTION] = Feature("float32", (len(names),), names)
    for rlds_key, key in plan.extra.items():
        dtype = "bool" if leaves[rlds_key].dtype == "bool" else "float32"
        feats[key] = Feature(dtype, (1,), None) if leaves[rlds_key].shape in ((), (1,)) else Feature(
            "float32", (int(np.prod(leaves[rlds_key].shape)),), None)
    return feats


def _frames(plan: _Plan, ep: dict[str, np.ndarray], length: int, default_task: str,
            feats: FeatureSpec, where: str) -> Iterator[dict[str, Any]]:
    def cat(keys: list[str]) -> np.ndarray:
        return np.concatenate([ep[k].reshape(length, -1).astype(np.float32) for k in keys], axis=1)

    state = cat(plan.state) if plan.state else None
    action = cat(plan.action)
    images = {}
    for name, key in plan.cameras.items():
        img = ep[name]
        if img.shape[1:3] != feats[key].shape[:2]:
            raise DataError(f"{where}: {name} images are {img.shape[1:3]}, earlier episodes had {feats[key].shape[:2]}")
        images[key] = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img
    if plan.language is None:
        tasks = [default_task] * length
    else:
        lang = ep[plan.language]
        tasks = [str(lang[t] if lang.ndim else lang).strip() or default_task for t in range(length)]
    extras = {key: ep[k].reshape(length, -1).astype(np.bool_ if feats[key].dtype == "bool" else np.float32)
              for k, key in plan.extra.items()}
    for t in range(length):
        frame: dict[str, Any] = {k: v[t] for k, v in images.items()}
        if state is not None:
            frame[OBS_STATE] = state[t]
        frame[ACTION] = action[t]
        frame.update({k: v[t] for k, v in extras.items()})
        frame[TASK] = tasks[t]
        yield frame


def _is_within(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def convert_rlds(
    src: str | Path,
    dst: str | Path,
    mapping: str | Path | dict | None = None,
    max_episodes: int | None = None,
    use_videos: bool = True,
    overwrite: bool = False,
) -> Path:
    """Convert an RLDS (TFDS) dataset directory into a LeRobot v3 dataset at ``dst``.

    The whole mapping is checked against features.json before anything is written. The dataset
    is written into a temporary sibling of ``dst`` and moved into place only when complete, so
    a failure leaves ``dst`` as it was. An existing non-empty ``dst`` is refused
    (``FileExistsError``) unless ``overwrite``; it is then replaced only after success.
    Returns ``dst``.
    """
    from tqdm import tqdm

    root = resolve_builder_dir(src)
    dst = Path(dst)
    plan_mapping = RLDSMapping.load(mapping)
    schema = load_schema(root)
    name, _ = shard_files(root, plan_mapping.split)
    plan = _resolve(plan_mapping, schema, name)
    if max_episodes is not None and max_episodes < 1:
        raise ValueError(f"max_episodes must be >= 1 or None, got {max_episodes}")
    if _is_within(dst, root) or _is_within(root, dst):
        raise ValueError(f"destination {dst} overlaps the RLDS source {root}; choose another directory")
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"{dst}: exists and is not a directory")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst}: directory exists and is not empty; pass overwrite=True to replace it")

    from policystack.datasets.writer import DatasetWriter

    leaves = schema.by_name()
    episodes = read_rlds_episodes(root, plan_mapping.split, max_episodes)
    tmp = dst.parent / f".{dst.name}.rlds-tmp-{uuid.uuid4().hex[:8]}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        # the writer's context finalizes on success and closes (keeping nothing) on an error
        with contextlib.ExitStack() as stack:
            writer = None
            feats: FeatureSpec = {}
            written = 0
            total = max_episodes if max_episodes is not None else _episode_count(root, plan_mapping.split)
            for i, ep in enumerate(tqdm(episodes, total=total, desc=f"convert {name}", unit="episode")):
                length = len(ep[plan.action[0]])
                if length == 0:
                    log.warning("%s: episode %d has no steps; skipped", root, i)
                    continue
                if writer is None:
                    feats = _features(plan, leaves, ep, use_videos)
                    writer = stack.enter_context(DatasetWriter.create(
                        tmp, fps=plan.fps, features=feats, robot_type=None, use_videos=use_videos))
                default_task = plan_mapping.default_task or name
                for t, frame in enumerate(_frames(plan, ep, length, default_task, feats, f"{root} episode {i}")):
                    try:
                        writer.add_frame(frame)
                    except DataError as e:  # e.g. NaN in an action: say where it came from
                        raise DataError(f"{root}: episode {i} (in shard order), step {t}: {e}") from None
                writer.save_episode()
                written += 1
            if writer is None:
                raise DataError(f"{root}: split {plan_mapping.split!r} holds no non-empty episodes")
        _move_into_place(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %d episodes of %s into %s", written, root, dst)
    return dst


def _episode_count(root: Path, split: str) -> int | None:
    _, shards = shard_files(root, split)
    counts = [n for _, n in shards]
    return None if any(n is None for n in counts) else sum(counts)


def _move_into_place(tmp: Path, dst: Path) -> None:
    """Replace ``dst`` with ``tmp``; an old ``dst`` is removed only once the new one is in place."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
    try:
        os.replace(tmp, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)
        raise
    fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
