"""The one helper that writes a benchmark's section of docs/benchmarks.md.

Each benchmark owns the text between ``<!-- BEGIN <name> -->`` and ``<!-- END <name> -->``; a write
replaces only that section (or appends it when absent) and leaves every other section as it was.
The file is replaced atomically (temp file, fsync, rename), under an exclusive lock so benchmarks
writing their sections at the same time do not drop each other's."""

from __future__ import annotations

import fcntl
import hashlib
import re
import tempfile
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"


def write_section(name: str, markdown: str, doc: str | Path = DOC) -> Path:
    """Put ``markdown`` between the ``name`` markers of ``doc`` (default docs/benchmarks.md)."""
    from policystack.io import atomic_write_bytes

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"benchmark section name {name!r}: use letters, digits, '_', '.', '-'")
    doc = Path(doc).resolve()
    begin, end = markers(name)
    lock = Path(tempfile.gettempdir()) / f"policystack-report-{hashlib.sha1(str(doc).encode()).hexdigest()[:12]}.lock"
    with open(lock, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # released when the file closes
        text = doc.read_text() if doc.is_file() else "# Benchmarks\n"
        section = f"{begin}\n{markdown.strip()}\n{end}"
        if text.count(begin) > 1 or text.count(end) > 1 or (begin in text) != (end in text):
            raise ValueError(f"{doc}: the markers of section {name!r} are unbalanced; fix them by hand")
        if begin in text:
            text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: section, text, flags=re.S)
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        atomic_write_bytes(doc, text.encode())
    return doc
