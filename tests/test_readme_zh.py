"""The Chinese pages stay in step with the English ones.

README.zh-CN.md is a section-by-section translation of README.md, with a
glossary added at its end, and every page of docs/ (docs/export.md, ...) has a
Chinese twin beside it (docs/export.zh-CN.md, ...). Commands and numbers are
what readers copy and compare, so they must be identical in both: when an
English page changes a command or a number, these tests fail, naming the page,
block, table row or section, until its Chinese twin is changed the same way. A
section moved from the README to a docs page keeps being checked there.

For every pair of pages (English, Chinese):
- Every fenced block with a language (```bash) is copied unchanged, and the
  Chinese page has no such block that the English one lacks; the blocks come
  in the same order, as many on each page.
- Every command written inline (`python ...`, `bash ...`) in a section's text
  or tables appears as often in the same section of the twin.
- The untagged block (the Layout file tree) lists the same paths, in the same
  order, with the same numbers; only its descriptions are translated.
- Headings come in the same order and at the same levels.
- The i-th table of one page has the i-th table's rows, and each row the same
  numbers (results, speed and model tables).
- Every number of a section's text also appears in the same section of the
  other page, in both directions.
- The README stays a guide: at most README_MAX_LINES lines, the studies in docs/.
- Each page links to its twin near the top; each docs page starts with a
  one-line title and links back to its README.
- Each Chinese paragraph is one line (a line break inside Chinese text renders
  as a stray space).
And across pages:
- The README of each language links to every docs page of that language.
- Every relative link of every page, `#anchor` included, points at a file and
  heading that exist.
- Each glossary entry points at a function, class, flag or file that exists.
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGLISH = "README.md"
CHINESE = "README.zh-CN.md"
CHINESE_SUFFIX = ".zh-CN.md"
GLOSSARY_HEADING = "## 术语对照 Glossary"
# Digits only: "0.199", "10,582" (10 and 582), "FCN-8s" (8), "2.21".
NUMBER = re.compile(r"\d+(?:\.\d+)?")
FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^(#+) ")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Lines at the top of each page in which the link to its twin must be.
TOP_LINES = 5
# Inline code that is a command a reader copies: `python ...`, `bash ...`.
INLINE_COMMAND = re.compile(r"`((?:python|bash)\s[^`]+)`")
# The README is the first screen and the learning path; studies go to docs/.
README_MAX_LINES = 300


def chinese_twin(english: str) -> str:
    return english[: -len(".md")] + CHINESE_SUFFIX


DOCS = sorted(
    os.path.relpath(path, ROOT).replace(os.sep, "/")
    for path in glob.glob(os.path.join(ROOT, "docs", "*.md"))
    if not path.endswith(CHINESE_SUFFIX)
)
PAIRS = [(ENGLISH, CHINESE), *((page, chinese_twin(page)) for page in DOCS)]
PAGES = [page for pair in PAIRS for page in pair]


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


def main_text(page: str) -> str:
    """What must match the page's twin: all of it, less README.zh-CN's glossary."""
    return chinese_main_text() if page == CHINESE else read(page)


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


def pair_id(pair: tuple[str, str]) -> str:
    return pair[0]


def test_every_docs_page_has_its_chinese_twin():
    assert DOCS, "docs/ has no English page"
    missing = [
        twin for _, twin in PAIRS if not os.path.isfile(os.path.join(ROOT, twin))
    ]
    assert not missing, f"Chinese twins missing: {missing}"
    orphans = sorted(
        os.path.relpath(path, ROOT).replace(os.sep, "/")
        for path in glob.glob(os.path.join(ROOT, "docs", f"*{CHINESE_SUFFIX}"))
    )
    orphans = [page for page in orphans if page not in dict(PAIRS).values()]
    assert not orphans, f"Chinese pages without an English page: {orphans}"


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_pages_link_to_each_other_at_the_top(pair):
    for name, other in (pair, pair[::-1]):
        top = "\n".join(read(name).splitlines()[:TOP_LINES])
        target = os.path.relpath(other, os.path.dirname(name) or ".")
        assert f"]({target})" in top, (
            f"{name}: link to {other} ({target}) missing from its first "
            f"{TOP_LINES} lines"
        )


@pytest.mark.parametrize("page", [page for pair in PAIRS[1:] for page in pair])
def test_docs_pages_start_with_a_title_and_a_link_back(page):
    lines = read(page).splitlines()
    assert lines and re.fullmatch(r"# \S.*", lines[0]), (
        f"{page}: the first line must be its title, '# ...'"
    )
    assert len(lines) > 1 and not lines[1].strip(), (
        f"{page}: the title must be one line, followed by an empty line"
    )
    readme = CHINESE if page.endswith(CHINESE_SUFFIX) else ENGLISH
    top = "\n".join(lines[:TOP_LINES])
    assert f"](../{readme})" in top, (
        f"{page}: link back to {readme} (../{readme}) missing from its first "
        f"{TOP_LINES} lines"
    )


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_every_command_block_is_copied_unchanged(pair):
    english, chinese = pair
    english_blocks = fenced_blocks(read(english))
    chinese_blocks = fenced_blocks(main_text(chinese))
    copied = {block.body for block in chinese_blocks}
    for block in english_blocks:
        if block.language:
            first = block.body.splitlines()[0] if block.body else ""
            assert block.body in copied, (
                f"{chinese} lacks the ```{block.language} block of {english} line "
                f"{block.line} (first line {first!r}): copy it unchanged"
            )
    originals = {block.body for block in english_blocks}
    for block in chinese_blocks:
        if block.language:
            first = block.body.splitlines()[0] if block.body else ""
            assert block.body in originals, (
                f"{chinese} line {block.line}: its ```{block.language} block (first "
                f"line {first!r}) is not in {english}: remove it or copy {english}'s"
            )


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_command_blocks_come_in_the_same_order(pair):
    english_page, chinese_page = pair
    english = [b for b in fenced_blocks(read(english_page)) if b.language]
    chinese = [b for b in fenced_blocks(main_text(chinese_page)) if b.language]
    assert len(chinese) == len(english), (
        f"{english_page} has {len(english)} command block(s), {chinese_page} "
        f"has {len(chinese)}"
    )
    for block, translated in zip(english, chinese):
        assert translated.body == block.body, (
            f"{chinese_page} line {translated.line}: the block here must be "
            f"{english_page}'s block of line {block.line}, in the same order"
        )


def inline_commands(text: str) -> Counter:
    """The inline `python ...` and `bash ...` commands of a section, tables too.

    A command wrapped across lines of English text is one line in Chinese text:
    spaces and line breaks count the same.
    """
    return Counter(" ".join(found.split()) for found in INLINE_COMMAND.findall(text))


def section_texts(text: str) -> list[tuple[str, int, str]]:
    """(heading, line, all text outside fenced blocks) for every section."""
    found: list[tuple[str, int, str]] = []
    for number, line in lines_outside_fences(text):
        if HEADING.match(line) or not found:
            found.append((line if HEADING.match(line) else "", number, ""))
        heading, start, body = found[-1]
        found[-1] = (heading, start, body + line + "\n")
    return found


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_every_inline_command_appears_in_the_same_section(pair):
    english_page, chinese_page = pair
    english = section_texts(read(english_page))
    chinese = section_texts(main_text(chinese_page))
    for (heading, line, body), (zh_heading, zh_line, zh_body) in zip(english, chinese):
        wanted, found = inline_commands(body), inline_commands(zh_body)
        assert found == wanted, (
            f"{chinese_page} section {zh_heading!r} (line {zh_line}) lacks "
            f"{sorted((wanted - found).elements())} of {english_page} section "
            f"{heading!r} (line {line}) and has {sorted((found - wanted).elements())}"
        )


def test_readme_is_a_guide_not_a_lab_notebook():
    for page in (ENGLISH, CHINESE):
        lines = len(main_text(page).splitlines())
        assert lines <= README_MAX_LINES, (
            f"{page} has {lines} lines (at most {README_MAX_LINES}): move studies, "
            "run-by-run tables and timings to a page of docs/ and link it"
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


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_file_tree_lists_the_same_files(pair):
    english_page, chinese_page = pair
    english = [b for b in fenced_blocks(read(english_page)) if not b.language]
    chinese = [b for b in fenced_blocks(main_text(chinese_page)) if not b.language]
    assert len(chinese) == len(english), (
        f"{english_page} has {len(english)} untagged block(s) (file trees), "
        f"{chinese_page} has {len(chinese)}"
    )
    for block, translated in zip(english, chinese):
        expected, actual = file_tree(block.body), file_tree(translated.body)
        paths = [path for path, _ in expected]
        found = [path for path, _ in actual]
        assert found == paths, (
            f"{chinese_page} line {translated.line}: the file tree must list the "
            f"paths of {english_page} line {block.line} in the same order; only in "
            f"{english_page}: {sorted(set(paths) - set(found))}, only in "
            f"{chinese_page}: {sorted(set(found) - set(paths))}"
        )
        for (path, wanted), (_, found) in zip(expected, actual):
            assert found == wanted, (
                f"{chinese_page} file tree, {path}: numbers {describe(found)!r}, "
                f"{english_page} has {describe(wanted)!r}"
            )


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_same_sections_in_the_same_order(pair):
    english_page, chinese_page = pair
    english = sections(read(english_page))
    chinese = sections(main_text(chinese_page))
    levels = [level(section.heading) for section in english]
    assert [level(section.heading) for section in chinese] == levels, (
        f"{chinese_page} must have one heading per heading of {english_page}, in "
        f"order and at the same level; {english_page} has: "
        + " / ".join(section.heading for section in english)
    )


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_every_table_number_is_the_same(pair):
    english_page, chinese_page = pair
    english, chinese = tables(read(english_page)), tables(main_text(chinese_page))
    assert len(chinese) == len(english), (
        f"{english_page} has {len(english)} tables, {chinese_page} "
        f"(before any glossary) has {len(chinese)}"
    )
    for table, translated in zip(english, chinese):
        where = f"the table of {english_page} line {table.line} ({table.heading})"
        assert len(translated.rows) == len(table.rows), (
            f"{chinese_page} line {translated.line}: {len(translated.rows)} rows, "
            f"{where} has {len(table.rows)}"
        )
        for (line, row), (zh_line, zh_row) in zip(table.rows, translated.rows):
            wanted, found = numbers(row), numbers(zh_row)
            assert found == wanted, (
                f"{chinese_page} line {zh_line} (row {first_cell(zh_row)!r} of "
                f"{where}) lacks [{describe(wanted - found)}] of {english_page} line "
                f"{line} and has [{describe(found - wanted)}] that it does not"
            )


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_every_number_of_the_text_appears_in_the_same_section(pair):
    english_page, chinese_page = pair
    english, chinese = sections(read(english_page)), sections(main_text(chinese_page))
    for section, translated in zip(english, chinese):
        for (page, one), (other_page, other) in (
            ((english_page, section), (chinese_page, translated)),
            ((chinese_page, translated), (english_page, section)),
        ):
            missing = set(numbers(one.prose)) - set(numbers(other.prose))
            assert not missing, (
                f"{other_page} section {other.heading!r} (line {other.line}) lacks "
                f"{', '.join(sorted(missing))} from {page} section {one.heading!r} "
                f"(line {one.line})"
            )


@pytest.mark.parametrize("page", [chinese for _, chinese in PAIRS])
def test_chinese_paragraphs_are_one_line(page):
    previous = (0, "")
    for number, line in lines_outside_fences(read(page)):
        continues = line.strip() and not re.match(r"\s*(- |\||#|!\[)", line)
        if continues and previous[1].strip() and previous[0] == number - 1:
            assert previous[1].startswith("|"), (
                f"{page} line {number} continues the paragraph of line "
                f"{previous[0]}: write each paragraph on one line"
            )
        previous = (number, line)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped."""
    text = re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower())
    return text.replace(" ", "-")


def anchors(page: str) -> set[str]:
    found: set[str] = set()
    for _, line in lines_outside_fences(read(page)):
        if HEADING.match(line):
            base = slug(line)
            anchor, count = base, 0
            while anchor in found:
                count += 1
                anchor = f"{base}-{count}"
            found.add(anchor)
    return found


def relative_links(page: str) -> list[tuple[int, str]]:
    return [
        (number, target)
        for number, line in lines_outside_fences(read(page))
        for target in LINK.findall(line)
        if not re.match(r"[a-z]+://|mailto:", target)
    ]


@pytest.mark.parametrize("page", PAGES)
def test_every_link_points_at_a_file_and_heading_that_exist(page):
    for number, target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = page
        if path:
            linked = os.path.normpath(os.path.join(os.path.dirname(page), path))
        assert os.path.exists(os.path.join(ROOT, linked)), (
            f"{page} line {number}: link to {target!r}, but {linked} does not exist"
        )
        if anchor:
            assert linked.endswith(".md") and anchor in anchors(linked), (
                f"{page} line {number}: link to {target!r}, but {linked} has no "
                f"heading with the anchor #{anchor}"
            )


def test_each_readme_links_to_every_docs_page_of_its_language():
    for readme, pages in (
        (ENGLISH, [english for english, _ in PAIRS[1:]]),
        (CHINESE, [chinese for _, chinese in PAIRS[1:]]),
    ):
        linked = {target.partition("#")[0] for _, target in relative_links(readme)}
        missing = [page for page in pages if page not in linked]
        assert not missing, f"{readme} does not link to {missing}"


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
