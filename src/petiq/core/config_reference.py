"""The configuration reference, generated from the schema (``workflow/schemas/config.schema.yaml``).

``docs/configuration.md`` holds :func:`reference_table` between two markers; ``petiq config-reference
--write docs/configuration.md`` rewrites it there, and a test checks that the page is what the schema
makes, so the page cannot drift from the keys the workflow reads.

>>> schema = {"properties": {"seed": {"type": "integer", "default": 2022, "x-reruns": ["a"],
...           "description": "Base seed."}}}
>>> print(reference_table(schema))
| key | default | reruns | description |
|---|---|---|---|
| `seed` | `2022` | a | Base seed. |
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

from petiq.core.errors import PetiqInputError

__all__ = ["BEGIN", "END", "reference_rows", "reference_table", "write_reference"]

BEGIN = "<!-- BEGIN generated from workflow/schemas/config.schema.yaml by `petiq config-reference` -->"
END = "<!-- END generated -->"


def reference_rows(schema: Mapping, prefix: str = "") -> Iterator[tuple[str, object, list[str], str]]:
    """(dotted key, default, x-reruns, description) for every key without sub-keys, in schema order."""
    for name, node in schema.get("properties", {}).items():
        key = prefix + name
        if "properties" in node:
            yield from reference_rows(node, key + ".")
        else:
            description = " ".join(str(node.get("description", "")).split())
            yield key, node.get("default"), list(node.get("x-reruns") or []), description


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(value) -> str:
    if value is None:
        return "`null`"
    return "`" + _cell(json.dumps(value, ensure_ascii=False, separators=(", ", ": "))) + "`"


def reference_table(schema: Mapping) -> str:
    """The Markdown table of every key: its default, the steps a change reruns, its description."""
    lines = ["| key | default | reruns | description |", "|---|---|---|---|"]
    for key, default, reruns, description in reference_rows(schema):
        lines.append(f"| `{key}` | {_default(default)} | {', '.join(reruns)} | {_cell(description)} |")
    return "\n".join(lines)


def write_reference(page: str | Path, schema: Mapping, *, check: bool = False) -> bool:
    """Put :func:`reference_table` between :data:`BEGIN` and :data:`END` in ``page``.

    Returns whether the page already held it; with ``check`` the page is only compared, never written.
    """
    from petiq.core.fileio import atomic_path

    page = Path(page)
    text = page.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise PetiqInputError(page, "has no single generated section", f"put the lines {BEGIN!r} and {END!r} in it")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    new = f"{head}{BEGIN}\n{reference_table(schema)}\n{END}{tail}"
    if new == text or check:
        return new == text
    with atomic_path(page) as tmp:
        Path(tmp).write_text(new, encoding="utf-8")
    return False
