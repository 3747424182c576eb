"""Every example in README.md and docs/*.md runs as pasted.

The examples are read from the Markdown when the tests run. The rules:

- A page is one test. Its blocks run in order, in one fresh directory, with a fresh HOME
  (and XDG_CACHE_HOME, XDG_CONFIG_HOME) there, no PARMAP_* variable, no standard input,
  and this interpreter's ``bin`` first on PATH (``python``, ``parmap``, ``dask`` are the
  ones of the environment under test, activated or not).
- ```python: the block is saved to a file and run as ``python FILE``, as a user pastes
  it into a script; it must exit with 0. If its first line is a comment naming a file
  (``# pi.py``), it is saved under that name and not run by itself: a later block of
  the page runs it (``python pi.py``), as the page tells the reader to.
- ```bash: each line that is not blank or a comment is a command (a trailing ``\\``
  joins the next line), run with ``bash -c``; each must exit with 0.
- ```console: a line starting with ``$ `` is a command; the lines after it, up to the
  next command, are what it prints on stdout, compared line by line. Each must exit 0.
- Markers, on the last non-blank line before a block:
  ``<!-- docs-test: skip (REASON) -->`` skips the block; the reason is required, and
  is for blocks that cannot run here by nature (a cluster address, other hosts, a
  signature listing). ``<!-- docs-test: continue -->`` before a python block runs it
  together with the page's previous python block, as one program (that one does not
  also run alone).
- Each command has a deadline, and every process it started must be gone a few
  seconds after it ends (the census: each run carries a marker in its environment,
  which every process it starts inherits).
Other blocks (no language, ``text``, ``toml``...) are listings and do not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = ("python", "bash", "console")
MARK = "DOCS_TEST_RUN"
DEADLINE = 240.0  # one command; a page gets the sum over its commands
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<verb>\w+)\s*(?:\((?P<why>.*)\))?\s*-->$")
NAMED = re.compile(r"^#\s*(?P<name>[\w.-]+\.py)\s*$")


@dataclass
class Block:
    """One fenced block of a page."""

    page: Path
    line: int  # of the opening fence, from 1
    lang: str
    text: str
    marker: str = ""  # "skip", "continue" or ""
    why: str = ""

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, each with the marker on the line before it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i, before = [], 0, ""
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            before = lines[i].strip() or before
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        text = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
        block = Block(page, i + 1, fence["lang"], text)
        marker = MARKER.match(before)
        if marker:
            block.marker, block.why = marker["verb"], (marker["why"] or "").strip()
        blocks.append(block)
        before, i = "", end + 1
    return blocks


def bash_commands(text: str) -> list[str]:
    joined = text.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def console_commands(text: str) -> list[tuple[str, list[str]]]:
    """(command, the stdout lines shown after it) for each ``$ `` line."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line.rstrip())
    return steps


def environment(workdir: Path, mark: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARMAP_")}
    home = workdir / "home"
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_CONFIG_HOME=str(home / ".config"),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONUNBUFFERED="1",
        **{MARK: mark},
    )
    return env


def marked(mark: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARK) == mark and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            pass
    return found


def run(command: list[str], workdir: Path, where: str) -> subprocess.CompletedProcess[str]:
    """Run one command of a block. Fails on an error, a timeout or a process left behind."""
    mark = uuid.uuid4().hex
    try:
        done = subprocess.run(
            command,
            cwd=workdir,
            env=environment(workdir, mark),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
    except subprocess.TimeoutExpired:
        for process in marked(mark):
            process.kill()
        pytest.fail(f"{where}: {command[-1]!r} did not finish within {DEADLINE:.0f} s")
    deadline = time.monotonic() + 20
    while marked(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [" ".join(p.cmdline())[:100] for p in marked(mark)]
    for process in marked(mark):
        process.kill()
    assert not left, f"{where}: processes left behind by {command[-1]!r}: {left}"
    assert done.returncode == 0, (
        f"{where}: {command[-1]!r} exited with {done.returncode}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-5000:]}"
    )
    return done


def file_name(text: str) -> str | None:
    """The file a python block names on its first line (``# pi.py``), if any."""
    named = NAMED.match(text.splitlines()[0]) if text.strip() else None
    return named["name"] if named else None


def run_python(text: str, workdir: Path, where: str, index: int) -> None:
    name = file_name(text)
    (workdir / (name or f"block{index}.py")).write_text(text)
    if name is None:
        run([sys.executable, f"block{index}.py"], workdir, where)


def run_console(text: str, workdir: Path, where: str) -> None:
    for command, shown in console_commands(text):
        done = run(["bash", "-c", command], workdir, where)
        printed = [line.rstrip() for line in done.stdout.splitlines()]
        assert printed == shown, (
            f"{where}: {command!r} printed {printed}, the page shows {shown}\n"
            f"--- stderr\n{done.stderr[-3000:]}"
        )


def runnable(page: Path) -> list[tuple[Block, str]]:
    """The blocks to run, with the text to run (continued python blocks joined)."""
    todo: list[tuple[Block, str]] = []
    for block in read_blocks(page):
        if block.lang not in RUNNABLE or block.marker == "skip":
            continue
        if block.marker == "continue":
            previous = next(i for i in range(len(todo) - 1, -1, -1) if todo[i][0].lang == "python")
            todo.append((block, todo.pop(previous)[1] + block.text))
        else:
            todo.append((block, block.text))
    return todo


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
@pytest.mark.timeout(1800)
def test_examples_run_as_pasted(page, tmp_path, census):
    (tmp_path / "home").mkdir()
    todo = runnable(page)
    for index, (block, text) in enumerate(todo):
        if block.lang == "python":
            run_python(text, tmp_path, block.where(), index)
        elif block.lang == "bash":
            for command in bash_commands(text):
                run(["bash", "-c", command], tmp_path, block.where())
        else:
            run_console(text, tmp_path, block.where())


def test_markers_are_well_formed():
    """A skip says why; a marker stands before a block it applies to; no stray markers;
    a file a block is saved as is run by a later block."""
    for page in PAGES:
        blocks = read_blocks(page)
        for block in blocks:
            if block.marker == "skip":
                assert block.why, f"{block.where()}: a skip marker must give its reason"
                assert block.lang in RUNNABLE, f"{block.where()}: skips a block that never runs"
            elif block.marker == "continue":
                assert block.lang == "python", f"{block.where()}: only python blocks continue"
                earlier = [b for b in blocks if b.line < block.line and b.lang == "python"]
                assert earlier, f"{block.where()}: continues no earlier python block"
            else:
                assert not block.marker, f"{block.where()}: unknown marker {block.marker!r}"
        for block, text in runnable(page):
            name = file_name(text) if block.lang == "python" else None
            later = [t for b, t in runnable(page) if b.line > block.line]
            assert name is None or any(name in t for t in later), (
                f"{block.where()}: saved as {name}, which no later block runs"
            )
        used = sum(1 for b in blocks if b.marker)
        written = len(re.findall(r"<!--\s*docs-test:", page.read_text(encoding="utf-8")))
        assert used == written, f"{page.name}: a docs-test marker is not just before a block"


def test_the_rules_read_markdown_as_documented(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n<!-- docs-test: skip (needs a cluster) -->\n```bash\nray start\n```\n\n"
        "```python\n# a.py\nx = 1\n```\n<!-- docs-test: continue -->\n```python\nprint(x)\n```\n"
        "- item\n\n  ```console\n  $ echo hi\n  hi\n  $ true\n  ```\n```\nnot run\n```\n"
    )
    blocks = read_blocks(page)
    assert [(b.lang, b.marker, b.why) for b in blocks] == [
        ("bash", "skip", "needs a cluster"),
        ("python", "", ""),
        ("python", "continue", ""),
        ("console", "", ""),
        ("", "", ""),
    ]
    todo = runnable(page)
    assert [(b.line, text) for b, text in todo] == [
        (13, "# a.py\nx = 1\nprint(x)\n"),
        (18, "$ echo hi\nhi\n$ true\n"),
    ]
    assert console_commands(todo[1][1]) == [("echo hi", ["hi"]), ("true", [])]
    assert bash_commands("# c\nA=1 \\\n  python x.py\n\nls\n") == ["A=1    python x.py", "ls"]
