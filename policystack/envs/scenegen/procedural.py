"""The offline generator: a short text prompt ("a red mug", "a small blue bottle", "a yellow bowl",
"a green banana") -> a procedural mesh -> the asset pipeline. Works on any machine, no weights.

A prompt is a few words: an optional article, any size words, at most one colour, and one object
noun. Unknown words are refused with the vocabulary, so a prompt never silently means something
else.

Shapes are built with manifold3d (always closed 2-manifolds): lathed profiles (mug, cup, bowl,
bottle, can, apple, pear, carrot, vase, cone), boxes, spheres, a torus (donut), hulls of sphere
chains (banana) and booleans (the mug's handle is half a torus joined to the lathed body). Each
shape also knows where a gripper holds it (a :class:`GraspHint`). Sizes are metres at "medium".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import trimesh

from policystack.envs.scenegen.asset import COLOURS, Asset, AssetConfig, GraspHint, build_asset
from policystack.envs.scenegen.mesh import Solid

ARTICLES = ("a", "an", "the", "one")
# size word -> (footprint scale, height scale)
SIZES: dict[str, tuple[float, float]] = {
    "tiny": (0.55, 0.55), "small": (0.8, 0.8), "little": (0.8, 0.8), "medium": (1.0, 1.0),
    "large": (1.25, 1.25), "big": (1.25, 1.25), "tall": (1.0, 1.3), "short": (1.0, 0.75),
    "wide": (1.25, 1.0), "fat": (1.25, 1.0), "thin": (0.8, 1.0), "slim": (0.8, 1.0), "narrow": (0.8, 1.0),
}
SEGMENTS = 48  # around a lathed profile
GENERATOR_VERSION = 3  # part of the cache key of generated assets: bump when a shape changes


class PromptError(ValueError):
    """A prompt the generator does not understand; the message lists what it does understand."""


@dataclass(frozen=True)
class Prompt:
    """A parsed prompt: the object noun, its colour name (None: the noun's usual colour) and the
    footprint / height scale factors from the size words."""

    shape: str
    colour: str | None
    sxy: float
    sz: float

    @property
    def name(self) -> str:
        """Canonical wording, e.g. "small blue bottle"."""
        size = ("" if (self.sxy, self.sz) == (1.0, 1.0) else
                next((w for w, s in SIZES.items() if s == (self.sxy, self.sz)), f"{self.sxy:g}x{self.sz:g}"))
        return " ".join(w for w in (size, self.colour or SHAPES[self.shape].colour, self.shape) if w)


# --- shape building blocks ----------------------------------------------------------------------------
def _m3():
    import manifold3d

    return manifold3d


def lathe(profile: list[tuple[float, float]], segments: int = SEGMENTS):
    """Revolve a closed (r, z) polygon about the z axis (r >= 0)."""
    m3 = _m3()
    return m3.Manifold.revolve(m3.CrossSection([[(float(r), float(z)) for r, z in profile]]), segments)


def _arc(r0: float, z0: float, r1: float, z1: float, bulge: float, n: int = 8) -> list[tuple[float, float]]:
    """Points from (r0, z0) to (r1, z1) (end excluded) bowed outwards by ``bulge`` (m) at the middle."""
    t = np.linspace(0.0, 1.0, n, endpoint=False)
    r = r0 + (r1 - r0) * t + bulge * np.sin(np.pi * t)
    z = z0 + (z1 - z0) * t
    return list(zip(r, z))


def _shell(r_bottom: float, r_top: float, height: float, wall: float, floor: float, bulge: float = 0.0):
    """An open-topped vessel: outer wall from (r_bottom, 0) to (r_top, height), a wall ``wall`` thick,
    a floor ``floor`` thick, the outer wall bowed by ``bulge``."""
    outer = [(0.0, 0.0)] + _arc(r_bottom, 0.0, r_top, height, bulge)
    inner = _arc(r_top - wall, height, r_bottom - wall, floor, bulge)
    return lathe(outer + [(r_top, height)] + inner + [(r_bottom - wall, floor), (0.0, floor)])


def _radius_profile(radius: Callable[[np.ndarray], np.ndarray], height: float, n: int = 32
                    ) -> list[tuple[float, float]]:
    """(r, z) points of a surface of revolution r = radius(z), z from 0 to ``height``."""
    z = np.linspace(0.0, height, n)
    return list(zip(np.maximum(radius(z), 1e-4), z))


def _solid_of(radius: Callable[[np.ndarray], np.ndarray], height: float, n: int = 32):
    """A closed solid of revolution, flat at the bottom (r = radius(0)) and the top."""
    return lathe([(0.0, 0.0)] + _radius_profile(radius, height, n) + [(0.0, height)])


def _vessel_of(radius: Callable[[np.ndarray], np.ndarray], height: float, wall: float, floor: float, n: int = 32):
    """An open-topped vessel whose outer wall is r = radius(z) and whose inner wall is ``wall`` inside it."""
    outer = _radius_profile(radius, height, n)
    z = np.linspace(height, floor, n)
    inner = list(zip(np.maximum(radius(z) - wall, 1e-4), z))
    return lathe([(0.0, 0.0)] + outer + inner + [(0.0, floor)])


def _to_trimesh(m) -> trimesh.Trimesh:
    mesh = m.to_mesh()
    return trimesh.Trimesh(np.asarray(mesh.vert_properties, np.float64)[:, :3], np.asarray(mesh.tri_verts, np.int64),
                           process=False)


def _torus(ring: float, tube: float, segments: int = 32):
    m3 = _m3()
    return m3.Manifold.revolve(m3.CrossSection.circle(tube, 16).translate((ring, 0.0)), segments)


# --- shapes: (sxy, sz) -> (manifold, grasp hint in the shape's frame) ----------------------------------
def mug(sxy: float, sz: float):
    m3 = _m3()
    r, h = 0.032 * sxy, 0.085 * sz
    body = _shell(r, r, h, 0.005 * sxy, 0.008 * sz)
    ring, tube = 0.022 * min(sxy, sz), 0.0065 * min(sxy, sz)
    handle = _torus(ring, tube).rotate((90.0, 0.0, 0.0)).translate((r, 0.0, 0.5 * h))
    keep = m3.Manifold.cube((ring + tube + 0.01, 2 * (ring + tube), 2 * (ring + tube) + 0.01)).translate(
        (r - 0.002, -(ring + tube), 0.5 * h - ring - tube - 0.005))
    return body + (handle ^ keep), GraspHint((0.0, 0.0, 0.6 * h), np.pi / 2)


def cup(sxy: float, sz: float):
    h = 0.08 * sz
    return _shell(0.025 * sxy, 0.033 * sxy, h, 0.0045 * sxy, 0.007 * sz), GraspHint((0.0, 0.0, 0.55 * h), 0.0)


def bowl(sxy: float, sz: float):
    r, h = 0.06 * sxy, 0.045 * sz
    outer = [(0.0, 0.0), (0.028 * sxy, 0.0)] + _arc(0.03 * sxy, 0.003 * sz, r, h, 0.012 * sxy)
    inner = _arc(r - 0.005 * sxy, h, 0.026 * sxy, 0.008 * sz, 0.012 * sxy)
    shape = lathe(outer + [(r, h)] + inner + [(0.024 * sxy, 0.007 * sz), (0.0, 0.007 * sz)])
    return shape, GraspHint((r - 0.0025 * sxy, 0.0, 0.7 * h), 0.0)  # pinch the rim


def bottle(sxy: float, sz: float):
    r, body, neck, h = 0.028 * sxy, 0.09 * sz, 0.011 * sxy, 0.15 * sz
    profile = ([(0.0, 0.0), (r - 0.003 * sxy, 0.0), (r, 0.003 * sz), (r, body)]
               + _arc(r, body, neck, body + 0.035 * sz, 0.006 * sxy)[1:]
               + [(neck, h - 0.012 * sz), (neck + 0.002 * sxy, h - 0.012 * sz), (neck + 0.002 * sxy, h), (0.0, h)])
    return lathe(profile), GraspHint((0.0, 0.0, 0.5 * body), 0.0)


def can(sxy: float, sz: float):
    r, h, e = 0.03 * sxy, 0.1 * sz, 0.003
    profile = [(0.0, 0.0), (r - e, 0.0), (r, e), (r, h - e), (r - e, h), (0.0, h)]
    return lathe(profile), GraspHint((0.0, 0.0, 0.55 * h), 0.0)


def vase(sxy: float, sz: float):
    h = 0.14 * sz

    def radius(z):
        t = z / h
        return sxy * (0.017 + 0.016 * np.sin(np.pi * np.minimum(t / 0.8, 1.0)) + 0.012 * np.clip((t - 0.8) / 0.2, 0, 1) ** 2)

    return _vessel_of(radius, h, 0.004 * sxy, 0.01 * sz), GraspHint((0.0, 0.0, 0.35 * h), 0.0)


def block(sxy: float, sz: float):
    m3 = _m3()
    a, h = 0.05 * sxy, 0.05 * sz
    return m3.Manifold.cube((a, a, h), True).translate((0.0, 0.0, h / 2)), GraspHint((0.0, 0.0, 0.5 * h), 0.0)


def ball(sxy: float, sz: float):
    m3 = _m3()
    r = 0.03 * sxy
    shape = m3.Manifold.sphere(r, SEGMENTS).scale((1.0, 1.0, sz / sxy)).translate((0.0, 0.0, r * sz / sxy))
    return shape, GraspHint((0.0, 0.0, r * sz / sxy), 0.0)


def apple(sxy: float, sz: float):
    """A round fruit on a small flat base, a dimple and a stem on top."""
    m3 = _m3()
    r, h = 0.036 * sxy, 0.068 * sz

    def radius(z):
        return r * (0.3 + 0.7 * np.sin(np.pi * np.clip(z / h, 0, 1)) ** 0.6)

    body = _solid_of(radius, h)
    dimple = m3.Manifold.sphere(0.012 * sxy, 24).scale((1.0, 1.0, 0.5)).translate((0.0, 0.0, h))
    stem = m3.Manifold.cylinder(0.016 * sz, 0.0025 * sxy, 0.002 * sxy, 8).translate((0.0, 0.0, h - 0.006 * sz))
    return (body - dimple) + stem, GraspHint((0.0, 0.0, 0.45 * h), 0.0)


def pear(sxy: float, sz: float):
    """A bulb below and a narrower neck above, blended into one smooth profile with a rounded top
    (no stem: balanced on one, an upside-down pear would take seconds to topple)."""
    h = 0.095 * sz

    def radius(z):
        t = z / h
        bulb = np.sqrt(np.clip(1.0 - ((t - 0.32) / 0.36) ** 2, 0, 1)) * 0.033
        neck = np.sqrt(np.clip(1.0 - ((t - 0.7) / 0.3) ** 2, 0, 1)) * 0.02
        return sxy * np.maximum(np.maximum(bulb, neck), 0.012 * (1 - np.abs(2 * t - 1)))

    return _solid_of(radius, h, 40), GraspHint((0.0, 0.0, 0.32 * h), 0.0)


def cone(sxy: float, sz: float):
    m3 = _m3()
    h = 0.07 * sz
    return m3.Manifold.cylinder(h, 0.035 * sxy, 0.002, SEGMENTS), GraspHint((0.0, 0.0, 0.3 * h), 0.0)


def donut(sxy: float, sz: float):
    tube = 0.012 * sz
    shape = _torus(0.028 * sxy, tube).scale((1.0, 1.0, 1.0)).translate((0.0, 0.0, tube))
    return shape, GraspHint((0.028 * sxy, 0.0, tube), 0.0)  # pinch the ring on one side


def banana(sxy: float, sz: float):
    """A tapered tube along a circular arc, lying on the table (hulls of consecutive spheres)."""
    m3 = _m3()
    radius, span, n = 0.09 * sxy, np.deg2rad(80.0), 12
    angles = np.linspace(-span / 2, span / 2, n)
    thick = 0.02 * sz
    tube = thick * (0.35 + 0.65 * np.sin(np.linspace(0.0, np.pi, n)) ** 0.6)
    spheres = [m3.Manifold.sphere(float(t), 20).translate((float(radius * np.cos(a)), float(radius * np.sin(a)),
                                                                    float(thick)))
               for a, t in zip(angles, tube)]
    pieces = [m3.Manifold.batch_hull([a, b]) for a, b in zip(spheres[:-1], spheres[1:])]
    shape = m3.Manifold.batch_boolean(pieces, m3.OpType.Add)
    return shape, GraspHint((radius, 0.0, thick), 0.0)  # across the tube at the middle (radial = x)


def carrot(sxy: float, sz: float):
    """A tapered root lying along x (its thick end at -x)."""
    length, r = 0.12 * sxy, 0.02 * sz
    profile = [(0.0, 0.0), (0.004 * sz, 0.0)] + _arc(0.006 * sz, 0.004, r, 0.8 * length, 0.003 * sz) + [
        (r, 0.8 * length), (0.9 * r, length), (0.0, length)]
    shape = lathe(profile, 24).rotate((0.0, -90.0, 0.0)).translate((0.5 * length, 0.0, r))
    com_x = float(_to_trimesh(shape).center_mass[0])  # held at its centre of mass: it does not pivot
    return shape, GraspHint((com_x, 0.0, r), np.pi / 2)


@dataclass(frozen=True)
class ShapeSpec:
    build: Callable[[float, float], tuple]
    colour: str  # the usual colour when the prompt names none
    aliases: tuple[str, ...] = ()


SHAPES: dict[str, ShapeSpec] = {
    "mug": ShapeSpec(mug, "white", ("mugs",)),
    "cup": ShapeSpec(cup, "white", ("cups", "glass", "tumbler")),
    "bowl": ShapeSpec(bowl, "white", ("bowls",)),
    "bottle": ShapeSpec(bottle, "green", ("bottles", "flask")),
    "can": ShapeSpec(can, "grey", ("cans", "tin")),
    "vase": ShapeSpec(vase, "blue", ("vases",)),
    "block": ShapeSpec(block, "red", ("blocks", "box", "cube", "brick")),
    "ball": ShapeSpec(ball, "red", ("balls", "sphere")),
    "apple": ShapeSpec(apple, "red", ("apples",)),
    "pear": ShapeSpec(pear, "green", ("pears",)),
    "cone": ShapeSpec(cone, "orange", ("cones",)),
    "donut": ShapeSpec(donut, "brown", ("doughnut", "ring", "torus")),
    "banana": ShapeSpec(banana, "yellow", ("bananas",)),
    "carrot": ShapeSpec(carrot, "orange", ("carrots",)),
}
_NOUNS = {alias: name for name, s in SHAPES.items() for alias in (name, *s.aliases)}


def parse_prompt(prompt: str) -> Prompt:
    """"a small blue bottle" -> Prompt("bottle", "blue", 0.8, 0.8). Raises PromptError."""
    words = [w for w in prompt.lower().replace(",", " ").replace("-", " ").split() if w]
    if not words:
        raise PromptError("empty prompt; describe an object, e.g. \"a red mug\"")
    shape, colour, sxy, sz = None, None, 1.0, 1.0
    for w in words:
        if w in ARTICLES:
            continue
        if w in COLOURS:
            if colour is not None:
                raise PromptError(f"prompt {prompt!r}: two colours ({colour}, {w}); an object has one colour here")
            colour = w
        elif w in SIZES:
            sxy, sz = sxy * SIZES[w][0], sz * SIZES[w][1]
        elif w in _NOUNS:
            if shape is not None:
                raise PromptError(f"prompt {prompt!r}: two objects ({shape}, {_NOUNS[w]}); generate one at a time")
            shape = _NOUNS[w]
        else:
            raise PromptError(f"prompt {prompt!r}: unknown word {w!r}. Objects: {', '.join(SHAPES)}; colours: "
                              f"{', '.join(COLOURS)}; sizes: {', '.join(SIZES)}")
    if shape is None:
        raise PromptError(f"prompt {prompt!r} names no object; objects: {', '.join(SHAPES)}")
    return Prompt(shape, colour, round(sxy, 4), round(sz, 4))


def shape_solid(p: Prompt) -> tuple[Solid, GraspHint]:
    """The watertight mesh and grasp hint of a parsed prompt (no cache, no hulls)."""
    manifold, hint = SHAPES[p.shape].build(p.sxy, p.sz)
    mesh = _to_trimesh(manifold)
    return Solid(mesh, mesh), hint


def generate(prompt: str, cfg: AssetConfig | None = None, cache_dir: str | Path | None = None) -> Asset:
    """Text prompt -> simulator asset (cached). The prompt's colour (or the noun's usual colour)
    replaces ``cfg.colour``; ``cfg.size`` (if set) rescales the shape's longest side."""
    p = parse_prompt(prompt)
    cfg = replace(cfg or AssetConfig(), colour=COLOURS[p.colour or SHAPES[p.shape].colour])
    source = {"kind": "procedural", "generator": GENERATOR_VERSION, "shape": p.shape, "sxy": p.sxy, "sz": p.sz}
    return build_asset(p.name, source, cfg, lambda: shape_solid(p), cache_dir)
