"""Generates deploy/helm/atelier/README.md from Chart.yaml and the `# --` comments of values.yaml, as
helm-docs does: one table row per documented value (key, type, default, description).

    python deploy/helm/tools/chart_readme.py           # rewrites the README
    python deploy/helm/tools/chart_readme.py --check   # exits 1 when the README is stale

A comment `# -- text` (continued on the following `#` lines) documents the key below it; `# @default --
text` replaces the default shown. Every value must be documented, itself or through a documented parent
mapping or list: an undocumented one is an error, so the table is the whole of values.yaml.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parents[1] / "atelier"
README = CHART_DIR / "README.md"

_KEY = re.compile(r"^(?P<indent>\s*)(?P<item>-\s+)?(?P<key>[A-Za-z0-9_.\-/]+):(?:\s|$)")
_ITEM_COMMENT = re.compile(r"^(?P<indent>\s*)-\s+#")
_DOC = re.compile(r"^\s*(?:-\s+)?#\s--\s?(?P<text>.*)$")
_DEFAULT = re.compile(r"^\s*#\s@default\s--\s?(?P<text>.*)$")
_CONTINUATION = re.compile(r"^\s*#\s?(?P<text>.*)$")


@dataclass(frozen=True)
class Doc:
    """A documented value: its description and, when the comment gives one, the default to show."""

    description: str
    default: str | None


def parse_docs(text: str) -> dict[str, Doc]:
    """The `# --` descriptions of values.yaml by key path (`image.tag`, `gpuPools[0].name`)."""
    docs: dict[str, Doc] = {}
    # (column, path) of the keys and list items enclosing the current line; an item sits at its dash's
    # column + 1, between the dash and its keys, so that the next item replaces it and its keys nest in it.
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    default: str | None = None

    def enter(column: int) -> str:
        while stack and stack[-1][0] >= column:
            stack.pop()
        return stack[-1][1] if stack else ""

    for line in text.splitlines():
        if match := _DEFAULT.match(line):
            default = match["text"].strip()
            continue
        if match := _DOC.match(line):
            pending = [match["text"].strip()]
            if item := _ITEM_COMMENT.match(line):  # `- # -- text`: opens a list item, its key comes next
                column = len(item["indent"])
                stack.append((column + 1, f"{enter(column)}[0]"))
            continue
        if line.lstrip().startswith("#"):
            if pending is not None:
                pending.append(_CONTINUATION.match(line)["text"].strip())  # type: ignore[index]
            continue
        match = _KEY.match(line)
        if not match:
            pending, default = None, None
            continue
        column = len(match["indent"])
        if match["item"]:
            stack.append((column + 1, f"{enter(column)}[0]"))
            column += len(match["item"])
        parent = enter(column)
        path = f"{parent}.{match['key']}" if parent else match["key"]
        stack.append((column, path))
        if pending is not None:
            docs[path] = Doc(" ".join(part for part in pending if part), default)
        pending, default = None, None
    return docs


def _leaves(value: Any, path: str) -> list[tuple[str, Any]]:
    """(path, value) of every key under `value`, mappings and lists included."""
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, child in value.items():
            child_path = f"{path}.{key}" if path else str(key)
            found.append((child_path, child))
            found += _leaves(child, child_path)
    elif _is_list_of_mappings(value):
        found += _leaves(value[0], f"{path}[0]")
    return found


def _is_list_of_mappings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def _type(value: Any) -> str:
    if value is None:
        return "int or null"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}[type(value)]


def _default(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else json.dumps(value)


def rows(values_text: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every documented value.

    Raises:
        ValueError: a value is neither documented nor under a documented mapping or list.
    """
    docs = parse_docs(values_text)
    values = yaml.safe_load(values_text)
    table = []
    undocumented = []
    for path, value in _leaves(values, ""):
        doc = docs.get(path)
        if doc is None:
            covered = any(path.startswith(f"{documented}.") or path.startswith(f"{documented}[") for documented in docs)
            if not covered and not (isinstance(value, dict) and value) and not _is_list_of_mappings(value):
                undocumented.append(path)
            continue
        default = doc.default if doc.default is not None else f"`{_default(value)}`"
        table.append((path, _type(value), default, doc.description))
    if undocumented:
        raise ValueError(f"values.yaml: no `# --` description for {', '.join(undocumented)}")
    return table


def render_readme() -> str:
    """The chart README: what the chart is, what it needs, and the values table."""
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    lines = [
        f"# {chart['name']}",
        "",
        "<!-- Generated by deploy/helm/tools/chart_readme.py from Chart.yaml and values.yaml: do not edit. -->",
        "",
        " ".join(chart["description"].split()),
        "",
        f"Chart version `{chart['version']}`, app version `{chart['appVersion']}`, Kubernetes "
        f"`{chart['kubeVersion']}`, KubeRay `>= {chart['annotations']['atelier.io/kuberay-min-version']}`.",
        "Installing, scaling, upgrading and monitoring: the repository README's *Running on Kubernetes*.",
        "",
        "## Values",
        "",
        "| Key | Type | Default | Description |",
        "|-----|------|---------|-------------|",
    ]
    for key, kind, default, description in rows((CHART_DIR / "values.yaml").read_text()):
        cells = (f"`{key}`", kind, default, description)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md differs from what it generates")
    args = parser.parse_args()
    text = render_readme()
    if args.check:
        if not README.exists() or README.read_text() != text:
            print(f"{README} is stale: run python deploy/helm/tools/chart_readme.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(text)
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
