"""The control loop's tick in-process on the sim driver: it tracks a chunk, and it creates no
objects the garbage collector tracks (so, with the GC frozen and disabled as in the loop process,
nothing accumulates and no collection pause can be needed)."""

import gc
import tracemalloc
from pathlib import Path

import numpy as np

from policystack.envs.robot import HOME_QPOS
from policystack.robot import loop as loop_module
from policystack.robot.config import load_robot_config
from policystack.robot.drivers.sim import SimDriver
from policystack.robot.loop import MAX_CHUNK, ControlLoop
from policystack.robot.shm import Block, command_fields, control_fields, state_fields


def test_tick_tracks_a_chunk_without_accumulating_objects(tmp_path):
    cfg = load_robot_config("sim", {"watchdog_s": 5.0})
    drv = SimDriver(cfg.rate_hz, cfg.policy_hz, task="Reach")
    drv.connect()
    nq = drv.extra_dim
    state = Block.create(tmp_path / "s", state_fields(8, nq))
    cmd = Block.create(tmp_path / "c", command_fields(8, MAX_CHUNK))
    ctl = Block.create(tmp_path / "k", control_fields(nq))
    loop = ControlLoop(cfg, drv, state, cmd, ctl)
    loop.start()
    target = np.append(HOME_QPOS + 0.1, 0.5)
    cmd.begin()
    cmd.f["t_obs"][0], cmd.f["dt"][0], cmd.f["n"][0] = 0.0, 0.1, 16
    cmd.f["actions"][:16] = target
    cmd.f["gen"][0] = 1
    cmd.end()
    t = 0.0
    for _ in range(200):  # warm-up: first chunk, caches
        loop.tick(t)
        t += cfg.period
    gc.collect()
    gc.disable()
    try:
        before = {id(o) for o in gc.get_objects()}
        for _ in range(300):
            loop.tick(t)
            t += cfg.period
        survivors = []
        for o in gc.get_objects():  # a plain loop: a comprehension would add its own closure
            if id(o) not in before and o is not before and o is not survivors:
                survivors.append(repr(o)[:150])
        # tracemalloc is process-wide: threads left by earlier tests (progress-bar monitors, loggers)
        # allocate meanwhile, so count only blocks allocated with the control loop's code on the stack.
        tracemalloc.start(32)
        snap0 = tracemalloc.take_snapshot()
        for _ in range(300):
            loop.tick(t)
            t += cfg.period
        snap1 = tracemalloc.take_snapshot()
        ours = [tracemalloc.Filter(True, str(Path(loop_module.__file__).parent / "*"), all_frames=True)]
        diff = snap1.filter_traces(ours).compare_to(snap0.filter_traces(ours), "filename")
        grown_mem = sum(d.size_diff for d in diff)
    finally:
        tracemalloc.stop()
        gc.enable()
    assert not survivors, f"GC-tracked objects survived 600 ticks: {survivors[:10]}"
    assert grown_mem < 4096, f"{grown_mem} bytes retained over 600 ticks"
    s = state.snapshot()
    assert s["faults"][0] == 0
    np.testing.assert_allclose(s["q_cmd"], target, atol=1e-6)  # 1.6 s: the command reached the target
    np.testing.assert_allclose(s["q_meas"][:7], target[:7], atol=0.02)  # and the simulated arm followed
    assert s["max_dq"][0] <= cfg.limits.max_step + 1e-12
    drv.close()
