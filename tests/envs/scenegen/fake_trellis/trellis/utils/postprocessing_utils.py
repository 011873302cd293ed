"""Fake ``trellis.utils.postprocessing_utils.to_glb``: a trimesh in glTF's y-up frame, as TRELLIS returns."""

import numpy as np
import trimesh

from trellis.pipelines import CALLS


def to_glb(app_rep, mesh, simplify: float = 0.95, texture_size: int = 1024, verbose: bool = True) -> trimesh.Trimesh:
    CALLS.append(("to_glb", simplify))
    vertices = mesh.vertices.numpy() @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])  # z-up -> y-up, as TRELLIS
    return trimesh.Trimesh(vertices, mesh.faces.numpy(), process=False)
