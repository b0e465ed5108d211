"""Real stacks for the end-to-end tests, started at most once per session.

Three groups share the machine's 24 GiB in turn: `main` (the P/D stack and a colocated stack for comparison,
started side by side, and bare vLLM beside them once a test asks for it), `affinity` (two prefill replicas, one
decode) and `autoscale` (a P/D stack whose pools scale between 0 and 2 replicas); test files run in name order
and each group's files sort together, so each group starts once. Asking for a
stack of the other group stops the running group first; every stop must be clean (exit 0, no process left).
"""

from __future__ import annotations

import os
import shutil

import pytest

if os.environ.get("CI"):
    import vllm  # noqa: F401  (in CI a missing serving install fails the run rather than skipping every e2e test)
else:
    pytest.importorskip("vllm", reason="end-to-end tests need the serving extras: pip install -e '.[cpu,test]'")

from serving.kv import free_port  # noqa: E402
from tests.e2e import stack as stack_lib  # noqa: E402

EXACT_CONFIG = "configs/cpu-exact.yaml"
AFFINITY_CONFIG = "configs/cpu-prefix-affinity.yaml"
AUTOSCALE_CONFIG = "configs/cpu-autoscale.yaml"

API_KEY = stack_lib.API_KEY
# group -> stack name -> (pdserve up arguments, extra environment)
GROUPS = {
    # --verbose: every replica's output in the stack's log, for a failing test to show; the colocated stack
    # starts as a user's first `pdserve up` does (tests/e2e/test_openai_api.py checks its display).
    "main": {"pd": (("--config", EXACT_CONFIG, "--verbose"), {}),
             "colocated": (("--config", EXACT_CONFIG, "--mode", "colocated"), {})},
    "affinity": {"affinity": (("--config", AFFINITY_CONFIG, "--verbose"), {})},
    "autoscale": {"autoscale": (("--config", AUTOSCALE_CONFIG, "--verbose"),
                                {"PDSERVE_API_KEYS": f"other-key,{API_KEY}"})},
}
BARE = "bare"
"""Bare vLLM on the built-in model (`stack.start_bare`): joins the main group when a test first asks for it;
the module that asks stops it when done, so the other tests run beside the same stacks as always."""


class StackManager:
    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.group: str | None = None
        self.running: dict[str, stack_lib.Stack] = {}
        self.problems: list[str] = []

    def get(self, name: str) -> stack_lib.Stack:
        if name == BARE:
            self.get("pd")
            if BARE not in self.running:
                self.running[BARE] = stack_lib.start_bare(BARE, free_port(), self.log_dir)
                stack_lib.wait_ready(self.running[BARE])
            return self.running[BARE]
        group = next(g for g, members in GROUPS.items() if name in members)
        if group != self.group:
            self.stop_all()
            self.group = group
            self.running = {member: stack_lib.start(member, free_port(), free_port(), self.log_dir,
                                                    *self._own_config(member, args), env=env)
                            for member, (args, env) in GROUPS[group].items()}
            for stack in self.running.values():
                stack_lib.wait_ready(stack)
        return self.running[name]

    def stop(self, name: str) -> None:
        """Stop one running stack (cleanly, or it is reported at the end of the session)."""
        stack = self.running.pop(name, None)
        if stack is not None:
            code = stack_lib.stop(stack)
            left = stack_lib.survivors(stack)
            if code != 0 or left:
                self.problems.append(f"{stack.name}: exit {code}, left running: {left}\n{stack.log_tail(20)}")

    def _own_config(self, member: str, args: tuple[str, ...]) -> tuple[str, ...]:
        """Each stack reads a copy of its config file, which a test may edit and reload (SIGHUP)."""
        args = list(args)
        at = args.index("--config") + 1
        copy = self.log_dir / f"{member}.yaml"
        shutil.copyfile(stack_lib.ROOT / args[at], copy)
        args[at] = str(copy)
        return tuple(args)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)
        self.group = None


@pytest.fixture(scope="session")
def stacks(tmp_path_factory):
    manager = StackManager(tmp_path_factory.mktemp("stacks"))
    try:
        yield manager
    finally:
        manager.stop_all()
    assert not manager.problems, "unclean shutdown:\n" + "\n".join(manager.problems)


@pytest.fixture
def pd_stack(stacks):
    return stacks.get("pd")


@pytest.fixture
def colocated_stack(stacks):
    return stacks.get("colocated")


@pytest.fixture
def bare_stack(stacks):
    return stacks.get(BARE)


@pytest.fixture
def affinity_stack(stacks):
    return stacks.get("affinity")


@pytest.fixture
def autoscale_stack(stacks):
    return stacks.get("autoscale")


@pytest.fixture
def auth() -> dict[str, str]:
    """Headers the autoscale stack (started with API keys) requires on /v1 routes."""
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def client(pd_stack):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=pd_stack.api_url, api_key="not-needed", max_retries=0, timeout=300)


@pytest.fixture
def model_name():
    return "SmolLM2-135M-Instruct"


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from serving.config import BUILTIN_MODEL
    from serving.model import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(BUILTIN_MODEL))
