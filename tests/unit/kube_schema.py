"""Offline validation of rendered manifests: CRDs from ../shared/crds, built-in kinds via kubernetes-validate.

A CRD's `openAPIV3Schema` is made strict the way the API server prunes: an object schema with `properties`
and without `x-kubernetes-preserve-unknown-fields` accepts no other field. Missing fields that have a
`default` are filled in first (the API server defaults before it validates), so `required` + `default` passes.
The CRDs' CEL rules (`x-kubernetes-validations`) are evaluated too, with cel-python plus the Kubernetes string
functions they use (`find`, `split`); transition rules (those that read `oldSelf`) only apply to updates and
are skipped, as the API server skips them on create.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
CRD_DIR = SHARED / "crds"
KUBERNETES_VERSION = "1.33.0"
# The CRDs are ~50k lines of YAML: libyaml parses them several times faster than pure Python.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_COMBINATORS = ("allOf", "anyOf", "oneOf")


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a structural schema in which unknown fields are errors, as they are pruned by the API server."""
    out = copy.deepcopy(schema)
    _tighten(out)
    return out


def _tighten(node: dict[str, Any]) -> None:
    if node.get("nullable"):
        if "type" in node:
            node["type"] = [node["type"], "null"]
    for child in (node.get("properties") or {}).values():
        _tighten(child)
    if isinstance(node.get("items"), dict):
        _tighten(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        _tighten(node["additionalProperties"])
    for key in _COMBINATORS:
        for child in node.get(key, []):
            _tighten(child)
    if node.get("x-kubernetes-embedded-resource"):
        for field in ("apiVersion", "kind"):
            node.setdefault("properties", {}).setdefault(field, {"type": "string"})
        node["properties"].setdefault("metadata", {"type": "object"})
    if (
        "properties" in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in node
    ):
        node["additionalProperties"] = False


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: fill absent fields that have a `default`, recursively, as the API server does."""
    if isinstance(value, dict):
        for name, prop in (schema.get("properties") or {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                apply_defaults(prop, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            known = set(schema.get("properties") or {})
            for name, item in value.items():
                if name not in known:
                    apply_defaults(extra, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)
    return value


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict openAPIV3Schema, for every served version of every CRD in ../shared/crds."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=_LOADER):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    out[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return out


@cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(strict(crd_schemas()[(api_version, kind)]))


def validate_custom(doc: dict[str, Any]) -> list[str]:
    """Errors of one custom resource against its CRD; raises KeyError for a kind no CRD in ../shared defines."""
    raw = crd_schemas()[(doc["apiVersion"], doc["kind"])]
    defaulted = apply_defaults(raw, copy.deepcopy(doc))
    validator = _validator(doc["apiVersion"], doc["kind"])
    errors = [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(defaulted), key=lambda e: list(map(str, e.absolute_path)))
    ]
    return errors or cel_violations(raw, defaulted)


def cel_violations(schema: dict[str, Any], value: Any, path: str = "<root>") -> list[str]:
    """The `x-kubernetes-validations` rules `value` breaks, each named by its path and the rule's message."""
    out = []
    for validation in schema.get("x-kubernetes-validations", ()):
        rule = validation["rule"]
        if "oldSelf" in rule:
            continue
        try:  # a CEL BoolType compares equal to True; an error value or an exception rejects the object
            ok = _cel_program(rule).evaluate({"self": _celpy().json_to_cel(value)}) == True  # noqa: E712
        except Exception:
            ok = False
        if not ok:
            out.append(f"{path}: {validation.get('message') or rule} (CEL: {rule})")
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    if isinstance(value, dict):
        for name, item in value.items():
            child = properties.get(name) or (extra if isinstance(extra, dict) else None)
            if child is not None:
                out += cel_violations(child, item, f"{path}.{name}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out += cel_violations(schema["items"], item, f"{path}[{i}]")
    return out


def _celpy():
    import celpy

    return celpy


@cache
def _cel_program(rule: str):
    celpy = _celpy()
    env = celpy.Environment()
    return env.program(env.compile(rule), functions={"find": _cel_find, "split": _cel_split})


def _cel_find(text, pattern):
    """Kubernetes' regex library: the first match of `pattern` in `text`, or ''."""
    import re

    match = re.search(str(pattern), str(text))
    return _celpy().celtypes.StringType(match.group(0) if match else "")


def _cel_split(text, separator):
    """cel-go's strings extension."""
    celtypes = _celpy().celtypes
    return celtypes.ListType([celtypes.StringType(part) for part in str(text).split(str(separator))])


def is_custom(doc: dict[str, Any]) -> bool:
    """Whether a CRD in ../shared defines the document's kind (built-in kinds go to kubernetes-validate)."""
    return (doc["apiVersion"], doc["kind"]) in crd_schemas()


def validate_builtin(doc: dict[str, Any]) -> list[str]:
    """Errors of a built-in kind against the Kubernetes OpenAPI schema (strict: unknown fields rejected)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(str(p) for p in exc.path) or '<root>'}: {exc.message}"]
    return []
