"""The code blocks of README.md and docs/*.md run, and their links resolve.

Every fenced block is one test, named `FILE:LINE` (the line of its opening
fence). A file's blocks run in order in one temporary working directory,
laid out like the repository's parent (`../shared` is the shared data folder,
so `../shared/data/omniglot/...` resolves), so a block may use what an
earlier block of its file wrote. By language:

- `python`: the file's python blocks share one fresh namespace and run
  in this process.
- `bash`, `sh`, `shell`, `console`: run with `bash -eo pipefail`, with the
  running interpreter's `bin` folder (the virtual environment, so
  `keras-branch`) first on PATH and KERAS_HOME in a temporary folder. In a
  `console` block only the `$ ` lines run.
- `json`: parsed; an object with `routes` must load as a TreeSpec.
- `text`: a command-line synopsis; every `keras-branch COMMAND` line must
  name a real command and only options that command has.

Any other language, or none, fails the well-formedness test. An HTML comment
on the line before a block changes how it runs:

- `<!-- test: skip (reason) -->`: not run (an install, a multi-machine
  command); there may be only `MAX_SKIPPED` such blocks, each with a reason.
- `<!-- test: slow -->`: a block that takes more than about 20 s; it runs
  only with `--runslow`.

A block mentioning the shared Omniglot zip is skipped when the zip is absent.
Run one block alone with `-k "models.md:42"`: the earlier blocks of its file
run first (slow ones only under `--runslow`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import keras
import pytest

from conftest import OMNIGLOT_ZIP, REPO

MAX_SKIPPED = 6
SHELLS = ("bash", "sh", "shell", "console")
LANGUAGES = ("python", *SHELLS, "json", "text")
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHARED = OMNIGLOT_ZIP.parents[2]

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>.*)$")
MARKER = re.compile(r"^\s*<!--\s*test:\s*(?P<body>.*?)\s*-->\s*$")
SKIP_MARKER = re.compile(r"^skip\s*\((?P<reason>.*)\)$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    source: str
    marker: str | None = None  # "skip" or "slow"
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO).as_posix()}:{self.line}"


@dataclass
class Parsed:
    blocks: list[Block] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def parse(path: Path) -> Parsed:
    """The fenced blocks of one markdown file, with their markers and any problems."""
    result = Parsed()
    name = path.relative_to(REPO).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    pending: tuple[int, str, str] | None = None  # (line, kind, reason) of a marker
    i = 0
    while i < len(lines):
        text = lines[i]
        marker = MARKER.match(text)
        if marker:
            if pending:
                result.problems.append(f"{name}:{pending[0]}: marker not followed by a code block")
            body = marker.group("body")
            skip = SKIP_MARKER.match(body)
            if skip:
                pending = (i + 1, "skip", skip.group("reason").strip())
            elif body == "slow":
                pending = (i + 1, "slow", "")
            else:
                result.problems.append(f"{name}:{i + 1}: unknown marker {text.strip()!r}")
                pending = None
            i += 1
            continue
        fence = FENCE.match(text)
        if not fence:
            if pending and text.strip():
                result.problems.append(f"{name}:{pending[0]}: marker not followed by a code block")
                pending = None
            i += 1
            continue
        start, indent, close = i + 1, len(fence.group("indent")), fence.group("fence")
        lang = fence.group("info").strip().split(" ")[0].lower()
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(close):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i >= len(lines):
            result.problems.append(f"{name}:{start}: code block is never closed")
        i += 1
        block = Block(path, start, lang, "\n".join(body) + "\n")
        if pending:
            block.marker, block.reason = pending[1], pending[2]
            pending = None
        if lang not in LANGUAGES:
            result.problems.append(
                f"{name}:{start}: code block language {lang or '(none)'!r} is not one of "
                f"{LANGUAGES}"
            )
        result.blocks.append(block)
    if pending:
        result.problems.append(f"{name}:{pending[0]}: marker not followed by a code block")
    return result


PARSED = {path: parse(path) for path in DOC_FILES}
BLOCKS = [b for p in PARSED.values() for b in p.blocks]


def _param(block: Block):
    marks = []
    if block.marker == "skip":
        marks.append(pytest.mark.skip(reason=f"marked skip: {block.reason}"))
    elif block.marker == "slow":
        marks.append(pytest.mark.slow)
    return pytest.param(block, id=block.id, marks=marks)


# === Running blocks ===


class FileRun:
    """One markdown file's working directory, python namespace and progress."""

    def __init__(self, path: Path, root: Path):
        self.path = path
        self.root = root
        self.cwd = self.root / "work"
        self.cwd.mkdir()
        if SHARED.is_dir():
            (self.root / "shared").symlink_to(SHARED, target_is_directory=True)
        self.keras_home = self.root / "keras_home"
        self.keras_home.mkdir()
        self.namespace: dict = {"__name__": "__docs__"}
        self.done: set[int] = set()
        self.failed: list[str] = []


@pytest.fixture(scope="session")
def file_runs(tmp_path_factory) -> dict[Path, FileRun]:
    """One `FileRun` per markdown file, created when its first block runs."""

    class Runs(dict):
        def __missing__(self, path: Path) -> FileRun:
            self[path] = FileRun(path, tmp_path_factory.mktemp(f"docs_{path.stem}"))
            return self[path]

    return Runs()


def _enabled(block: Block, runslow: bool) -> bool:
    if block.marker == "skip" or (block.marker == "slow" and not runslow):
        return False
    return not _needs_missing_data(block)


def _needs_missing_data(block: Block) -> bool:
    return "shared/data/omniglot" in block.source and not OMNIGLOT_ZIP.exists()


def _shell_script(block: Block) -> str:
    if block.lang != "console":
        return block.source
    return "\n".join(line[2:] for line in block.source.splitlines() if line.startswith("$ "))


def _run_shell(block: Block, run: FileRun) -> None:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["KERAS_HOME"] = str(run.keras_home)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("MPLBACKEND", "Agg")
    timeout = 3600 if block.marker == "slow" else 600
    proc = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", _shell_script(block)], cwd=run.cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{block.id}: the shell block exited with status {proc.returncode}; output:\n"
            f"{proc.stdout[-6000:]}"
        )


def _run_python(block: Block, run: FileRun) -> None:
    code = compile(block.source, block.id, "exec")
    previous = os.getcwd()
    os.chdir(run.cwd)
    try:
        exec(code, run.namespace)
    finally:
        os.chdir(previous)
        keras.mixed_precision.set_global_policy("float32")


def _help_text(argv: list[str]) -> str:
    from keras_branch.cli import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            build_parser().parse_args([*argv, "--help"])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise AssertionError(f"`keras-branch {' '.join(argv)}` is not a command:\n"
                                     f"{out.getvalue()}") from None
    return out.getvalue()


def _check_synopsis(block: Block) -> None:
    commands: list[str] = []
    for line in block.source.splitlines():
        if line.startswith("keras-branch "):
            commands.append(line)
        elif line.startswith(" ") and commands:
            commands[-1] += " " + line.strip()
    assert commands, f"{block.id}: a text block must be a keras-branch synopsis"
    for command in commands:
        words = command.split()[1:]
        subcommands: list = [None]
        if words[0] == "zoo":  # `zoo list|show NAME|train NAME ...`: every subcommand named
            known = re.search(r"\{([a-z,]+)\}", _help_text(["zoo"])).group(1).split(",")
            subcommands = [w for token in words[1:] for w in token.split("|") if w in known]
        helps = [_help_text([words[0]] + ([sub] if sub else [])) for sub in subcommands]
        for option in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", command)):
            assert any(re.search(rf"(?<![\w-]){option}(?![\w-])", h) for h in helps), (
                f"{block.id}: `keras-branch {words[0]}` has no option {option}"
            )


def _check_json(block: Block) -> None:
    value = json.loads(block.source)
    if isinstance(value, dict) and "routes" in value:
        from keras_branch import TreeSpec

        TreeSpec.from_dict(value)


def _execute(block: Block, run: FileRun) -> None:
    if block.lang == "python":
        _run_python(block, run)
    elif block.lang in SHELLS:
        _run_shell(block, run)
    elif block.lang == "json":
        _check_json(block)
    elif block.lang == "text":
        _check_synopsis(block)
    else:
        raise AssertionError(f"{block.id}: cannot run a {block.lang!r} block")


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_code_block(block: Block, request, file_runs):
    if _needs_missing_data(block):
        pytest.skip(f"Omniglot data not found at {OMNIGLOT_ZIP}")
    runslow = request.config.getoption("--runslow")
    run = file_runs[block.path]
    # The earlier blocks of the file first, when this one runs alone (`-k`).
    for earlier in PARSED[block.path].blocks:
        if earlier.line >= block.line:
            break
        if earlier.line not in run.done and _enabled(earlier, runslow):
            run.done.add(earlier.line)
            try:
                _execute(earlier, run)
            except BaseException as err:
                run.failed.append(earlier.id)
                raise AssertionError(f"{earlier.id}, run before {block.id}, failed: {err}") from err
    run.done.add(block.line)
    try:
        _execute(block, run)
    except BaseException:
        run.failed.append(block.id)
        if run.failed[:-1]:
            print(f"note: earlier blocks of this file failed: {run.failed[:-1]}")
        raise


# === The documents themselves ===


INDENTED_COMMAND = re.compile(r"^ {4,}(\$ )?(keras-branch|pip|pytest|python) ")


def test_markdown_is_well_formed():
    problems = [p for parsed in PARSED.values() for p in parsed.problems]
    # A command in an indented block would escape these tests: fence it.
    for path in DOC_FILES:
        in_code = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FENCE.match(line):
                in_code = not in_code
            elif not in_code and INDENTED_COMMAND.match(line):
                problems.append(f"{path.name}:{number}: an indented command; use a fenced block")
    assert not problems, "\n".join(problems)
    assert (REPO / "docs").is_dir() and len(DOC_FILES) > 5


def test_skipped_blocks_are_few_and_say_why():
    skipped = [b for b in BLOCKS if b.marker == "skip"]
    assert len(skipped) <= MAX_SKIPPED, (
        f"{len(skipped)} blocks are marked skip (at most {MAX_SKIPPED}): "
        f"{[b.id for b in skipped]}"
    )
    unexplained = [b.id for b in skipped if len(b.reason) < 5]
    assert not unexplained, f"skip markers need a reason, `<!-- test: skip (why) -->`: {unexplained}"


def test_readme_is_an_entry_point_with_the_setup_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    install = 'pip install . && keras-branch demo'
    tests = 'pip install ".[test]" && pytest -n 2 --dist loadfile'
    assert install in readme and tests in readme
    # .ci/run runs the README's test command.
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci


def _slug(heading: str) -> str:
    # GitHub's anchors: lower case, punctuation dropped, spaces to hyphens.
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: dict[str, int] = {}
    result = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        slug = _slug(line.lstrip("#"))
        count = anchors.get(slug, 0)
        anchors[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_relative_links_resolve():
    broken = []
    for path in DOC_FILES:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            if not resolved.exists():
                broken.append(f"{path.name}: {target} (no file {resolved})")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                broken.append(f"{path.name}: {target} (no heading #{anchor})")
    assert not broken, "\n".join(broken)
