"""Every Python code block in README.md and docs/ runs, in order, one namespace per file."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import microtensor
import nn

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_code_block_is_tagged_so_that_it_runs_or_is_read_as_output(document):
    # A ```py or ```python3 block would be skipped silently. Besides python, text (output) and
    # console blocks, the guides hold shell commands that CI runs (bash) and formulas (math).
    tags = re.findall(r"^```(\w*)\n.*?^```\n", document.read_text(), re.S | re.M)
    assert set(tags) <= {"python", "text", "console", "bash", "math"}, tags


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_in_docs_run(document, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(PYTHON_BLOCK.findall(document.read_text()), start=1):
        code = compile(block, f"{document.name} block {number}", "exec")
        exec(code, namespace)


MODULES = sorted(info.name for package in (microtensor, nn)
                 for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."))


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
