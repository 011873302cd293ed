"""Drop tests of every generated and imported asset (from 10 cm in six poses and, for multi-hull
assets, probe balls on hull seams: at rest within 1 s, <= 2 mm penetration, no energy gain), and
proof that the test fails for assets that are not stable."""

import shutil

import pytest

from policystack.envs.scenegen import (
    SHAPES,
    Asset,
    drop_test,
    generate,
)
from policystack.envs.scenegen.droptest import find_seams
from policystack.envs.scenegen.objects import SPLITS

ISSUE_PROMPTS = ("a red mug", "a small blue bottle", "a yellow bowl", "a green banana")
TASK_PROMPTS = tuple(p for split in SPLITS.values() for p in split)


def _assert_passes(asset):
    report = drop_test(asset)
    assert report.passed, report.summary()
    assert len([t for t in report.trials if t.kind == "pose"]) == 6
    if asset.hull_count > 1 and report.seams_found:
        assert any(t.kind == "seam" for t in report.trials)
    for t in report.trials:
        assert t.rest_time is not None and t.rest_time <= 1.0
        assert t.max_penetration <= 0.002 and t.energy_gain <= 0.01 * t.drop_energy
    return report


@pytest.mark.parametrize("prompt", ISSUE_PROMPTS + TASK_PROMPTS)
def test_generated_assets_pass(prompt):
    _assert_passes(generate(prompt))


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_of_the_generator_passes(shape):
    _assert_passes(generate(f"a {shape}"))


@pytest.mark.parametrize("kind", ["obj", "glb", "stl", "ply", "slat"])
def test_imported_assets_pass(imported, kind):
    _assert_passes(imported[0][kind])


def test_seams_are_found_and_probed_on_a_mug():
    asset = generate("a red mug")
    points = find_seams(asset)
    assert len(points) >= 4  # the mug's floor is cut into several hulls
    report = drop_test(asset, seams=4)
    seam_trials = [t for t in report.trials if t.kind == "seam"]
    assert len(seam_trials) == 4 and all(t.passed for t in seam_trials)


def _with_contacts(asset, tmp_path, solref: str) -> Asset:
    """A copy of ``asset`` whose hulls use another contact stiffness."""
    copy = tmp_path / "copy"
    shutil.copytree(asset.path, copy)
    xml = (copy / "asset.xml").read_text()
    assert 'solref="0.002"' in xml
    (copy / "asset.xml").write_text(xml.replace('solref="0.002"', f'solref="{solref}"'))
    return Asset.load(copy)


def test_soft_contacts_fail_on_penetration(tmp_path):
    report = drop_test(_with_contacts(generate("a block"), tmp_path, "0.1 1"))
    assert not report.passed
    assert any("penetration" in r for t in report.trials for r in t.reasons)


def test_unstable_contacts_fail(tmp_path):
    """Contacts far too stiff for the timestep ring and inject energy: the test must say so."""
    report = drop_test(_with_contacts(generate("a block"), tmp_path, "-1e7 -1"))
    assert not report.passed
    reasons = " ".join(r for t in report.trials for r in t.reasons)
    assert "energy gain" in reasons or "not at rest" in reasons
