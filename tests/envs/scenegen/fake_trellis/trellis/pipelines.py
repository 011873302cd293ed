"""Fake ``trellis.pipelines``: TrellisTextTo3DPipeline / TrellisImageTo3DPipeline."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

CALLS: list[tuple] = []  # (method, argument) in call order, for the tests


class _Pipeline:
    def __init__(self, path: str):
        self.path = Path(path)

    @classmethod
    def from_pretrained(cls, path: str):
        CALLS.append(("from_pretrained", path))
        return cls(path)

    def cuda(self):
        CALLS.append(("cuda", None))
        return self

    def get_cond(self, prompts: list):
        CALLS.append(("get_cond", prompts[0]))
        return {"cond": prompts[0], "neg_cond": None}

    def sample_sparse_structure(self, cond: dict, num_samples: int = 1, sampler_params: dict | None = None):
        CALLS.append(("sample_sparse_structure", num_samples))
        with np.load(self.path / "slat.npz") as f:
            return torch.from_numpy(f["coords"]).int()

    def sample_slat(self, cond: dict, coords: torch.Tensor, sampler_params: dict | None = None):
        CALLS.append(("sample_slat", int(coords.shape[0])))
        with np.load(self.path / "slat.npz") as f:
            feats = torch.from_numpy(f["feats"]).float()
        return SimpleNamespace(coords=coords, feats=feats)

    def decode_slat(self, slat, formats: list[str]):
        """The mesh decoder's output: vertices / faces of the occupied voxels' surface, z up, in the unit cube."""
        from skimage import measure

        CALLS.append(("decode_slat", tuple(formats)))
        occ = np.zeros((66, 66, 66), np.float32)
        xyz = slat.coords[:, 1:].numpy() + 1
        occ[tuple(xyz.T)] = 1.0
        from scipy import ndimage

        occ = ndimage.binary_fill_holes(occ).astype(np.float32)
        verts, faces, _, _ = measure.marching_cubes(occ, 0.5)
        verts = (verts - 0.5) / 64.0 - 0.5
        mesh = SimpleNamespace(vertices=torch.from_numpy(verts.copy()), faces=torch.from_numpy(faces[:, ::-1].copy()))
        return {"mesh": [mesh], "gaussian": [SimpleNamespace(kind="gaussians")]}


class TrellisTextTo3DPipeline(_Pipeline):
    pass


class TrellisImageTo3DPipeline(_Pipeline):
    def preprocess_image(self, image):
        CALLS.append(("preprocess_image", image.size))
        return image
