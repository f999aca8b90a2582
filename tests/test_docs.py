"""The project's own documents travel with the code (issue 16 item 7): docs/theory.md and docs/design.md
exist, everything that cites them cites a section that exists, and nothing points outside the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"

#: Where the code base cites the documents: sources, headers, build files and Markdown.
SOURCES = ("smoothgen", "engine", "kernels", "csrc", "benchmarks", "tests", "docs")
SUFFIXES = {".py", ".md", ".h", ".cpp", ".txt", ".toml", ".cmake", ".in"}
TOP_LEVEL = ("README.md", "CMakeLists.txt", "setup.py", "pyproject.toml", "Makefile")

#: A citation: "docs/theory.md" then, up to the end of its parenthesis, clause or line, section numbers
#: written "§4g", "§4(g)", "section 6" or "sections 1, 2 and 6".
CITATION = re.compile(r"docs/theory\.md(?=([^()\n;]{0,80}))")
SECTION_SIGN = re.compile(r"§\s*(\d+)([a-z]?)")
SECTION_WORDS = re.compile(r"\bsections?\s+(\d+(?:\s*(?:,|and)\s*\d+)*)")


def _files() -> list[Path]:
    files = [ROOT / name for name in TOP_LEVEL if (ROOT / name).is_file()]
    for folder in SOURCES:
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in SUFFIXES
                  and "__pycache__" not in p.parts]
    return files


def _sections() -> set[str]:
    """Section ids of docs/theory.md from its headings: "## §1 ..." -> "1", "### §4g ..." -> "4g"."""
    return {m.group(1) for m in re.finditer(r"^#+\s*§(\d+[a-z]?)\b", THEORY.read_text(encoding="utf-8"), re.M)}


def _citations(text: str) -> list[str]:
    cited = []
    text = re.sub(r"§(\d+)\(([a-z])\)", r"§\1\2", text)  # "§4(d)" is "§4d"
    for match in CITATION.finditer(text):
        tail = re.split(r"docs/theory\.md|\.\s", match.group(1))[0]  # up to the next citation or sentence
        cited += [number + (letter or "") for number, letter in SECTION_SIGN.findall(tail)]
        for group in SECTION_WORDS.findall(tail):
            cited += re.findall(r"\d+", group)
    return cited


def test_the_documents_exist_with_the_sections_the_code_was_written_against():
    assert (ROOT / "docs" / "design.md").is_file()
    assert _sections() >= {"1", "2", "3", "4", "4a", "4b", "4c", "4d", "4e", "4f", "4g", "5", "6", "7"}


def test_the_citation_parser_reads_every_form_used():
    text = ("(docs/theory.md §4a, §4c, §4e) docs/theory.md sections 1, 2 and 6. docs/theory.md §2 with §4g; "
            "docs/theory.md §4(d). (docs/theory.md: σ' ≤ σ) docs/theory.md section 3)")
    assert _citations(text) == ["4a", "4c", "4e", "1", "2", "6", "2", "4g", "4d", "3"]


def test_every_cited_section_of_docs_theory_exists():
    sections = _sections()
    missing, count = [], 0
    for path in _files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for section in _citations(text):
            count += 1
            if section not in sections:
                missing.append(f"{path.relative_to(ROOT)}: §{section}")
    assert count > 50, "the citations were not found: the parser or the file list is broken"
    assert missing == [], missing


@pytest.mark.parametrize("stale", ["../shared/", "THEORY.md", "DESIGN.md"])
def test_nothing_points_at_documents_outside_the_repository(stale):
    hits = [str(p.relative_to(ROOT)) for p in _files() if p != Path(__file__)
            and stale in p.read_text(encoding="utf-8", errors="replace")]
    assert hits == []


def test_readme_links_the_documents():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/theory.md)" in readme and "](docs/design.md)" in readme


def _readme_block(heading: str) -> str:
    """The first ```python block under a README heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(f"\n## {heading}\n"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python"))]


def test_the_readme_engine_block_runs_as_written():
    """Issue 25's second hour: the Engine block used its smoother after the `with Scheduler` block had closed
    it (SchedulerClosedError). Run as written, with the embedded classifier as `model`."""
    import torch

    from smoothgen import SmoothedClassifier
    from smoothgen.models import load_classifier, load_digits_split

    x = torch.from_numpy(load_digits_split().x_test[0])
    namespace = {"model": load_classifier(0.25), "example_input": x, "x": x,
                 "SmoothedClassifier": SmoothedClassifier}
    exec(compile(_readme_block("Engine"), "README.md#Engine", "exec"), namespace)  # noqa: S102 - the project's own README
    assert isinstance(namespace["smoothed"], SmoothedClassifier)


def _readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)\n```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def test_every_readme_python_block_runs_as_written(monkeypatch):
    """Issue 25: every ```python block of the README, executed as written (the library's defaults included:
    SMOOTHGEN_BACKEND removed), in order; the names a block leaves to the reader (`model`, `tok`, ...) are
    given real stand-ins. This found `covered_variants` called without the embedding it needs."""
    import torch
    import transformers

    from smoothgen import SmoothedClassifier
    from smoothgen.models import load_classifier, load_digits_split

    monkeypatch.delenv("SMOOTHGEN_BACKEND", raising=False)
    blocks = _readme_python_blocks()
    assert len(blocks) == 4, "a README python block was added or removed: run it here too"
    api, encoder, mean, engine = blocks
    namespace: dict = {}
    exec(compile(api, "README.md#python-api", "exec"), namespace)  # noqa: S102 - the project's own README
    assert namespace["cert"].prediction == 2 and namespace["g"].tokens and namespace["pc"].certified_edits >= 1

    class Tok:  # a tokenizer stand-in: whitespace words -> ids of the tiny BERT below
        mask_token_id = 1

        def encode(self, text: str) -> list[int]:
            return [2, *(10 + sum(map(ord, w)) % 30 for w in text.split()), 3]

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    namespace = {"model": transformers.BertModel(config).eval(), "tok": Tok()}
    exec(compile(encoder, "README.md#encoder", "exec"), namespace)  # noqa: S102
    exec(compile(mean, "README.md#encoder-mean", "exec"), namespace)  # noqa: S102
    assert 0 < namespace["c"].cosine_bound < 0.05
    x = torch.from_numpy(load_digits_split().x_test[0])
    namespace = {"model": load_classifier(0.25), "example_input": x, "x": x, "SmoothedClassifier": SmoothedClassifier}
    exec(compile(engine, "README.md#Engine", "exec"), namespace)  # noqa: S102


def _readme_commands() -> list[list[str]]:
    """Every `smoothgen ...` command line of the README's bash blocks, split as a shell would (comments
    dropped, continuation lines joined, a trailing `&` removed)."""
    import shlex

    commands = []
    for body in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line.replace("$'", "'"), comments=True)
            if words and words[-1] == "&":
                words = words[:-1]
            if words and words[0] == "smoothgen":
                commands.append(words[1:])
    return commands


def test_every_readme_command_is_one_the_cli_takes():
    """Issue 25: the README's `smoothgen` commands are the command line's: every one parses with the current
    parser (an option renamed or removed fails here). What each computes is run by the CLI tests and the
    benchmarks at test sizes (the README's own sizes take minutes to hours, or a cluster or a GPU)."""
    from smoothgen.cli import build_parser

    commands = _readme_commands()
    assert len(commands) >= 25 and {c[0] for c in commands} >= {"certify", "center", "generate", "serve", "verify"}
    parser = build_parser()
    for argv in commands:
        if "--help" in argv:
            continue
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: smoothgen {' '.join(argv)}")
    with pytest.raises(SystemExit):  # the check can fail
        parser.parse_args(["certify", "--no-such-option"])
