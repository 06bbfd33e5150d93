"""Issue 26 item 6: every `sanitizer ...` command in the README and docs/ names a command and
flags that exist (the README once said `report --out`; the flag is `--output`). Parsed from the
fenced shell blocks and checked against the CLI's own click tree, so a renamed flag fails here
before a reader finds it. The README's runnable blocks are also executed: test_docs_run.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from sanitizer_cli.main import app

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, body) of each fenced block in a shell-like or unnamed language."""
    blocks, lang, start, body = [], None, 0, []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip() or "-", n + 1, []
            else:
                if lang in ("bash", "sh", "shell", "console", "text", "-"):
                    blocks.append((start, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


def commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) of each `sanitizer ...` invocation in the file's shell blocks."""
    found = []
    for line0, block in shell_blocks(path.read_text()):
        joined = re.sub(r"\\\n\s*", " ", block)
        for i, line in enumerate(joined.splitlines()):
            line = line.split(" #")[0].strip().removeprefix("$ ")
            for part in re.split(r";|&&|\|\|?|\$\(", line):
                part = part.strip().rstrip(")")
                if part.startswith("sanitizer "):
                    found.append((line0 + i, part))
    return found


CASES = [(p, n, c) for p in DOCS for n, c in commands(p)]


def test_the_docs_have_commands_to_check() -> None:
    assert len(CASES) >= 20, [c for _, _, c in CASES]


@pytest.mark.parametrize(
    ("path", "line", "command"), CASES, ids=[f"{p.name}:{n}" for p, n, _ in CASES]
)
def test_each_documented_command_exists_with_its_flags(path: Path, line: int, command: str) -> None:
    root = typer.main.get_command(app)
    try:
        words = shlex.split(command)[1:]
    except ValueError:  # an unbalanced quote in a multi-line JSON example: check the head only
        words = command.split()[1:]
    cmd, ctx_words = root, []
    while words and hasattr(cmd, "commands") and words[0] in cmd.commands:
        ctx_words.append(words[0])
        cmd = cmd.commands[words.pop(0)]
    assert not hasattr(cmd, "commands"), f"{path.name}:{line}: `{command}` names no command"
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for w in words:
        w = w.strip("[]")
        if w.startswith("-") and not re.fullmatch(r"-\d.*", w):
            flag = w.split("=")[0].split("|")[0]
            if flag in ("-", "--"):
                continue
            assert flag in known, (
                f"{path.name}:{line}: `sanitizer {' '.join(ctx_words)}` has no {flag} "
                f"(it has {', '.join(sorted(known))})"
            )
