"""PandaFK against MuJoCo's model of the suite's arm, and the robot config loader."""

import mujoco
import numpy as np
import pytest

import policystack.envs as envs
from policystack.robot.config import RobotConfig, load_robot_config
from policystack.robot.kinematics import PandaFK


def test_fk_matches_mujoco_pinch_site():
    env = envs.make("Reach", action_mode="joint", cameras=()).unwrapped
    cfg = load_robot_config("sim")
    fk = PandaFK(cfg.limits.tool_offset)
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.uniform(env.joint_low, env.joint_high)
        env.data.qpos[env._arm_qadr] = q
        mujoco.mj_kinematics(env.model, env.data)
        np.testing.assert_allclose(fk.position(q), env.data.site_xpos[env._ee_site], atol=1e-4)
    env.close()


def test_config_errors_name_the_key():
    with pytest.raises(FileNotFoundError, match="available"):
        load_robot_config("no_such_robot")
    with pytest.raises(ValueError, match="velocity"):
        load_robot_config("sim", {"limits.velocity": [1.0] * 7})
    with pytest.raises(ValueError, match="rate_hz"):
        load_robot_config("sim", {"rate_hz": 0})
    d = load_robot_config("sim").to_dict()
    d["typo"] = 1
    with pytest.raises(KeyError, match="typo"):
        RobotConfig.from_dict(d)
    assert load_robot_config("sim", {"rate_hz": 1000}).period == pytest.approx(0.001)
