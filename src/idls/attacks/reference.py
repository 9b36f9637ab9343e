"""The options reference of every registered attack, rendered from the attacks' ``Options`` declarations.

``idls options [NAME]`` prints it; docs/options.md is this module's Markdown output
(``python -m idls.attacks.reference > docs/options.md``; a test keeps the page equal to it).
"""

from __future__ import annotations

import sys

from idls.attacks import ATTACKS, list_attacks, list_frameworks


def option_rows(name: str) -> list[tuple[str, str, str]]:
    """``(option, default, help)`` of attack ``name``, in declaration order."""
    return ATTACKS.get(name).Options.describe()


def markdown(names: list[str] | None = None) -> str:
    """The reference page: one table per attack (all registered attacks by default)."""
    lines = [
        "# Attack options",
        "",
        "Generated from each attack's `Options` declaration (`python -m idls.attacks.reference > docs/options.md`).",
        "The same names work as Python keywords (`create_attack(\"pgd\", steps=50)`), on the command line",
        "(`idls attack --attack pgd -o steps=50`) and in experiment files (`attack_options: {pgd: {steps: 50}}`).",
        f"Joint-attack frameworks (`--framework`): {', '.join(list_frameworks())}.",
        "",
    ]
    for name in names or list_attacks():
        cls = ATTACKS.get(name)
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        lines += [f"## `{name}`", "", summary, "", *cls.Options.markdown_table(), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
