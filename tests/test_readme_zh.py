"""README.zh-CN.md stays in step with README.md.

The Chinese README is a section-by-section translation of the English one, with
a glossary added at its end. Commands and numbers are what readers copy and
compare, so they must be identical in both: when README.md changes a command or
a number, these tests fail, naming the block, table row or section, until
README.zh-CN.md is changed the same way.

- Every fenced block with a language (```bash) is copied unchanged.
- The untagged block (the Layout file tree) lists the same paths, in the same
  order, with the same numbers; only its descriptions are translated.
- Headings come in the same order and at the same levels.
- The i-th table of one README has the i-th table's rows, and each row the same
  numbers (results, speed and model tables).
- Every number of a section's text also appears in the same section in Chinese.
- Each glossary entry points at a function, class, flag or file that exists.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGLISH = "README.md"
CHINESE = "README.zh-CN.md"
GLOSSARY_HEADING = "## 术语对照 Glossary"
# Digits only: "0.199", "10,582" (10 and 582), "FCN-8s" (8), "2.21".
NUMBER = re.compile(r"\d+(?:\.\d+)?")
FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^(#+) ")
# Lines at the top of each README in which the link to the other must be.
TOP_LINES = 5


@dataclass
class Block:
    language: str
    body: str
    line: int


@dataclass
class Section:
    heading: str
    line: int
    prose: str


@dataclass
class Table:
    heading: str
    line: int
    rows: list[tuple[int, str]]  # (line number, row text), separator row dropped


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as file:
        return file.read()


def chinese_main_text() -> str:
    """README.zh-CN.md without its glossary, the one section README.md lacks."""
    text = read(CHINESE)
    start = text.find(f"\n{GLOSSARY_HEADING}\n")
    assert start >= 0, f"{CHINESE} has no glossary section {GLOSSARY_HEADING!r}"
    return text[: start + 1]


def glossary_text() -> str:
    text = read(CHINESE)
    return text[text.find(f"\n{GLOSSARY_HEADING}\n") :]


def fenced_blocks(text: str) -> list[Block]:
    return [
        Block(match[1], match[2], text.count("\n", 0, match.start()) + 1)
        for match in FENCE.finditer(text)
    ]


def lines_outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) for every line that is not inside a fenced block."""
    lines, inside = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            inside = not inside
        elif not inside:
            lines.append((number, line))
    return lines


def sections(text: str) -> list[Section]:
    """Split at headings; a section's prose leaves out its code and tables."""
    found: list[Section] = []
    for number, line in lines_outside_fences(text):
        if HEADING.match(line) or not found:
            found.append(Section(line if HEADING.match(line) else "", number, ""))
        if not line.startswith("|"):
            found[-1].prose += line + "\n"
    return found


def tables(text: str) -> list[Table]:
    found: list[Table] = []
    heading, previous = "", None
    for number, line in lines_outside_fences(text):
        if HEADING.match(line):
            heading = line
        if line.startswith("|"):
            if previous is None or previous + 1 != number:
                found.append(Table(heading, number, []))
            if not re.fullmatch(r"[|\s:-]+", line):
                found[-1].rows.append((number, line))
            previous = number
    return found


def numbers(text: str) -> Counter:
    return Counter(NUMBER.findall(text))


def first_cell(row: str) -> str:
    return row.strip("|").split("|")[0].strip()


def level(heading: str) -> int:
    return len(heading) - len(heading.lstrip("#"))


def describe(counter: Counter) -> str:
    return ", ".join(sorted(counter.elements()))


def test_readmes_link_to_each_other_at_the_top():
    for name, other in ((ENGLISH, CHINESE), (CHINESE, ENGLISH)):
        top = "\n".join(read(name).splitlines()[:TOP_LINES])
        assert f"]({other})" in top, (
            f"{name}: link to {other} missing from its first {TOP_LINES} lines"
        )


def test_every_command_block_is_copied_unchanged():
    chinese = {block.body for block in fenced_blocks(chinese_main_text())}
    for block in fenced_blocks(read(ENGLISH)):
        if block.language:
            first = block.body.splitlines()[0] if block.body else ""
            assert block.body in chinese, (
                f"{CHINESE} lacks the ```{block.language} block of {ENGLISH} line "
                f"{block.line} (first line {first!r}): copy it unchanged"
            )


def file_tree(body: str) -> list[tuple[str, Counter]]:
    """(path, numbers of its description) per entry; indented lines continue one."""
    entries: list[tuple[str, Counter]] = []
    for line in body.splitlines():
        if line[:1].isspace():
            entries[-1][1].update(numbers(line))
        elif line.strip():
            path, _, description = line.partition(" ")
            entries.append((path, numbers(description)))
    return entries


def test_file_tree_lists_the_same_files():
    english = [block for block in fenced_blocks(read(ENGLISH)) if not block.language]
    chinese = [b for b in fenced_blocks(chinese_main_text()) if not b.language]
    assert len(chinese) == len(english), (
        f"{ENGLISH} has {len(english)} untagged block(s) (file trees), "
        f"{CHINESE} has {len(chinese)}"
    )
    for block, translated in zip(english, chinese):
        expected, actual = file_tree(block.body), file_tree(translated.body)
        paths = [path for path, _ in expected]
        found = [path for path, _ in actual]
        assert found == paths, (
            f"{CHINESE} line {translated.line}: the file tree must list the paths of "
            f"{ENGLISH} line {block.line} in the same order; only in {ENGLISH}: "
            f"{sorted(set(paths) - set(found))}, only in {CHINESE}: "
            f"{sorted(set(found) - set(paths))}"
        )
        for (path, wanted), (_, found) in zip(expected, actual):
            assert found == wanted, (
                f"{CHINESE} file tree, {path}: numbers {describe(found)!r}, "
                f"{ENGLISH} has {describe(wanted)!r}"
            )


def test_same_sections_in_the_same_order():
    english = sections(read(ENGLISH))
    chinese = sections(chinese_main_text())
    levels = [level(section.heading) for section in english]
    assert [level(section.heading) for section in chinese] == levels, (
        f"{CHINESE} must have one heading per heading of {ENGLISH}, in order and at "
        f"the same level; {ENGLISH} has: "
        + " / ".join(section.heading for section in english)
    )


def test_every_table_number_is_the_same():
    english, chinese = tables(read(ENGLISH)), tables(chinese_main_text())
    assert len(chinese) == len(english), (
        f"{ENGLISH} has {len(english)} tables, {CHINESE} (before the glossary) "
        f"has {len(chinese)}"
    )
    for table, translated in zip(english, chinese):
        where = f"the table of {ENGLISH} line {table.line} ({table.heading})"
        assert len(translated.rows) == len(table.rows), (
            f"{CHINESE} line {translated.line}: {len(translated.rows)} rows, "
            f"{where} has {len(table.rows)}"
        )
        for (line, row), (zh_line, zh_row) in zip(table.rows, translated.rows):
            wanted, found = numbers(row), numbers(zh_row)
            assert found == wanted, (
                f"{CHINESE} line {zh_line} (row {first_cell(zh_row)!r} of {where}) "
                f"lacks [{describe(wanted - found)}] of {ENGLISH} line {line} and "
                f"has [{describe(found - wanted)}] that it does not"
            )


def test_every_number_of_the_text_appears_in_the_same_section():
    english, chinese = sections(read(ENGLISH)), sections(chinese_main_text())
    for section, translated in zip(english, chinese):
        missing = set(numbers(section.prose)) - set(numbers(translated.prose))
        assert not missing, (
            f"{CHINESE} section {translated.heading!r} (line {translated.line}) "
            f"lacks {', '.join(sorted(missing))} from {ENGLISH} section "
            f"{section.heading!r} (line {section.line})"
        )


def python_source() -> str:
    """All project code outside tests/, where glossary entries must point."""
    texts = []
    for folder in (ROOT, os.path.join(ROOT, "common")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                texts.append(read(os.path.relpath(os.path.join(folder, name), ROOT)))
    return "\n".join(texts)


def glossary_references() -> list[str]:
    """The `code` items of the glossary's third column ("where in the code")."""
    rows = [row for table in tables(glossary_text()) for _, row in table.rows[1:]]
    assert len(rows) >= 10, f"{CHINESE}: the glossary table has {len(rows)} rows"
    return [
        item for row in rows for item in re.findall(r"`([^`]+)`", row.split("|")[3])
    ]


def is_real(item: str, source: str) -> bool:
    """A flag the scripts define, a file, a module's def/class/constant, or a
    name the code uses (Keras classes such as `Conv2DTranspose`)."""
    if item.startswith("--"):
        return f'"{item}"' in source
    if item.endswith(".py") or "/" in item:
        return os.path.exists(os.path.join(ROOT, item))
    if "." in item:
        module, _, name = item.rpartition(".")
        path = os.path.join(ROOT, *module.split(".")) + ".py"
        definition = rf"^(def|class) {name}\b|^{name} ="
        return os.path.exists(path) and bool(
            re.search(definition, read(path), re.MULTILINE)
        )
    return bool(re.search(rf"\b{item}\b", source))


def test_glossary_points_at_real_code():
    source = python_source()
    unknown = [item for item in glossary_references() if not is_real(item, source)]
    assert not unknown, f"{CHINESE} glossary names code that does not exist: {unknown}"
