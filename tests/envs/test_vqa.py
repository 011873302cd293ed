"""`policystack vqa`: vision-language examples of the suite's scenes (captions, VQA, pointing), and their scoring
(policystack/eval/vqa.py)."""

import math

import numpy as np
import pytest

from policystack.cli import main as cli_main
from policystack.datasets.meta import DatasetMeta
from policystack.datasets.vqa import split_vl_task, vl_task
from policystack.envs.vqa import (
    QUESTION_KINDS,
    SceneRenderer,
    VQAConfig,
    draw_examples,
    generate,
    question_kind,
    scene_questions,
)
from policystack.eval.vqa import caption_objects, majority_baseline, parse_point, score


def project(base, point: np.ndarray) -> tuple[float, float]:
    """A world point in the front camera's image, (x right, y down) in [0, 1]: the pinhole model from the
    camera's pose and fovy, independent of the segmentation render the answers come from."""
    m, d = base.model, base.data
    cam = m.camera("front").id
    rel = d.cam_xmat[cam].reshape(3, 3).T @ (point - d.cam_xpos[cam])  # camera frame: x right, y up, -z forward
    h, w = base.image_hw
    f = (h / 2) / math.tan(math.radians(m.cam_fovy[cam]) / 2)
    return (w / 2 + f * rel[0] / -rel[2]) / w, (h / 2 - f * rel[1] / -rel[2]) / h


def test_pointing_answers_are_where_the_camera_sees_the_objects():
    renderer = SceneRenderer("Reach", ("front",), 96)
    try:
        checked = 0
        for seed in range(6):
            _, objects, drawer = renderer.scene(seed)
            assert drawer is None and len(objects) == 3 and {o.kind for o in objects} == {"ball"}
            for o in objects:
                if o.center is not None and o.pixels > 20:  # wholly visible balls
                    px, py = project(renderer.base, o.position)
                    assert abs(px - o.center[0]) < 0.02 and abs(py - o.center[1]) < 0.02, (seed, o)
                    checked += 1
        assert checked >= 10
        # the colours are the scene's own (the instruction names one of them)
        instruction = renderer.base.task
        assert any(o.color in instruction for o in objects)
    finally:
        renderer.close()


def test_questions_answer_what_the_scene_holds():
    renderer = SceneRenderer("OpenDrawer", ("front",), 96)
    try:
        states = set()
        for seed in range(8):
            _, objects, drawer = renderer.scene(seed)
            opening = float(renderer.base.data.qpos[renderer.base.model.joint("drawer").qposadr[0]])
            assert (opening >= 0.10) == drawer and (opening <= 0.02) == (not drawer)
            qs = scene_questions(objects, renderer.base.ee_pos, drawer)
            assert qs["drawer"] == [("is the drawer open?", "yes" if drawer else "no")]
            assert dict(qs["exists"])[f"is there {'an' if objects[0].color == 'orange' else 'a'} {objects[0].color} drawer?"] == "yes"
            states.add(drawer)
        assert states == {True, False}
    finally:
        renderer.close()
    renderer = SceneRenderer("Reach", ("front",), 96)
    try:
        _, objects, _ = renderer.scene(3)
        qs = scene_questions(objects, renderer.base.ee_pos, None)
        visible = sorted((o for o in objects if o.center is not None), key=lambda o: o.center[0])
        assert qs["caption"][0][1].startswith(("a " + visible[0].color, "an " + visible[0].color))
        for q, a in qs["relation"]:
            a_name, b_name = q.removeprefix("is the ").removesuffix("?").split(" left of the ")
            ca = next(o.center[0] for o in objects if o.name == a_name)
            cb = next(o.center[0] for o in objects if o.name == b_name)
            assert a == ("yes" if ca < cb else "no")
        if qs.get("closest"):
            nearest = min(objects, key=lambda o: np.linalg.norm(o.position - renderer.base.ee_pos))
            assert qs["closest"][0][1] == nearest.color
        examples = draw_examples(qs, 8, np.random.default_rng(0))
        assert len(examples) == 8 and len({k for k, _, _ in examples}) >= 4  # kinds first: varied
        assert all(question_kind(q) == k for k, q, _ in examples)
    finally:
        renderer.close()


def test_generate_writes_a_dataset_of_examples(tmp_path):
    summary = generate(VQAConfig(env="Reach,OpenDrawer", scenes=3, out=tmp_path / "vqa", questions=4,
                                 cameras=("front", "wrist"), image_size=32), progress=False)
    meta = DatasetMeta.load(tmp_path / "vqa")
    assert meta.total_episodes == 6 and meta.total_frames == 24 == summary["examples"]
    assert sorted(k for k in meta.features if k.startswith("observation.images.")) == \
        ["observation.images.front", "observation.images.wrist"]
    assert "action" not in meta.features
    kinds = {question_kind(split_vl_task(t)[0]) for t in meta.tasks}
    assert kinds <= set(QUESTION_KINDS) and len(kinds) >= 4
    # the same config writes the same examples
    again = generate(VQAConfig(env="Reach,OpenDrawer", scenes=3, out=tmp_path / "vqa2", questions=4,
                               cameras=("front", "wrist"), image_size=32), progress=False)
    assert again["kinds"] == summary["kinds"] and DatasetMeta.load(tmp_path / "vqa2").tasks == meta.tasks
    baseline = majority_baseline(tmp_path / "vqa", tmp_path / "vqa2")
    assert 0.0 <= baseline["overall"] <= 1.0 and baseline["n"] == 24


def test_scoring_and_the_task_format():
    assert split_vl_task(vl_task("where is the red ball?", "(0.40, 0.60)")) == ("where is the red ball?", "(0.40, 0.60)")
    with pytest.raises(ValueError, match="not a vision-language example"):
        split_vl_task("reach the red ball")
    assert score("where is the red ball?", "(0.40, 0.60)", "(0.43, 0.62)") == (True, pytest.approx(0.036, abs=1e-3))
    assert score("where is the red ball?", "(0.40, 0.60)", "(0.50, 0.60)")[0] is False
    assert score("where is the red ball?", "(0.40, 0.60)", "somewhere") == (False, 1.0)
    assert score("is the drawer open?", "yes", " Yes ") == (True, None)
    assert parse_point("(0.1, 0.2)") == (0.1, 0.2)
    with pytest.raises(ValueError, match="not one `policystack vqa` asks"):
        question_kind("what is the meaning of life?")
    # captions: the objects named, as a multiset, order and articles aside
    assert caption_objects("a red ball, an orange ball and a red ball") == {"red ball": 2, "orange ball": 1}
    assert caption_objects("A blue cube.") == {"blue cube": 1} and not caption_objects("nothing")
    ref, got = caption_objects("a red ball, an orange ball and a blue ball"), caption_objects("a blue ball and a red cube")
    assert sum((ref & got).values()) == 1


def test_command_line_errors(tmp_path, capsys):
    assert cli_main(["vqa", "env=Fly", "scenes=1", f"out={tmp_path / 'a'}"]) == 2
    assert "unknown task(s) ['Fly']" in capsys.readouterr().err
    assert cli_main(["vqa", "env=Reach", "scenes=1", f"out={tmp_path / 'b'}", "cameras=wrist"]) == 1
    assert "include front" in capsys.readouterr().err
