"""TRELLIS adapter: text or an image -> TRELLIS -> SLAT + GLB -> the asset pipeline.

TRELLIS (microsoft/TRELLIS) needs a CUDA GPU, its compiled extensions (spconv, xformers or
flash-attn, nvdiffrast, kaolin, diff-gaussian-rasterization) and its weights in a local directory
(``TRELLIS-text-large`` / ``TRELLIS-image-large`` downloaded beforehand: this project never
downloads at run time). Where ``import trellis`` works, :func:`generate_trellis` runs its
pipeline in the steps of ``Trellis*To3DPipeline.run``::

    cond = pipeline.get_cond([prompt])                       # or [pipeline.preprocess_image(image)]
    torch.manual_seed(seed)
    coords = pipeline.sample_sparse_structure(cond, 1)       # int32 [N, 4] on the 64^3 grid
    slat = pipeline.sample_slat(cond, coords)                # SparseTensor: coords, feats [N, 8]
    out = pipeline.decode_slat(slat, ["mesh", "gaussian"])
    glb = postprocessing_utils.to_glb(out["gaussian"][0], out["mesh"][0])

keeps ``slat.npz`` (the format of ``scenegen.slat``) and ``object.glb`` in ``out_dir``, and imports
the GLB (y-up) like any mesh file. Elsewhere it raises :class:`TrellisUnavailable` saying what to
install; ``policystack scene slat FILE.npz`` imports a SLAT made on another machine.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from policystack.envs.scenegen.asset import DEFAULT_CACHE, Asset, AssetConfig, build_asset, slug
from policystack.envs.scenegen.imports import file_sha256
from policystack.envs.scenegen.mesh import Solid, load_mesh, make_solid

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
INSTALL_HINT = (
    "TRELLIS is not importable here ({error}). It needs a CUDA GPU: clone https://github.com/microsoft/TRELLIS, "
    "run its `. ./setup.sh --basic --xformers --flash-attn --diffoctreerast --spconv --mipgaussian --kaolin "
    "--nvdiffrast`, put the repository on PYTHONPATH, and download TRELLIS-text-large (text) or "
    "TRELLIS-image-large (images) to a local directory passed as model=DIR. Without a GPU, make a SLAT file "
    "on a machine that has one and import it with `policystack scene slat FILE.npz`, or use the offline "
    "generator `policystack scene generate \"a red mug\"`."
)


class TrellisUnavailable(ImportError):
    """TRELLIS cannot run in this environment; the message says what to install."""


def load_trellis():
    """(pipelines module, postprocessing_utils module) of an importable TRELLIS, else TrellisUnavailable."""
    try:
        pipelines = importlib.import_module("trellis.pipelines")
        post = importlib.import_module("trellis.utils.postprocessing_utils")
    except ImportError as e:
        raise TrellisUnavailable(INSTALL_HINT.format(error=f"{type(e).__name__}: {e}")) from None
    return pipelines, post


def trellis_available() -> bool:
    try:
        load_trellis()
    except TrellisUnavailable:
        return False
    return True


def generate_trellis(prompt: str | Path, model: str | Path, cfg: AssetConfig | None = None,
                     cache_dir: str | Path | None = None, seed: int = 0, out_dir: str | Path | None = None,
                     name: str | None = None) -> Asset:
    """Text (or an image file) -> TRELLIS -> simulator asset, cached by the prompt (or the image's
    bytes), the model directory, the seed and ``cfg``. ``cfg.size`` defaults to 0.1 m (TRELLIS
    objects fill a unit cube); TRELLIS meshes are rarely closed, so watertight="voxel" is the
    usual choice. The SLAT and the GLB go to ``out_dir`` (default: beside the cache)."""
    pipelines, post = load_trellis()
    model = Path(model)
    if not (model / "pipeline.json").is_file():
        raise FileNotFoundError(f"model={model}: expected a downloaded TRELLIS model directory with pipeline.json")
    cfg = cfg or AssetConfig()
    if cfg.size is None and cfg.scale is None:
        cfg = replace(cfg, size=0.1)
    image = Path(prompt) if str(prompt).lower().endswith(IMAGE_SUFFIXES) else None
    if image is not None and not image.is_file():
        raise FileNotFoundError(f"{image}: image file not found")
    source = {"kind": "trellis", "model": model.name, "pipeline": file_sha256(model / "pipeline.json"), "seed": seed,
              **({"image_sha256": file_sha256(image)} if image else {"prompt": str(prompt)})}
    name = name or (image.stem if image else str(prompt))
    key = hashlib.sha256(repr(sorted(source.items())).encode()).hexdigest()[:16]
    out = Path(out_dir) if out_dir is not None else (Path(cache_dir) if cache_dir else DEFAULT_CACHE) / "trellis" / f"{slug(name)}-{key}"

    def make() -> tuple[Solid, None]:
        glb = run_trellis(pipelines, post, model, prompt if image is None else image, seed, out)
        return make_solid(load_mesh(glb, up="y", max_faces=cfg.max_faces), cfg.watertight, str(glb)), None

    return build_asset(name, source, cfg, make, cache_dir, what=f"TRELLIS output for {name!r}")


def run_trellis(pipelines, post, model: Path, prompt: str | Path, seed: int, out: Path) -> Path:
    """Run the pipeline once; write ``out/slat.npz`` and ``out/object.glb``; return the GLB's path."""
    import io

    import torch

    from policystack.io import atomic_write_bytes

    if isinstance(prompt, Path):
        from PIL import Image

        pipeline = pipelines.TrellisImageTo3DPipeline.from_pretrained(str(model))
        pipeline.cuda()
        cond = pipeline.get_cond([pipeline.preprocess_image(Image.open(prompt))])
    else:
        pipeline = pipelines.TrellisTextTo3DPipeline.from_pretrained(str(model))
        pipeline.cuda()
        cond = pipeline.get_cond([prompt])
    torch.manual_seed(seed)
    with torch.no_grad():
        coords = pipeline.sample_sparse_structure(cond, 1)
        slat = pipeline.sample_slat(cond, coords)
        decoded = pipeline.decode_slat(slat, ["mesh", "gaussian"])
    buf = io.BytesIO()
    np.savez_compressed(buf, coords=slat.coords.cpu().numpy().astype(np.int32),
                        feats=slat.feats.float().cpu().numpy().astype(np.float32))
    atomic_write_bytes(out / "slat.npz", buf.getvalue())
    glb = post.to_glb(decoded["gaussian"][0], decoded["mesh"][0], simplify=0.95, texture_size=1024, verbose=False)
    atomic_write_bytes(out / "object.glb", glb.export(file_type="glb"))
    return out / "object.glb"
