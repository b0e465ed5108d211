"""Checks of a request body that vLLM's request models miss, made before they parse it.

- Chat messages, against what the OpenAI API requires. vLLM validates them loosely, for its own extensions
  (custom roles, content parts without a `type`), so `{"role": "user"}` with no content, or a tool message with
  no `tool_call_id`, is accepted and rendered into a prompt the model continues until the context runs out (the
  OpenAI API answers 400); and a tool call without its `function` gets a pydantic dump with no `param`. The
  required fields come from the spec as the official `openai` SDK types it (its TypedDicts mark them
  `Required`), not from a list kept here. Kinds of message or content part the spec does not know are vLLM's.
- Fields the request model's JSON schema types as objects: vLLM's before-validators call `.get` on some of them
  (`structured_outputs`), so a string there is a 500 under `vllm serve`; here it is a 400 naming the field.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from typing_extensions import Required, is_typeddict


@functools.cache
def fields(typed_dict: type) -> tuple[dict[str, Any], frozenset[str]]:
    """A TypedDict's field types and the names it marks `Required`. (The SDK's modules postpone annotations,
    which hides `Required` from `__required_keys__` on Python < 3.12: read the hints instead.)"""
    hints = get_type_hints(typed_dict, include_extras=True)
    required = frozenset(name for name, hint in hints.items() if get_origin(hint) is Required)
    return get_type_hints(typed_dict), required


@functools.cache
def discriminated(union: Any, key: str) -> dict[str, type]:
    """{`key` value: TypedDict} for the TypedDicts of a union told apart by a Literal field (`role`, `type`)."""
    options = {}
    for option in get_args(union) or (union,):
        if is_typeddict(option):
            hint = fields(option)[0].get(key)
            for value in get_args(hint) if get_origin(hint) is Literal else ():
                options[value] = option
    return options


@functools.cache
def typed_dicts_in(hint: Any) -> tuple[type, ...]:
    """The TypedDicts a field's type admits, through Optional/Union and Iterable/list."""
    if is_typeddict(hint):
        return (hint,)
    found: tuple[type, ...] = ()
    for arg in get_args(hint) if get_origin(hint) is Union or is_sequence(hint) else ():
        found += typed_dicts_in(arg)
    return found


def is_sequence(hint: Any) -> bool:
    """`Iterable[...]` (how the SDK types arrays), `Sequence[...]` or `list[...]`."""
    return getattr(get_origin(hint), "__name__", "") in ("Iterable", "Sequence", "list")


def missing(value: dict[str, Any], typed_dict: type, at: str) -> Iterator[str]:
    """Paths (`messages[0].content`) of the fields the spec requires that `value` lacks, at every depth."""
    hints, required = fields(typed_dict)
    for name in sorted(required):
        if value.get(name) is None:
            yield f"{at}.{name}"
    for name, item in value.items():
        inner = typed_dicts_in(hints.get(name))
        if not inner:
            continue
        items = [(f"{at}.{name}", item)] if isinstance(item, dict) else (
            [(f"{at}.{name}[{i}]", x) for i, x in enumerate(item)] if isinstance(item, list) else [])
        for path, sub in items:
            if not isinstance(sub, dict) or "type" not in sub and "type" in fields(inner[0])[0]:
                continue  # a part with no `type` is vLLM's shorthand (`{"text": ...}`), not one of the spec's
            if len(inner) == 1:
                yield from missing(sub, inner[0], path)
            elif (option := discriminated(Union[tuple(inner)], "type").get(sub.get("type"))) is not None:
                yield from missing(sub, option, path)


def chat_message_errors(messages: Any) -> list[str]:
    """The first required-field paths missing from a chat request's `messages`; empty when none are."""
    from openai.types.chat import ChatCompletionMessageParam

    by_role = discriminated(ChatCompletionMessageParam, "role")
    if not isinstance(messages, list):
        return []  # vLLM's own model answers that
    for i, message in enumerate(messages):
        if isinstance(message, dict) and (spec := by_role.get(message.get("role"))) is not None:
            problems = list(missing(message, spec, f"messages[{i}]"))
            if problems:
                return problems
    return []


def allowed_types(prop: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    """The JSON types one property of a JSON schema allows (through `anyOf` and `$ref`)."""
    types: set[str] = set()
    for option in prop.get("anyOf") or prop.get("oneOf") or [prop]:
        if "$ref" in option:
            types.add(defs[option["$ref"].rsplit("/", 1)[1]].get("type", "object"))
        elif "type" in option:
            types.update([option["type"]] if isinstance(option["type"], str) else option["type"])
        elif "const" in option or "enum" in option:
            types.add("string")
    return types


@functools.cache
def object_fields(model: type) -> frozenset[str]:
    """Top-level fields a pydantic request model allows only as a JSON object (or null)."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    return frozenset(name for name, prop in schema.get("properties", {}).items()
                     if (types := allowed_types(prop, defs)) and types <= {"object", "null"})


@dataclass(frozen=True)
class BodyProblem:
    message: str
    param: str


def body_problem(endpoint: str, model: type, body: Any) -> BodyProblem | None:
    """What is wrong with a request body before `model` parses it; None when these checks find nothing."""
    if not isinstance(body, dict):
        return None  # the model's own validation answers
    for name in sorted(object_fields(model) & body.keys()):
        if body[name] is not None and not isinstance(body[name], dict):
            return BodyProblem(f"{name} must be an object, not {type(body[name]).__name__}", name)
    if endpoint == "chat" and (missing := chat_message_errors(body.get("messages"))):
        return BodyProblem(f"{', '.join(missing)}: required by the OpenAI API, missing", missing[0])
    return None
