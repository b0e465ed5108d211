"""Stable, readable YAML for rendered manifests: block style, literal blocks for multi-line strings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # manifests repeat small mappings; anchors would only make them harder to read

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        # Indent list items under their key, as kubectl and most hand-written manifests do.
        return super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096, allow_unicode=True)


def dump_all(documents: Iterable[dict[str, Any]], header: str = "") -> str:
    body = "---\n".join(dump(doc) for doc in documents)
    return f"{header}{body}"
