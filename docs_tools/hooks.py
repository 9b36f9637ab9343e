"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml).

Two jobs, so that the pages in ``docs/`` read the same on GitHub and on the site and no number or
default is typed by hand:

* **Repository files linked from a page** (``[table](../benchmarks/results/joint_quality.md)`` in the
  generated docs/benchmarks.md) lie outside ``docs/``, where MkDocs cannot find them. They are
  published under ``repo/`` (``repo/benchmarks/results/joint_quality.md``) and the links rewritten to
  point there. A link to a file that does not exist is left alone, so ``mkdocs build --strict`` still
  fails on it.
* **Options tables.** ``<!-- options-table: idls.defenses.training.loop.TrainingOptions -->`` becomes
  the Markdown table of that :class:`~idls.core.options.Options` class (its declared names, defaults
  and help), rendered at build time from the code. A path that does not import is a warning.
"""

from __future__ import annotations

import importlib
import logging
import posixpath
import re
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.idls")  # under "mkdocs": warnings count in --strict

#: where repository files outside docs/ are published on the site
REPO_PREFIX = "repo"

_LINK = re.compile(r"(?P<head>\]\()(?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?(?P<tail>\))")
_OPTIONS = re.compile(r"<!--\s*options-table:\s*(?P<path>[\w.]+)\s*-->")


# ---------------------------------------------------------------------------------
# Links to repository files
# ---------------------------------------------------------------------------------
def site_uri(path: Path, docs_dir: Path, root: Path) -> str | None:
    """Where the file at ``path`` lives on the site: its place in docs/, ``repo/...``, or None outside the repo."""
    path = path.resolve()
    for base, prefix in ((docs_dir, None), (root, REPO_PREFIX)):  # docs/ lies inside the repository: first
        if path.is_relative_to(base.resolve()):
            relative = path.relative_to(base.resolve()).as_posix()
            return f"{prefix}/{relative}" if prefix else relative
    return None


def _is_relative_file_link(target: str) -> bool:
    return not (target.startswith(("/", "#")) or "://" in target or target.startswith("mailto:"))


def rewrite_links(markdown: str, source: Path, page_uri: str, docs_dir: Path,
                  root: Path) -> tuple[str, list[Path]]:
    """``markdown`` with links to existing repository files outside docs/ pointing at their ``repo/`` copy.

    Args:
        markdown: the page's text.
        source: the page's file on disk (links are relative to it).
        page_uri: the page's place on the site (``benchmarks.md``, ``repo/benchmarks/results/x.md``).
        docs_dir: the docs folder.
        root: the repository root.

    Returns:
        The rewritten text and the repository files outside docs/ it links to (to publish).
    """
    linked: list[Path] = []

    def replace(match: re.Match) -> str:
        target = match["target"]
        if not _is_relative_file_link(target):
            return match[0]
        real = (source.parent / target).resolve()
        uri = site_uri(real, docs_dir, root)
        if uri is None or not real.is_file():
            return match[0]  # not ours to fix: MkDocs reports it
        if not real.is_relative_to(docs_dir.resolve()):
            linked.append(real)
        new = posixpath.relpath(uri, posixpath.dirname(page_uri) or ".")
        return f"{match['head']}{new}{match['anchor'] or ''}{match['tail']}"

    return _LINK.sub(replace, markdown), linked


# ---------------------------------------------------------------------------------
# Options tables
# ---------------------------------------------------------------------------------
def options_class(path: str) -> type:
    """The Options class at dotted ``path`` (``module.Class``); ValueError when it is not one."""
    from idls.core.options import Options

    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"options-table: cannot import {path!r} ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, Options)):
        raise ValueError(f"options-table: {path!r} is not an Options class")
    return cls


def options_tables(markdown: str) -> str:
    """``markdown`` with every ``<!-- options-table: PATH -->`` replaced by that class's table."""
    return _OPTIONS.sub(lambda match: "\n".join(options_class(match["path"]).markdown_table()), markdown)


# ---------------------------------------------------------------------------------
# MkDocs events
# ---------------------------------------------------------------------------------
def _dirs(config) -> tuple[Path, Path]:
    return Path(config["docs_dir"]), Path(config["config_file_path"]).parent


def on_files(files, config):
    """Publish the repository files outside docs/ that pages link to (and that those link to)."""
    from mkdocs.structure.files import File, InclusionLevel

    docs_dir, root = _dirs(config)
    pending = [f for f in files if f.is_documentation_page()]
    while pending:
        page = pending.pop()
        text = Path(page.abs_src_path).read_text(encoding="utf-8")
        for path in rewrite_links(text, Path(page.abs_src_path), page.src_uri, docs_dir, root)[1]:
            uri = site_uri(path, docs_dir, root)
            if files.get_file_from_path(uri) is None:
                added = File.generated(config, uri, abs_src_path=str(path), inclusion=InclusionLevel.NOT_IN_NAV)
                files.append(added)
                if added.is_documentation_page():
                    pending.append(added)
    return files


def on_page_markdown(markdown, page, config, files):
    """Fill the options tables, then point links to repository files at their published copies."""
    docs_dir, root = _dirs(config)
    try:
        markdown = options_tables(markdown)
    except ValueError as exc:
        log.warning("%s: %s", page.file.src_uri, exc)
    return rewrite_links(markdown, Path(page.file.abs_src_path), page.file.src_uri, docs_dir, root)[0]
