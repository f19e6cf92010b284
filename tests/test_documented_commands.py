"""Every training command the README, the docs pages and the scripts' docstrings
show is one that the script's parser accepts.

These are the commands readers copy: a flag renamed or a choice dropped must
fail here, naming the page and the command, not on a reader's machine after
the download.
"""

from __future__ import annotations

import glob
import importlib
import os
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("fcn", "unet", "segnet", "deeplab")
PAGES = sorted(
    os.path.relpath(path, ROOT)
    for pattern in ("README*.md", "docs/*.md", "*_train.py")
    for path in glob.glob(os.path.join(ROOT, pattern))
)


def documented_commands(page: str) -> list[tuple[str, list[str]]]:
    """(script, flags) of each `python SCRIPT_train.py FLAGS` on the page.

    Continued lines are joined; a command ends at the end of its line, an
    inline-code backtick, a table bar, `&&`, a pipe or a comment.
    """
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        for script in SCRIPTS:
            for rest in line.split(f"python {script}_train.py")[1:]:
                for end in ("`", "|", "&", "#"):
                    rest = rest.split(end)[0]
                if rest.count("'") % 2:  # Inside a quoted remote command.
                    rest = rest.rstrip().rstrip("'")
                commands.append((script, shlex.split(rest)))
    return commands


def test_the_pages_show_commands_of_every_script():
    shown = {script for page in PAGES for script, _ in documented_commands(page)}
    assert shown == set(SCRIPTS)


@pytest.mark.parametrize("page", PAGES)
def test_every_documented_command_parses(page):
    for script, flags in documented_commands(page):
        module = importlib.import_module(f"{script}_train")
        try:
            module.parse_args(flags)
        except SystemExit:
            pytest.fail(f"{page}: python {script}_train.py {shlex.join(flags)}")
