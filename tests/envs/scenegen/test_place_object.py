"""The PlaceObject task: generated objects in the tabletop suite, seen in demos or held out of them."""

import mujoco
import numpy as np
import pytest

from policystack import envs
from policystack.envs.experts import make_expert, run_episode
from policystack.envs.scene import COLORS
from policystack.envs.scenegen.asset import COLLISION_GROUP
from policystack.envs.scenegen.objects import SPLITS, object_set
from policystack.envs.tasks import PlaceObjectEnv, PlaceObjectHeldOutEnv


def test_registered_with_disjoint_object_sets():
    assert {"PlaceObject", "PlaceObjectHeldOut"} <= set(envs.task_names())
    seen = {o.noun for o in object_set("seen")}
    held = {o.noun for o in object_set("heldout")}
    assert len(seen) == len(SPLITS["seen"]) and len(held) == len(SPLITS["heldout"])
    assert not seen & held
    assert PlaceObjectEnv.split == "seen" and PlaceObjectHeldOutEnv.split == "heldout"


@pytest.mark.parametrize("task", ["PlaceObject", "PlaceObjectHeldOut"])
def test_one_object_on_the_table_the_others_parked(task):
    env = envs.make(task, cameras=())
    u = env.unwrapped
    nouns = [o.noun for o in u.objects()]
    seen_objects = set()
    for seed in range(6):
        _, info = env.reset(seed=seed)
        k = int(u.target.split("/")[0][3:])
        seen_objects.add(k)
        assert nouns[k] in info["task"] and "bowl" in info["task"]
        for i in range(len(nouns)):
            bid = u.model.body(f"obj{i}/object").id
            hulls = [g for g in u._object_geoms(i) if u.model.geom_group[g] == COLLISION_GROUP]
            on_table = i == k
            assert (u.data.xpos[bid][2] > -0.01) == on_table
            assert all(bool(u.model.geom_contype[g]) == on_table for g in hulls)
            assert u.model.body_gravcomp[bid] == (0.0 if on_table else 1.0)
        # the instruction's colour is the named bowl's colour
        bowl_rgba = u.model.geom_rgba[u.model.geom(f"{u.bowl}_base").id]
        colour = next(c for c, rgba in COLORS.items() if np.allclose(rgba, bowl_rgba))
        assert f"the {colour} bowl" in info["task"]
    assert len(seen_objects) > 1  # seeds draw different objects
    assert u.physics_hz == 1000
    env.close()


@pytest.mark.parametrize("task", ["PlaceObject", "PlaceObjectHeldOut"])
def test_expert_places_the_object_in_the_named_bowl(task):
    env = envs.make(task, cameras=())
    u = env.unwrapped
    expert = make_expert(env)
    for seed in range(3):
        _, success = run_episode(env, expert, seed)
        assert success, (task, seed, u.task)
        com = u.data.xipos[u.model.body(u.target).id]
        other = "bowl1" if u.bowl == "bowl0" else "bowl0"
        assert np.linalg.norm(com[:2] - u.body_pos(u.bowl)[:2]) < np.linalg.norm(com[:2] - u.body_pos(other)[:2])


def test_object_in_the_wrong_bowl_is_no_success():
    env = envs.make("PlaceObject", cameras=())
    u = env.unwrapped
    env.reset(seed=0)
    other = "bowl1" if u.bowl == "bowl0" else "bowl0"
    for name, want in ((other, False), (u.bowl, True)):
        u.set_free_body(u.target, u.body_pos(name) + [0.0, 0.0, 0.01])
        u.data.qvel[:] = 0.0
        mujoco.mj_step(u.model, u.data, nstep=500)
        assert u.evaluate()[0] is want, name
