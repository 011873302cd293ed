"""``policystack scene``: make simulator objects from text, mesh files, SLAT files or TRELLIS.

    policystack scene generate "a red mug" [size=0.08] [density=500] [cache=DIR] [check=true]
    policystack scene import FILE.(obj|glb|gltf|stl|ply) [size=M | scale=F] [up=z|y]
        [watertight=repair|hull|voxel] [colour=red] [density=500] [cache=DIR] [check=true]
    policystack scene slat FILE.npz [rgb_map=W.npy] [size=0.1] [colour=grey] [cache=DIR] [check=true]
    policystack scene trellis "a red mug"|IMAGE.png model=DIR [seed=0] [size=0.1] [watertight=voxel]
    policystack scene check ASSET_DIR [random_poses=0] [seams=4]
    policystack scene objects [check=true]          # the PlaceObject task's seen / held-out objects
    policystack scene gallery out=FILE.png [prompts="a red mug;a yellow banana"] [width=1280] [height=720]

Each asset command prints the asset's directory (MJCF ``asset.xml``, meshes, ``asset.json``), its hull
count, mass and size, then runs the drop test (``check=false`` skips it; a failed drop test exits 1).
Bad input exits 2 with the reason; nothing is left in the cache then.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from policystack.keyvalue import parse_key_values

USAGE = __doc__.split("\n\n")[1]
SUBCOMMANDS = ("generate", "import", "slat", "trellis", "check", "objects", "gallery")


@dataclass
class SceneArgs:
    size: float = 0.0  # longest side (m); 0: the input's own size (SLAT / TRELLIS: 0.1 m)
    scale: float = 0.0
    density: float = 500.0
    colour: str = ""
    up: str = ""
    watertight: str = ""  # default: repair (trellis: voxel)
    cache: str = ""
    check: bool = True
    rgb_map: str = ""
    model: str = ""
    seed: int = 0
    random_poses: int = 0
    seams: int = 4
    out: str = ""
    prompts: str = ""
    width: int = 1280
    height: int = 720
    json: bool = False  # print asset.json (and the drop report) as JSON instead of text

    def asset_config(self, watertight: str = "repair"):
        from policystack.envs.scenegen.asset import AssetConfig

        kw: dict = {"density": self.density, "watertight": self.watertight or watertight}
        if self.size:
            kw["size"] = self.size
        if self.scale:
            kw["scale"] = self.scale
        if self.colour:
            kw["colour"] = self.colour
        if self.up:
            kw["up"] = self.up
        return AssetConfig(**kw)

    @property
    def cache_dir(self) -> str | None:
        return self.cache or None


def describe(asset) -> str:
    ext = asset.extents * 100
    t = asset.meta.get("timings", {})
    return (f"{asset.name}: {asset.hull_count} hulls, {asset.mass * 1000:.0f} g, {ext[0]:.1f} x {ext[1]:.1f} x "
            f"{ext[2]:.1f} cm, made in {sum(t.values()):.1f} s (hulls {t.get('hulls', 0):.1f} s) -> {asset.path}")


def _report(assets: list, args: SceneArgs) -> int:
    """Print each asset (and its drop test); 1 if any drop test failed."""
    from policystack.envs.scenegen.droptest import drop_test

    failed = 0
    for asset in assets:
        report = drop_test(asset, random_poses=args.random_poses, seams=args.seams) if args.check else None
        if args.json:
            print(json.dumps({"asset": asset.meta, "path": str(asset.path),
                              "drop_test": report.as_dict() if report else None}, indent=2))
        else:
            print(describe(asset))
            if report is not None:
                print(report.summary())
        failed += bool(report is not None and not report.passed)
    return 1 if failed else 0


def run(cmd: str, target: str | None, args: SceneArgs) -> int:
    from policystack.envs import scenegen

    if cmd in ("generate", "import", "slat", "trellis", "check") and not target:
        raise ValueError(f"scene {cmd}: missing its {'prompt' if cmd in ('generate', 'trellis') else 'file or directory'}")
    if cmd == "generate":
        cfg = args.asset_config()
        return _report([scenegen.generate(target, cfg, args.cache_dir)], args)
    if cmd == "import":
        return _report([scenegen.import_mesh(target, args.asset_config(), args.cache_dir)], args)
    if cmd == "slat":
        rgb = None
        if args.rgb_map:
            import numpy as np

            rgb = np.load(args.rgb_map, allow_pickle=False)
        return _report([scenegen.import_slat(target, args.asset_config(), args.cache_dir, rgb_map=rgb)], args)
    if cmd == "trellis":
        if not args.model:
            raise ValueError("scene trellis: model=DIR (a downloaded TRELLIS-text-large / TRELLIS-image-large) is required")
        asset = scenegen.generate_trellis(target, args.model, args.asset_config("voxel"), args.cache_dir, seed=args.seed,
                                          out_dir=args.out or None)
        return _report([asset], args)
    if cmd == "check":
        return _report([scenegen.Asset.load(target)], args)
    if cmd == "objects":
        from policystack.envs.scenegen.objects import SPLITS, object_set

        rc = 0
        for split in SPLITS:
            print(f"{split}:")
            rc |= _report([o.asset for o in object_set(split)], args)
        return rc
    if cmd == "gallery":
        from policystack.envs.scenegen.gallery import render_gallery

        if not args.out:
            raise ValueError("scene gallery: out=FILE.png is required")
        prompts = [p.strip() for p in (args.prompts or ";".join(f"a {s}" for s in scenegen.SHAPES)).split(";")]
        assets = [scenegen.generate(p, cache_dir=args.cache_dir) for p in prompts if p]
        print(f"wrote {render_gallery(assets, args.out, args.width, args.height)} ({len(assets)} objects)")
        return 0
    raise ValueError(f"unknown scene command {cmd!r}; valid: {', '.join(SUBCOMMANDS)}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    target = rest.pop(0) if rest and "=" not in rest[0] else None
    from policystack.envs.scenegen import MeshError, PromptError, TrellisUnavailable

    try:
        if cmd not in SUBCOMMANDS:
            raise ValueError(f"unknown scene command {cmd!r}; valid: {', '.join(SUBCOMMANDS)}")
        args = SceneArgs(**parse_key_values(rest, SceneArgs))
        return run(cmd, target, args)
    except (MeshError, PromptError, ValueError, KeyError, FileNotFoundError, TrellisUnavailable) as e:
        print(f"policystack scene: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
