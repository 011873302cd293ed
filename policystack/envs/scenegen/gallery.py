"""A picture of assets in the tabletop scene: the suite's table, light and robot, the assets in
rows in front of the robot, dropped and settled by the physics before the frame is taken."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mujoco
import numpy as np

from policystack.envs.scenegen.asset import Asset, add_asset


def render_gallery(assets: Sequence[Asset], path: str | Path, width: int = 1280, height: int = 720,
                   settle: float = 1.0, rows: int = 2) -> Path:
    """Place ``assets`` in ``rows`` rows on the table (1 cm above it), simulate ``settle`` seconds,
    render from a camera in front of the table and write a PNG (atomically) to ``path``."""
    from PIL import Image

    from policystack.envs import robot as rb
    from policystack.envs.scene import add_table_and_lights
    from policystack.io import atomic_write_bytes

    spec = rb.load_robot_spec()
    add_table_and_lights(spec, offscreen=max(width, height))
    spec.visual.quality.shadowsize = 4096
    per_row = int(np.ceil(len(assets) / rows))
    spacing = 0.8 / max(per_row - 1, 1)
    for i, asset in enumerate(assets):
        r, c = divmod(i, per_row)
        x, y = 0.38 + 0.2 * r, (c - (per_row - 1) / 2) * spacing
        add_asset(spec, asset, f"a{i}/", pos=(x, y, 0.01))
    spec.worldbody.add_camera(name="gallery", pos=[1.25, 0.0, 0.55], xyaxes=[0, 1, 0, -0.42, 0, 0.91], fovy=48.0)
    model = spec.compile()
    data = mujoco.MjData(model)
    arm = [model.joint(j).qposadr[0] for j in rb.ARM_JOINTS]
    data.qpos[arm] = rb.HOME_QPOS
    data.ctrl[[model.actuator(f"actuator{i}").id for i in range(1, 8)]] = rb.HOME_QPOS
    mujoco.mj_step(model, data, nstep=int(settle / model.opt.timestep))
    with mujoco.Renderer(model, height, width) as renderer:
        renderer.update_scene(data, camera="gallery")
        pixels = renderer.render()
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
