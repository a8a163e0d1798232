"""docs/checking.md shows real output: each ```text block after a ```python block is what that
block prints (test_docs.py runs the blocks; this one also reads what they print)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "checking.md"
BLOCK = re.compile(r"^```(python|text)\n(.*?)^```", re.S | re.M)


def test_every_printed_output_in_checking_md_is_what_the_code_prints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    printed = ""
    shown = []
    for kind, body in BLOCK.findall(DOC.read_text()):
        if kind == "python":
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                exec(compile(body, str(DOC), "exec"), namespace)
            printed = buffer.getvalue()
        elif printed:
            shown.append((body, printed))
            printed = ""
    assert len(shown) == 6
    for body, output in shown:
        assert output == body, f"docs/checking.md shows:\n{body}\nbut the code prints:\n{output}"
