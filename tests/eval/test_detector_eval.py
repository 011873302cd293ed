"""`policystack eval ... detector=DIR`: a success detector's verdicts recorded beside the simulator's
is_success, with agreement / precision / recall; and `policystack detector` on held-out end frames."""

from __future__ import annotations

import json

import pytest
import torch

from policystack.cli import main as cli_main
from policystack.eval.expert import ScriptedExpert
from policystack.eval.runner import EvalRunner
from policystack.perception.describe import DescriberConfig, DescriberPolicy
from policystack.types import Feature, camera_key


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    torch.manual_seed(0)
    feats = {camera_key("front"): Feature("video", (32, 32, 3), names=["height", "width", "channels"])}
    model = DescriberPolicy(DescriberConfig(text_width=32, text_depth=1, text_heads=2, image_size=32, image_grid=1),
                            feats, None)
    return model.save_pretrained(tmp_path_factory.mktemp("det") / "describer")


def test_eval_records_the_verdict_beside_is_success(detector_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    # 3 steps: the expert cannot reach the ball yet (every episode fails); threshold 0: the detector says done
    assert cli_main(["eval", "checkpoint=expert", "env=Reach", "episodes=2", "max_steps=3", f"out={out}", "videos=0",
                     f"detector={detector_dir}", "detector_threshold=0.0"]) == 0
    printed = capsys.readouterr().out
    assert "detector: agreement 0.0% [0.0%, 65.8%], precision 0.0% [0.0%, 65.8%], recall n/a" in printed
    info = json.loads((out / "eval_info.json").read_text())
    (task,) = info["per_task"]
    assert [(e["success"], e["detector_done"]) for e in task["episodes"]] == [(False, True)] * 2
    assert all(0.0 < e["detector_p"] < 1.0 for e in task["episodes"])
    assert (task["detector"]["fp"], task["detector"]["tn"]) == (2, 0) and info["detector"]["episodes"] == 2
    assert task["env_kwargs"]["cameras"] == ["front"] and task["env_kwargs"]["image_size"] == 32  # rendered for it


def test_the_detector_and_the_policy_must_agree_on_the_frame_size(detector_dir):
    from policystack.policies.base import Policy

    det = Policy.from_pretrained(detector_dir)
    runner = EvalRunner(task="Reach", episodes=1, env_kwargs={"cameras": ("wrist",), "image_size": 64}, detector=det)
    with pytest.raises(ValueError, match="trained on 32 px frames, but the env renders 64 px"):
        runner.resolved_env_kwargs(ScriptedExpert())
    same = EvalRunner(task="Reach", episodes=1, env_kwargs={"cameras": ("wrist",), "image_size": 32}, detector=det)
    assert same.resolved_env_kwargs(ScriptedExpert())["cameras"] == ("wrist", "front")
    with pytest.raises(ValueError, match="detector_threshold=1.5"):
        EvalRunner(task="Reach", detector_threshold=1.5)


def test_the_detector_command_scores_held_out_end_frames(detector_dir, tmp_path, capsys):
    from policystack.envs.endframes import EndFramesConfig, generate

    generate(EndFramesConfig(env="Reach", episodes=4, out=tmp_path / "ef", image_size=32, seed=700000), progress=False)
    assert cli_main(["detector", f"checkpoint={detector_dir}", f"data={tmp_path / 'ef'}", "threshold=1.0",
                     f"out={tmp_path / 'r.json'}"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    d = report["overall"]
    assert d["episodes"] == 4 and d["tp"] == d["fp"] == 0  # threshold 1: never done
    assert d["agreement"] == pytest.approx(d["tn"] / 4) and list(report["per_task"]) == ["Reach"]
    assert cli_main(["detector", f"checkpoint={detector_dir}", f"data={tmp_path / 'nope'}"]) == 2
    assert "nope" in capsys.readouterr().err
