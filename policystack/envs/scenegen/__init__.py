"""Scene generation: text, mesh files or TRELLIS latents in, stable MuJoCo objects out.

    from policystack.envs import scenegen
    asset = scenegen.generate("a red mug")                  # offline procedural generator
    asset = scenegen.import_mesh("chair.glb", scenegen.AssetConfig(size=0.1))
    asset = scenegen.import_slat("object_slat.npz")         # TRELLIS structured latent (.npz)
    asset = scenegen.generate_trellis("a red mug", model="~/TRELLIS-text-large")   # on a GPU machine
    asset.path, asset.hull_count, asset.mass, asset.xml_path
    scenegen.drop_test(asset).passed
    scenegen.add_asset(spec, asset, prefix="mug/", pos=(0.5, 0.0, 0.0))   # into any MjSpec scene

Every route ends in one pipeline (``asset.build_asset``): watertight solid -> scale and place on
z = 0 -> CoACD convex hulls -> MJCF body (visual mesh, hulls, mass and inertia from a density,
friction) in a content-addressed cache (``~/.cache/policystack/scenegen``, or
``$POLICYSTACK_CACHE/scenegen``). Modules: ``mesh`` (load, check, repair), ``hulls`` (CoACD),
``asset`` (pipeline, cache, MJCF), ``procedural`` (prompts -> shapes), ``slat`` (SLAT format),
``imports`` (files), ``trellis`` (the TRELLIS adapter), ``droptest``, ``objects`` (the object sets
of the PlaceObject task), ``commands`` (``policystack scene``).
"""

from policystack.envs.scenegen.asset import COLOURS, Asset, AssetConfig, GraspHint, add_asset, build_asset
from policystack.envs.scenegen.droptest import DropReport, drop_test
from policystack.envs.scenegen.hulls import HullConfig
from policystack.envs.scenegen.imports import import_mesh, import_slat
from policystack.envs.scenegen.mesh import MeshError
from policystack.envs.scenegen.procedural import SHAPES, PromptError, generate, parse_prompt
from policystack.envs.scenegen.trellis import TrellisUnavailable, generate_trellis, trellis_available

__all__ = [
    "COLOURS", "SHAPES", "Asset", "AssetConfig", "DropReport", "GraspHint", "HullConfig", "MeshError", "PromptError",
    "TrellisUnavailable", "add_asset", "build_asset", "drop_test", "generate", "generate_trellis", "import_mesh",
    "import_slat", "parse_prompt", "trellis_available",
]
