"""The plan's render is handed to the engine leg of the same request, once, and to no other request."""

import asyncio
from types import SimpleNamespace

from serving import render_once


class CountingServing:
    """vLLM's serving object as `render_once` sees it: one render method, counted."""

    def __init__(self):
        self.renders = []

    async def render_chat_request(self, request):
        self.renders.append(request.request_id)
        return ("conversation", [f"rendered {request.request_id}"])


def request(request_id):
    return SimpleNamespace(request_id=request_id)


def test_the_engine_leg_takes_the_plans_render_instead_of_rendering_again():
    serving, reused = CountingServing(), []
    render_once.install(serving, "chat", lambda: reused.append(1))

    async def one_request():
        planned = await serving.render_chat_request(request("a"))  # the plan
        render_once.keep("chat", request("a"), planned)
        leg = await asyncio.wait_for(serving.render_chat_request(request("a")), 5)  # the engine leg, in a task
        return planned, leg

    planned, leg = asyncio.run(one_request())
    assert leg is planned and serving.renders == ["a"] and reused == [1]


def test_a_kept_render_is_handed_over_once_and_only_to_its_own_request():
    serving = CountingServing()
    render_once.install(serving, "chat")

    async def scenario():
        render_once.keep("chat", request("a"), "plan of a")
        other = await serving.render_chat_request(request("b"))
        wrong_endpoint = render_once.take("completions", request("a"))
        first = await serving.render_chat_request(request("a"))
        second = await serving.render_chat_request(request("a"))
        return other, wrong_endpoint, first, second

    other, wrong_endpoint, first, second = asyncio.run(scenario())
    assert other == ("conversation", ["rendered b"])
    assert wrong_endpoint is None
    assert first == "plan of a"
    assert second == ("conversation", ["rendered a"])
    assert serving.renders == ["b", "a"]


def test_concurrent_requests_never_see_each_others_render():
    serving = CountingServing()
    render_once.install(serving, "chat")

    async def one(request_id, keep):
        if keep:
            render_once.keep("chat", request(request_id), f"plan of {request_id}")
        await asyncio.sleep(0)  # let the other request run between the plan and the leg
        return await serving.render_chat_request(request(request_id))

    async def both():
        return await asyncio.gather(one("same-id", True), one("same-id", False))

    kept, rendered = asyncio.run(both())
    assert kept == "plan of same-id"
    assert rendered == ("conversation", ["rendered same-id"])


def test_endpoints_that_render_elsewhere_keep_nothing_and_a_missing_serving_object_is_skipped():
    async def scenario():
        render_once.keep("responses", request("r"), "plan of r")
        return render_once.take("responses", request("r"))

    assert asyncio.run(scenario()) is None
    render_once.install(None, "chat")
