"""Hostile chat requests generated from the request schemas, not picked by hand.

- Every field the OpenAI spec requires in a chat message, at every depth (content parts, tool calls and their
  function), removed one at a time: the spec is the official `openai` SDK's TypedDicts.
- Every top-level field of vLLM's `ChatCompletionRequest` JSON schema given a JSON type the schema does not allow.
- Every bound that schema declares (`minimum`, `maximum`, `maxItems`, `minLength`) exceeded by one.
- Huge arrays and strings.

Each violation is a request the server must refuse with a 4xx and an OpenAI error body, quickly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from typing_extensions import is_typeddict

from serving.body_checks import allowed_types, discriminated, fields, is_sequence, typed_dicts_in

MODEL = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class Violation:
    name: str
    body: dict[str, Any]
    param: str | None = None
    """The request path of the missing field, where the server must name it in `error.param`."""


def example(typed_dict: type, nested: bool = True) -> dict[str, Any]:
    """A value of `typed_dict` with every required field filled and, with `nested`, the optional fields whose
    type holds further TypedDicts (so that their required fields can be removed too)."""
    hints, required = fields(typed_dict)
    value: dict[str, Any] = {}
    for name, hint in hints.items():
        inner = typed_dicts_in(hint)
        if name in required:
            value[name] = sample(hint, nested)
        elif nested and inner and name not in ("audio", "function_call"):  # deprecated / output-only fields
            value[name] = sample(hint, nested)
    return value


def sample(hint: Any, nested: bool) -> Any:
    """A value of `hint`; an array of TypedDicts gets one item of each kind the union allows."""
    origin = get_origin(hint)
    if origin is Literal:
        return get_args(hint)[0]
    if is_typeddict(hint):
        return example(hint, nested)
    if origin is Union:
        options = [a for a in get_args(hint) if a is not type(None)]
        deeper = [a for a in options if typed_dicts_in(a)] if nested else []
        return sample((deeper or options)[0], nested)
    if is_sequence(hint):
        return [example(t, nested) for t in typed_dicts_in(hint)] or [sample(get_args(hint)[0], nested)]
    return {str: "x", int: 1, float: 1.0, bool: True}.get(hint, "x")


def removals(value: dict[str, Any], typed_dict: type, at: str):
    """(path, a copy of `value` without the required field at path), for every required field at every depth."""
    hints, required = fields(typed_dict)
    for name in sorted(required):
        if name in value:
            yield f"{at}.{name}", _without(value, name)
    for name, item in value.items():
        inner = typed_dicts_in(hints.get(name))
        subs = [(f"{at}.{name}", None, item)] if isinstance(item, dict) else (
            [(f"{at}.{name}[{i}]", i, x) for i, x in enumerate(item)] if isinstance(item, list) else [])
        for path, index, sub in subs:
            if not inner or not isinstance(sub, dict):
                continue
            spec = inner[0] if len(inner) == 1 else discriminated(Union[tuple(inner)], "type").get(sub.get("type"))
            for inner_path, changed in removals(sub, spec, path) if spec else ():
                if inner_path == f"{path}.type":
                    continue  # without its `type` a part is vLLM's shorthand, which vLLM judges
                copied = copy.deepcopy(value)
                if index is None:
                    copied[name] = changed
                else:
                    copied[name][index] = changed
                yield inner_path, copied


def _without(value: dict[str, Any], name: str) -> dict[str, Any]:
    copied = copy.deepcopy(value)
    del copied[name]
    return copied


def missing_required() -> list[Violation]:
    from openai.types.chat import ChatCompletionMessageParam

    found = []
    for role, spec in discriminated(ChatCompletionMessageParam, "role").items():
        for path, message in removals(example(spec), spec, "messages[0]"):
            if path != "messages[0].role":  # without its role a message is no longer one of the spec's kinds
                found.append(Violation(f"{role} message without {path[12:]}",
                                       {"model": MODEL, "max_tokens": 2, "messages": [message]}, path))
    return found


# A value of each JSON type, in the order tried; none of them converts to another type under pydantic's lax
# mode where it is tried (an integer where a number is allowed, or a boolean where an integer is, would).
WRONG = [("string", "twelve"), ("array", [7]), ("object", {"x": 7}), ("number", 7.5)]


def wrong_types(schema: dict[str, Any]) -> list[Violation]:
    """Each property given a value of a JSON type it does not allow (one the schema allows nowhere else)."""
    defs = schema.get("$defs", {})
    found = []
    for name, prop in schema["properties"].items():
        types = allowed_types(prop, defs)
        if not types:
            continue
        wrong = next((value for kind, value in WRONG if kind not in types and kind != "number" or
                      kind == "number" and not {"number", "integer", "string"} & types), None)
        if wrong is None:
            continue
        body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], name: wrong}
        found.append(Violation(f"{name}: {type(wrong).__name__} where the schema allows {sorted(types)}", body))
    return found


def bounds(schema: dict[str, Any]) -> list[Violation]:
    found = []
    base = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    for name, prop in schema["properties"].items():
        for option in prop.get("anyOf") or [prop]:
            if "minimum" in option:
                found.append(Violation(f"{name} below its minimum", {**base, name: option["minimum"] - 1}))
            if "maximum" in option:
                found.append(Violation(f"{name} above its maximum", {**base, name: option["maximum"] + 1}))
            if "maxItems" in option:
                found.append(Violation(f"{name} with more items than {option['maxItems']}",
                                       {**base, name: [f"s{i}" for i in range(option["maxItems"] + 1)]}))
            if "minLength" in option:
                found.append(Violation(f"{name} shorter than {option['minLength']}",
                                       {**base, name: "x" * (option["minLength"] - 1)}))
    return found


def huge() -> list[Violation]:
    hi = [{"role": "user", "content": "hi"}]
    return [
        Violation("a 2 MB message", {"model": MODEL, "max_tokens": 2, "messages": [
            {"role": "user", "content": "hello " * 350_000}]}),
        Violation("20 000 messages", {"model": MODEL, "max_tokens": 2, "messages": hi * 20_000}),
        Violation("100 000 stop strings", {"model": MODEL, "max_tokens": 2, "messages": hi,
                                           "stop": ["x"] * 100_000}),
        Violation("100 000 logit_bias entries beyond the vocabulary", {
            "model": MODEL, "max_tokens": 2, "messages": hi, "logit_bias": {str(10**6 + i): 1 for i in range(100_000)}}),
        Violation("max_tokens beyond the context", {"model": MODEL, "max_tokens": 10**12, "messages": hi}),
    ]


def chat_violations() -> list[Violation]:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    schema = ChatCompletionRequest.model_json_schema()
    return missing_required() + wrong_types(schema) + bounds(schema) + huge()
