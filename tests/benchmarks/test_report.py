"""benchmarks/_report.py: one benchmark's section of docs/benchmarks.md is replaced, others kept."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _report import write_section  # noqa: E402


def test_write_section_appends_then_replaces_only_its_own(tmp_path):
    doc = tmp_path / "benchmarks.md"
    write_section("bench_a", "## A\nfirst", doc)
    write_section("bench_b", "## B\nkept", doc)
    assert doc.read_text() == ("# Benchmarks\n\n<!-- BEGIN bench_a -->\n## A\nfirst\n<!-- END bench_a -->\n\n"
                               "<!-- BEGIN bench_b -->\n## B\nkept\n<!-- END bench_b -->\n")
    write_section("bench_a", "## A\nsecond\n", doc)
    text = doc.read_text()
    assert "second" in text and "first" not in text and "## B\nkept" in text
    assert text.index("bench_a") < text.index("bench_b")  # replaced in place
    assert list(tmp_path.iterdir()) == [doc]  # no temporary file left behind


def test_write_section_refuses_bad_names_and_broken_markers(tmp_path):
    doc = tmp_path / "benchmarks.md"
    with pytest.raises(ValueError, match="section name"):
        write_section("a b", "x", doc)
    doc.write_text("# Benchmarks\n\n<!-- BEGIN bench_a -->\nno end marker\n")
    with pytest.raises(ValueError, match="unbalanced"):
        write_section("bench_a", "x", doc)
    assert doc.read_text() == "# Benchmarks\n\n<!-- BEGIN bench_a -->\nno end marker\n"
