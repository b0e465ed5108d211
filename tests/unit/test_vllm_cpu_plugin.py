"""The spin cap for CPU engines: it acts only where pdserve asked for it, and fails if vLLM's queue changes shape."""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points

import pytest

from serving import vllm_cpu_plugin

pytest.importorskip("vllm")
# Not importorskip: vLLM moving the queue is exactly what these tests exist to catch.
from vllm.distributed.device_communicators import shm_broadcast  # noqa: E402


def test_pdserve_is_registered_as_a_vllm_general_plugin():
    plugins = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert plugins.get("pdserve_cpu_engine") == "serving.vllm_cpu_plugin:register"


def test_upstream_readers_still_spin_for_a_second_after_each_read():
    init = inspect.signature(shm_broadcast.SpinCondition.__init__)
    assert init.parameters["busy_loop_s"].default == 1, "the upstream default changed: re-measure, maybe drop this"
    wait = inspect.getsource(shm_broadcast.SpinCondition.wait)
    assert "self.busy_loop_s" in wait and "sched_yield" in wait


class Reader:
    """SpinCondition's reader side as `wait` sees it."""

    def __init__(self):
        self.busy_loop_s = 1.0
        self.waited = []

    def wait(self, timeout_ms=None):
        self.waited.append(self.busy_loop_s)


def test_the_cap_applies_to_readers_that_already_exist():
    reader = Reader()
    vllm_cpu_plugin.cap_spin(Reader, 0.01)
    reader.wait()
    assert reader.waited == [0.01]
    vllm_cpu_plugin.cap_spin(Reader, 0.5)  # a second call changes the cap, it does not wrap twice
    other = Reader()
    other.wait()
    assert other.waited == [0.5]


def test_without_the_environment_variable_vllm_is_left_alone(monkeypatch):
    monkeypatch.delenv(vllm_cpu_plugin.SPIN_ENV, raising=False)
    before = shm_broadcast.SpinCondition.wait
    vllm_cpu_plugin.register()
    assert shm_broadcast.SpinCondition.wait is before
