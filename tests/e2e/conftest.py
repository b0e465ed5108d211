"""One real P/D stack (and one colocated stack for comparison) per test session, started side by side."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="end-to-end tests need the serving extras: pip install -e '.[cpu,test]'")

from serving.kv import free_port  # noqa: E402
from tests.e2e import stack as stack_lib  # noqa: E402

EXACT_CONFIG = "configs/cpu-exact.yaml"


@pytest.fixture(scope="session")
def stacks(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("stacks")
    started = {
        "pd": stack_lib.start("pd", free_port(), free_port(), log_dir, "--config", EXACT_CONFIG),
        "colocated": stack_lib.start("colocated", free_port(), free_port(), log_dir, "--config", EXACT_CONFIG,
                                     "--mode", "colocated"),
    }
    try:
        for stack in started.values():
            stack_lib.wait_ready(stack)
        yield started
    finally:
        problems = []
        for stack in started.values():
            code = stack_lib.stop(stack)
            left = stack_lib.survivors(stack)
            if code != 0 or left:
                problems.append(f"{stack.name}: exit {code}, left running: {left}\n{stack.log_tail(20)}")
        assert not problems, "unclean shutdown:\n" + "\n".join(problems)


@pytest.fixture(scope="session")
def pd_stack(stacks):
    return stacks["pd"]


@pytest.fixture(scope="session")
def colocated_stack(stacks):
    return stacks["colocated"]


@pytest.fixture(scope="session")
def client(pd_stack):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=pd_stack.api_url, api_key="not-needed", max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def model_name(client):
    return client.models.list().data[0].id


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from serving.config import BUILTIN_MODEL
    from serving.model import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(BUILTIN_MODEL))
