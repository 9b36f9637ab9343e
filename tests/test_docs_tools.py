"""The documentation site's build tools (docs_tools/): link rewriting, options tables, Sphinx roles.

``make docs`` builds the whole site with warnings as errors; these are the fast checks of the pieces,
including that every options table the pages ask for exists.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_tools_{name}", ROOT / "docs_tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


hooks = _load("hooks")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with docs/page.md, docs/design.md, bench/table.md and README.md."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "bench").mkdir()
    for path in ("docs/page.md", "docs/design.md", "bench/table.md", "README.md"):
        (tmp_path / path).write_text("# x\n")
    return tmp_path


def test_links_to_repository_files_point_at_their_published_copy(repo: Path):
    text = ("[table](../bench/table.md#row) [design](design.md) [gone](../bench/missing.md) "
            "[web](https://example.org/a.md) [here](#anchor)")
    out, linked = hooks.rewrite_links(text, repo / "docs" / "page.md", "page.md", repo / "docs", repo)
    assert "[table](repo/bench/table.md#row)" in out
    assert "[design](design.md)" in out  # inside docs/: unchanged
    assert "[gone](../bench/missing.md)" in out  # missing: left for MkDocs to report
    assert "(https://example.org/a.md)" in out and "(#anchor)" in out
    assert linked == [(repo / "bench" / "table.md").resolve()]


def test_a_published_page_links_back_into_docs(repo: Path):
    out, linked = hooks.rewrite_links("[design](docs/design.md) [table](bench/table.md)", repo / "README.md",
                                      "repo/README.md", repo / "docs", repo)
    assert out == "[design](../design.md) [table](bench/table.md)"
    assert linked == [(repo / "bench" / "table.md").resolve()]


def test_site_uri_places_files_in_docs_under_repo_or_nowhere(repo: Path):
    assert hooks.site_uri(repo / "docs" / "design.md", repo / "docs", repo) == "design.md"
    assert hooks.site_uri(repo / "bench" / "table.md", repo / "docs", repo) == "repo/bench/table.md"
    assert hooks.site_uri(repo.parent / "elsewhere.md", repo / "docs", repo) is None


def test_options_table_is_rendered_from_the_declaration():
    from idls.attacks.pgd import PGDOptions

    out = hooks.options_tables("before\n<!-- options-table: idls.attacks.pgd.PGDOptions -->\nafter")
    assert out == "before\n" + "\n".join(PGDOptions.markdown_table()) + "\nafter"
    for name, shown, _ in PGDOptions.describe():
        assert f"| `{name}` | `{shown}` |" in out


@pytest.mark.parametrize("path", ["idls.attacks.pgd.NoSuchOptions", "idls.nowhere.Options", "idls.attacks.pgd.PGD"])
def test_a_bad_options_table_is_an_error(path: str):
    with pytest.raises(ValueError, match="options-table"):
        hooks.options_tables(f"<!-- options-table: {path} -->")


def test_every_options_table_of_the_pages_exists():
    markers = [m for page in (ROOT / "docs").rglob("*.md")
               for m in re.findall(r"<!--\s*options-table:\s*([\w.]+)\s*-->", page.read_text(encoding="utf-8"))]
    assert markers, "the pages ask for no options table"
    for path in markers:
        assert hooks.options_class(path).describe(), path


def test_sphinx_roles_become_code_spans():
    pytest.importorskip("griffe", reason="the docs extra's griffe is not installed")
    roles = _load("griffe_roles")
    text = "See :class:`~idls.system.Classifier`, :func:`idls.metrics.map_l1` and :meth:`Attack.run`."
    assert roles.plain_roles(text) == "See `Classifier`, `idls.metrics.map_l1` and `Attack.run`."
