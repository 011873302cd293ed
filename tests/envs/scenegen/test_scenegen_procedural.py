"""The offline generator: prompts parse into a shape, a colour and a size; every shape is a closed solid."""

import pytest

from policystack.envs.scenegen import COLOURS, SHAPES, PromptError, parse_prompt
from policystack.envs.scenegen.mesh import is_manifold_solid
from policystack.envs.scenegen.procedural import Prompt, shape_solid


@pytest.mark.parametrize("prompt, expected", [
    ("a red mug", Prompt("mug", "red", 1.0, 1.0)),
    ("a small blue bottle", Prompt("bottle", "blue", 0.8, 0.8)),
    ("a yellow bowl", Prompt("bowl", "yellow", 1.0, 1.0)),
    ("a green banana", Prompt("banana", "green", 1.0, 1.0)),
    ("The TALL Grey tin", Prompt("can", "grey", 1.0, 1.3)),
    ("an apple", Prompt("apple", None, 1.0, 1.0)),
])
def test_parse(prompt, expected):
    assert parse_prompt(prompt) == expected


def test_canonical_name():
    assert parse_prompt("a small blue bottle").name == "small blue bottle"
    assert parse_prompt("an apple").name == "red apple"  # the noun's usual colour


@pytest.mark.parametrize("prompt, message", [
    ("", "empty prompt"),
    ("a red", "names no object"),
    ("a wooden mug", r"unknown word 'wooden'.*Objects: mug, cup"),
    ("a red blue mug", "two colours"),
    ("a mug and a cup", "unknown word 'and'"),
    ("mug cup", "two objects"),
])
def test_prompt_errors(prompt, message):
    with pytest.raises(PromptError, match=message):
        parse_prompt(prompt)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_is_a_closed_solid_on_the_table(shape):
    solid, hint = shape_solid(Prompt(shape, None, 1.0, 1.0))
    mesh = solid.solid
    assert is_manifold_solid(mesh)
    assert mesh.bounds[0, 2] == pytest.approx(0.0, abs=1e-3)  # on z = 0 (the pipeline places it exactly)
    assert 0.02 < mesh.extents.max() < 0.2  # a tabletop object
    assert 0.0 < hint.pos[2] <= mesh.extents[2]  # the grasp point is within its height
    bigger, _ = shape_solid(Prompt(shape, None, 1.25, 1.25))
    assert bigger.solid.volume == pytest.approx(mesh.volume * 1.25**3, rel=0.02)


def test_colour_words_include_the_suite_colours():
    from policystack.envs.scene import COLORS

    assert all(COLOURS[name] == rgba for name, rgba in COLORS.items())
