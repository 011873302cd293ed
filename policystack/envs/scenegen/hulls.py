"""Convex decomposition of a watertight solid into collision hulls (CoACD).

MuJoCo collides a mesh geom through its convex hull, so a concave object (a mug, a bowl) needs
several convex pieces. CoACD cuts the solid along planes until every piece is within
``threshold`` (its concavity metric, relative to the object's size) of its own hull.
A solid already this close to convex skips CoACD and becomes one hull.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import trimesh

from policystack.envs.scenegen.mesh import MeshError, convex_hull


@dataclass(frozen=True)
class HullConfig:
    """CoACD settings. The defaults trade a little fidelity for speed on two CPU cores (a mug:
    about 10-16 hulls in a few seconds); CoACD's own defaults are threshold 0.05, resolution 2000,
    mcts_nodes 20, mcts_iterations 150."""

    threshold: float = 0.08  # concavity allowed per hull (CoACD metric; lower: more, tighter hulls)
    max_hulls: int = 24  # merge down to at most this many hulls (-1: no limit)
    resolution: int = 1000  # CoACD sampling resolution
    mcts_nodes: int = 10
    mcts_iterations: int = 60
    max_hull_vertices: int = 128  # vertices per hull after CoACD's simplification
    convex_ratio: float = 0.97  # volume / hull volume at or above this: one hull, no CoACD
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold}: expected a concavity in (0, 1], e.g. 0.05-0.1")
        if self.max_hulls == 0 or self.max_hulls < -1:
            raise ValueError(f"max_hulls={self.max_hulls}: expected a positive count or -1 (no limit)")
        if self.resolution < 100 or self.mcts_nodes < 1 or self.mcts_iterations < 1:
            raise ValueError("resolution >= 100, mcts_nodes >= 1 and mcts_iterations >= 1 expected, got "
                             f"{self.resolution}, {self.mcts_nodes}, {self.mcts_iterations}")
        if self.max_hull_vertices < 4:
            raise ValueError(f"max_hull_vertices={self.max_hull_vertices}: a hull needs at least 4 vertices")
        if not 0.0 < self.convex_ratio <= 1.0:
            raise ValueError(f"convex_ratio={self.convex_ratio}: expected a fraction in (0, 1]")

    def as_dict(self) -> dict:
        return asdict(self)


def decompose(solid: trimesh.Trimesh, cfg: HullConfig, what: str) -> list[trimesh.Trimesh]:
    """Convex hulls covering ``solid`` (watertight, metres), each a closed convex Trimesh.
    Pieces too thin to span a volume (CoACD can return slivers) are dropped."""
    hull = convex_hull(solid.vertices, what)
    if solid.volume >= cfg.convex_ratio * hull.volume:
        return [hull]
    import coacd

    coacd.set_log_level("error")
    parts = coacd.run_coacd(
        coacd.Mesh(np.asarray(solid.vertices, np.float64), np.asarray(solid.faces, np.int64)),
        threshold=cfg.threshold, max_convex_hull=cfg.max_hulls, preprocess_mode="off",
        resolution=cfg.resolution, mcts_nodes=cfg.mcts_nodes, mcts_iterations=cfg.mcts_iterations,
        max_ch_vertex=cfg.max_hull_vertices, decimate=True, seed=cfg.seed)
    hulls = []
    for verts, _ in parts:
        try:
            hulls.append(convex_hull(verts, what))
        except MeshError:
            continue  # a flat sliver: nothing to collide with
    if not hulls:
        raise MeshError(f"{what}: convex decomposition produced no hull with a volume")
    return hulls
