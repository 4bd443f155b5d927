"""The user documentation in docs/ ships with the code and cannot drift from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dopd_vlm.config import SFTConfig, TrainConfig, config_fields
from dopd_vlm.config_reference import main as reference_main
from dopd_vlm.config_reference import render
from dopd_vlm.tables import TABLES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SHIPPED = ("dopd_vlm", "data_builders", "eval", "scripts", "benchmarks")
TOP_FILES = ("README.md", "BENCHMARKS.md", "RELIABILITY.md", "pyproject.toml", "Makefile")
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".txt", ".toml", ".cfg", ".html", ".json", ".sh", ""}
# developer-only documents that users of the repository or the wheel do not have
DEVELOPER_ONLY = re.compile(r"\.\./shared|shared/docs|shared/reference|tinyvlm\.py|\b(?:design|demo-notes|stack|anchors|vllm)\.md")
DOC_NAMES = re.compile(r"(?<![\w/.-])(method|data|config|gpu)\.md")


def _shipped_files():
    for top in SHIPPED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts:
                yield path
    for name in TOP_FILES:
        if (ROOT / name).is_file():
            yield ROOT / name


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


def test_docs_exist():
    for name in ("method.md", "data.md", "config.md", "gpu.md"):
        assert (DOCS / name).is_file(), f"docs/{name} is missing"


def test_config_reference_is_up_to_date():
    committed = (DOCS / "config.md").read_text(encoding="utf-8")
    assert committed == render(), "docs/config.md is out of date: python -m dopd_vlm.config_reference > docs/config.md"


def test_config_reference_check_mode(tmp_path, capsys):
    stale = tmp_path / "config.md"
    stale.write_text(render().replace("routing.topk", "routing.top_k_typo"))
    assert reference_main(["--check", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    stale.write_text(render())
    assert reference_main(["--check", str(stale)]) == 0


@pytest.mark.parametrize("cls", (TrainConfig, SFTConfig), ids=lambda c: c.__name__)
def test_config_reference_lists_every_key(cls):
    text = render()
    for key, _, _, desc in config_fields(cls):
        assert f"| `{key}` |" in text, key


def test_no_reference_to_developer_documents_in_the_package():
    hits = []
    for path in _shipped_files():
        for n, line in enumerate(_text(path).splitlines(), 1):
            if DEVELOPER_ONLY.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "references to files users do not have (point them at docs/):\n" + "\n".join(hits)


def test_doc_references_name_the_docs_folder():
    hits = []
    for path in _shipped_files():
        for n, line in enumerate(_text(path).splitlines(), 1):
            if DOC_NAMES.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, "write docs/method.md, docs/data.md, ... so a reader can find them:\n" + "\n".join(hits)


def _method_sections() -> set[str]:
    text = (DOCS / "method.md").read_text(encoding="utf-8")
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, flags=re.M))


def test_cited_method_sections_exist():
    sections = _method_sections()
    assert {"1", "2", "3", "4", "5", "5.1", "6", "7", "8", "9", "10", "11"} <= sections
    bad = []
    cite = re.compile(r"docs/method\.md\s*((?:(?:§\s*|Sec\.\s*)\d+(?:\.\d+)?[\s,–-]*)+)")
    for path in _shipped_files():
        for n, line in enumerate(_text(path).splitlines(), 1):
            for m in cite.finditer(line):
                for num in re.findall(r"\d+(?:\.\d+)?", m.group(1)):
                    if num not in sections:
                        bad.append(f"{path.relative_to(ROOT)}:{n}: §{num}")
    assert not bad, "citations of docs/method.md sections that do not exist:\n" + "\n".join(bad)


@pytest.mark.parametrize("doc", ("method.md", "gpu.md", "data.md"))
def test_config_keys_named_in_the_docs_exist(doc):
    keys = {k for cls in (TrainConfig, SFTConfig) for k, *_ in config_fields(cls)}
    sections = {k.split(".")[0] for k in keys if "." in k}
    text = (DOCS / doc).read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:%s)\.[a-z_]+)" % "|".join(sorted(sections)), text))
    unknown = sorted(k for k in named - keys if k.rsplit(".", 1)[1] not in ("py", "json", "jsonl", "md", "yaml"))
    assert not unknown, f"docs/{doc} names config keys that do not exist: {unknown}"


def test_every_routing_table_is_documented():
    text = (DOCS / "method.md").read_text(encoding="utf-8")
    missing = [name for name in TABLES if f"| `{name}` |" not in text]
    assert not missing, f"docs/method.md §8 lacks the tables {missing}"


def test_every_routing_key_is_documented():
    text = (DOCS / "method.md").read_text(encoding="utf-8")
    routing = [k for k, *_ in config_fields(TrainConfig) if k.startswith("routing.")]
    missing = [k for k in routing if f"`{k}`" not in text]
    assert not missing, f"docs/method.md does not explain {missing}"
