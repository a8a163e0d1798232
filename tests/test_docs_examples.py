"""The guides show real output, and docs/api.md and the code cannot drift apart.

test_docs.py runs every ```python block; these tests also read what the blocks print. In the
guides below, a ```text block right under a ```python block is what that block prints, and a
```console block is commands (``$ ...``) each followed by what it prints. ``...`` stands for
elided text; timings (``0.5 s``, ``0.1s``) and rounding noise (errors below 1e-8, and where they are
largest) may differ from run to run.

    python -m tests.test_docs_examples --pictures   # redraw the pictures the guides make (needs dot)
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import inspect
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import microtensor as mt
import nn
import nn.cli

ROOT = Path(__file__).resolve().parent.parent
GUIDES = ["README.md", "docs/index.md", "docs/tutorial.md", "docs/from-numpy.md", "docs/manual-backprop.md",
          "docs/api.md", "docs/nn.md", "docs/design.md", "docs/reliability.md", "docs/graph.md"]
API = ROOT / "docs" / "api.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
TIMING = re.compile(r"\b\d+\.\d+ ?s\b")
# Errors below 1e-8 (the tightest tolerance) are rounding noise, and so is where the largest of them
# sits: both depend on the machine's floating-point library.
ROUNDING = re.compile(r"\b\d\.\d+e-(?:09|1\d|[2-9]\d)\b")
ROUNDING_AT = re.compile(r"(<rounding>\s+<rounding>\s+)\([\d, ]*\)")


# -- running a guide ---------------------------------------------------------------------------
@dataclass
class Shown:
    """Output a guide shows, and what the code printed there."""

    where: str
    shown: str
    printed: str


@dataclass
class Run:
    """A guide after its blocks ran: the names they defined, and the output it shows."""

    namespace: dict
    outputs: list[Shown] = field(default_factory=list)


def _blocks(text: str) -> list[tuple[str, str, bool]]:
    """(language, body, right under the previous block) for every fenced block, in order."""
    blocks, end = [], None
    for match in BLOCK.finditer(text):
        adjacent = end is not None and not text[end:match.start()].strip()
        blocks.append((match.group(1), match.group(2), adjacent))
        end = match.end()
    return blocks


def _run_command(command: str) -> str:
    """A ``$`` line of a console block: ``microtensor`` in this process, anything else in a shell."""
    out = io.StringIO()
    if command.startswith("microtensor "):
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                nn.cli.main(shlex.split(command)[1:])
            except SystemExit:  # argparse's way out of a bad argument
                pass
            except Exception as err:  # shown as the command's output, so the comparison names it
                print(f"{type(err).__name__}: {err}")
        return out.getvalue()
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def _console(body: str, where: str) -> list[Shown]:
    """Run each command of a console block; pair what it printed with the lines shown under it."""
    shown: list[Shown] = []
    for chunk in re.split(r"^\$ ", body, flags=re.M)[1:]:
        command, _, expected = chunk.partition("\n")
        shown.append(Shown(f"{where}: $ {command}", expected, _run_command(command)))
    return shown


@contextlib.contextmanager
def _working_directory(folder: Path):
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def run_guide(path: Path, folder: Path) -> Run:
    """Run a guide's blocks in order in ``folder`` (holding a copy of docs/examples)."""
    shutil.copytree(ROOT / "docs" / "examples", folder / "docs" / "examples")
    run = Run({"__name__": "__docs__"})
    printed = None
    with _working_directory(folder):
        for number, (language, body, adjacent) in enumerate(_blocks(path.read_text()), start=1):
            where = f"{path.name} block {number}"
            if language == "text" and adjacent and printed is not None:
                run.outputs.append(Shown(where, body, printed))
            printed = None
            if language == "python":
                buffer = io.StringIO()
                with contextlib.redirect_stdout(buffer):
                    exec(compile(body, where, "exec"), run.namespace)
                printed = buffer.getvalue()
            elif language == "console":
                run.outputs += _console(body, where)
    return run


@pytest.fixture(scope="module")
def guides(tmp_path_factory):
    """Each guide run once, when a test first asks for it, and shared by the tests that read it."""
    runs: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in runs:
            runs[name] = run_guide(ROOT / name, tmp_path_factory.mktemp(Path(name).stem))
        return runs[name]

    return get


def _normalised(text: str) -> str:
    text = ROUNDING.sub("<rounding>", TIMING.sub("<time>", text))
    return ROUNDING_AT.sub(r"\1<index>", text)


def _matches(shown: str, printed: str) -> bool:
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE  # column widths follow the values
    return doctest.OutputChecker().check_output(_normalised(shown), _normalised(printed), flags)


@pytest.mark.parametrize("name", GUIDES)
def test_output_shown_in_a_guide_is_what_its_code_prints(guides, name):
    for output in guides(name).outputs:
        if not shutil.which("dot") and re.search(r"\.(svg|png)\b", output.shown):
            continue  # output of a picture Graphviz draws, and Graphviz is not installed
        if not _matches(output.shown, output.printed):
            pytest.fail(f"{output.where} shows\n{output.shown}\nbut prints\n{output.printed}", pytrace=False)


@pytest.mark.parametrize("n_samples, centers, n_features, random_state", [(2000, 3, 4, 0), (1001, 4, 3, 42)])
def test_the_numpy_blobs_are_scikit_learns_make_blobs(guides, n_samples, centers, n_features, random_state):
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = guides("docs/from-numpy.md").namespace["blobs"](n_samples, centers, n_features, random_state)
    X_sk, y_sk = datasets.make_blobs(n_samples=n_samples, centers=centers, n_features=n_features,
                                     random_state=random_state)
    assert np.array_equal(X, X_sk) and np.array_equal(y, y_sk)


# -- links and pictures --------------------------------------------------------------------------
LINK = re.compile(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)")
FENCED = re.compile(r"^```.*?^```", re.S | re.M)


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.*)$", FENCED.sub("", page.read_text()), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("name", GUIDES)
def test_every_relative_link_and_picture_in_a_guide_exists(name):
    page = ROOT / name
    for target, anchor in LINK.findall(page.read_text()):
        if "://" in target:
            continue
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{name} links to {target}, which does not exist"
        if anchor:
            assert anchor in _anchors(path), f"{name} links to {target}#{anchor}, a heading it does not have"


# -- docs/api.md against the code ----------------------------------------------------------------
SPAN = re.compile(r"`((?:mt|nn)\.[\w.]+)(\([^`]*\))?`")
OWNERS = {"mt": mt, "nn": nn}
NOT_A_CLASS_ATTRIBUTE = object()  # an attribute only instances have (set in __init__, a dataclass field)


def _documented() -> dict[str, str | None]:
    """Qualified name -> documented parameter list (None when shown without parentheses)."""
    names: dict[str, str | None] = {}
    for name, params in SPAN.findall(API.read_text()):
        if params or name not in names:
            names[name] = params or None
    return names


def _instance_attributes(cls: type) -> set[str]:
    """Attributes a class's instances get: annotated, dataclass fields, or assigned in ``__init__``."""
    names: set[str] = set()
    for klass in cls.__mro__[:-1]:
        names |= set(vars(klass).get("__annotations__", {}))
        try:
            source = inspect.getsource(vars(klass)["__init__"])
        except (KeyError, OSError, TypeError):  # no __init__ of its own, or a generated one
            continue
        for line in source.splitlines():
            target, assigns, _ = line.partition(" = ")
            names |= set(re.findall(r"self\.(\w+)", target)) if assigns else set()
    return names


def _resolve(name: str):
    prefix, *parts = name.split(".")
    obj = OWNERS[prefix]
    for part in parts:
        if isinstance(obj, type) and not hasattr(obj, part) and part in _instance_attributes(obj):
            return NOT_A_CLASS_ATTRIBUTE
        obj = getattr(obj, part)
    return obj


def test_every_name_in_the_api_page_exists():
    missing = []
    for name in _documented():
        try:
            _resolve(name)
        except AttributeError:
            missing.append(name)
    assert not missing, f"docs/api.md documents names the code does not have: {missing}"


Parameter = inspect.Parameter
KINDS = {Parameter.POSITIONAL_ONLY: "positional", Parameter.POSITIONAL_OR_KEYWORD: "positional",
         Parameter.VAR_POSITIONAL: "*args", Parameter.KEYWORD_ONLY: "keyword",
         Parameter.VAR_KEYWORD: "**kwargs"}


def _parameters(params: str) -> list[tuple[str, str, object]]:
    """(name, kind, default) of a documented parameter list, read as a Python ``def``."""
    arguments = ast.parse(f"def f{params}: pass").body[0].args
    namespace = {"np": np, "mt": mt, "nn": nn}
    evaluate = lambda node: eval(compile(ast.Expression(node), "api.md", "eval"), namespace)
    positional = arguments.posonlyargs + arguments.args
    defaults = [Parameter.empty] * (len(positional) - len(arguments.defaults))
    defaults += [evaluate(d) for d in arguments.defaults]
    found = [(a.arg, "positional", d) for a, d in zip(positional, defaults)]
    if arguments.vararg:
        found.append((arguments.vararg.arg, "*args", Parameter.empty))
    found += [(a.arg, "keyword", Parameter.empty if d is None else evaluate(d))
              for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults)]
    if arguments.kwarg:
        found.append((arguments.kwarg.arg, "**kwargs", Parameter.empty))
    return found


def _actual_parameters(name: str, obj) -> list[tuple[str, str, object]]:
    if isinstance(obj, mt.Op):
        obj = obj.forward  # an op is called with what its forward takes
    params = list(inspect.signature(obj).parameters.values())
    if isinstance(_resolve(name.rsplit(".", 1)[0]), type) and params and params[0].name == "self":
        params = params[1:]  # a method, documented as called on an instance
    return [(p.name, KINDS[p.kind], p.default) for p in params]


def _signature_problem(name: str, params: str) -> str | None:
    obj = _resolve(name)
    documented = _parameters(params)
    if isinstance(obj, mt.Op) and isinstance(obj.forward, np.ufunc):
        # A NumPy ufunc's own parameter names are not the op's: compare the inputs only.
        inputs = [n for n, k, d in documented if k == "positional" and d is Parameter.empty]
        arity = obj.forward.nin
        return None if len(inputs) == len(documented) == arity else f"the op takes {arity} inputs"
    actual = _actual_parameters(name, obj)
    if [(n, k) for n, k, _ in documented] != [(n, k) for n, k, _ in actual]:
        return f"the code's parameters are {[(n, k) for n, k, _ in actual]}"
    for (param, _, shown), (_, _, default) in zip(documented, actual):
        if not (shown is default or shown == default):
            return f"{param} defaults to {default!r}"
    return None


def test_every_signature_in_the_api_page_is_the_codes():
    wrong = [f"{name}{params}: {problem}" for name, params in _documented().items()
             if params is not None and (problem := _signature_problem(name, params))]
    assert not wrong, "docs/api.md disagrees with the code:\n" + "\n".join(wrong)


def _defined_in(module) -> list[str]:
    """Public classes and functions a module defines itself (not what it imports)."""
    return [name for name, value in vars(module).items()
            if not name.startswith("_") and (inspect.isclass(value) or inspect.isfunction(value))
            and value.__module__ == module.__name__]


def _required() -> list[str]:
    """Every name a user reaches from ``mt`` and ``nn`` that the API page must document."""
    names = [f"mt.{n}" for n in mt.__all__] + [f"nn.{n}" for n in nn.__all__]
    for module in (nn.functional, nn.optim, nn.data, nn.manual):
        names += [f"nn.{module.__name__.split('.')[-1]}.{n}" for n in _defined_in(module)]
    return names


def _members(name: str, cls: type, documented_classes: list[type]) -> list[str]:
    """A class's own public attributes, except overrides of what a documented base class has."""
    bases = [base for base in cls.__mro__[1:] if base in documented_classes]
    return [f"{name}.{attr}" for attr in vars(cls)
            if not attr.startswith("_") and not any(hasattr(base, attr) for base in bases)]


def test_every_public_name_and_member_is_in_the_api_page():
    documented = _documented()
    classes = {name: obj for name in _required() if inspect.isclass(obj := _resolve(name))}
    missing = [name for name in _required() if name not in documented]
    for name, cls in classes.items():
        missing += [m for m in _members(name, cls, list(classes.values())) if m not in documented]
    assert not missing, f"docs/api.md does not document: {missing}"


def test_every_command_line_option_is_in_the_api_page():
    text = API.read_text()
    commands = next(a for a in nn.cli.make_parser()._actions if a.dest == "command")
    missing = [f"{command} {option}" for command, parser in commands.choices.items()
               for action in parser._actions for option in action.option_strings
               if option.startswith("--") and option != "--help" and option not in text]
    assert not missing and all(f"microtensor {c}" in text for c in commands.choices), missing


# -- redrawing the pictures ----------------------------------------------------------------------
def redraw_pictures() -> None:
    """Run each guide in a scratch folder and copy the pictures it draws into docs/images/."""
    for name in GUIDES:
        page = ROOT / name
        pictures = {Path(p).name for p in re.findall(r"\]\((images/[^)]+\.(?:png|svg))\)", page.read_text())}
        if not pictures:
            continue
        with tempfile.TemporaryDirectory() as folder:
            run_guide(page, Path(folder))
            for picture in sorted(pictures):
                drawn = Path(folder) / picture
                if drawn.exists():
                    shutil.copyfile(drawn, ROOT / "docs" / "images" / picture)
                    print(f"wrote docs/images/{picture}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--pictures"]:
        redraw_pictures()
    else:
        sys.exit(__doc__)
