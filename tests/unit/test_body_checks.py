"""The chat-message check against the OpenAI spec (serving.body_checks.py), driven by the spec itself."""

from __future__ import annotations

import pytest
from openai.types.chat import ChatCompletionMessageParam

from serving.body_checks import chat_message_errors, discriminated
from tests.schema_violations import example, missing_required

ROLES = discriminated(ChatCompletionMessageParam, "role")


def test_the_sdk_spec_is_read():
    assert set(ROLES) == {"developer", "system", "user", "assistant", "tool", "function"}
    paths = {v.param for v in missing_required()}
    # the depths the spec has: a message, its content parts, a part's object, a tool call's function
    assert {"messages[0].content", "messages[0].tool_call_id", "messages[0].content[1].image_url.url",
            "messages[0].tool_calls[0].function.arguments"} <= paths


@pytest.mark.parametrize("role", sorted(ROLES))
def test_a_complete_message_of_each_role_passes(role):
    assert chat_message_errors([example(ROLES[role])]) == []


@pytest.mark.parametrize("violation", missing_required(), ids=lambda v: v.name)
def test_each_missing_required_field_is_named_by_its_path(violation):
    assert chat_message_errors(violation.body["messages"]) == [violation.param]


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": [{"text": "hi"}]}],  # vLLM's content part without a type
    [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}],  # a kind only vLLM has
    [{"role": "reviewer", "content": "hi"}],  # vLLM's custom roles
    [{"role": "assistant", "tool_calls": [{"id": "a", "type": "function",
                                           "function": {"name": "f", "arguments": "{}"}}]}],
    "not a list", [5],  # vLLM's own model refuses these, with its own message
])
def test_what_the_spec_does_not_know_is_left_to_vllm(messages):
    assert chat_message_errors(messages) == []


def test_the_first_failing_message_is_reported():
    messages = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}, {"role": "user"}]
    assert chat_message_errors(messages) == ["messages[1].tool_call_id"]
