"""Closed-loop load shapes as stage tables: how many users run at each moment of the test.

These shapes set a number of *users*, each sending its next request when the last one ends. That cannot
reproduce arrival bursts: when the server slows, users wait and the arrival rate drops with it. `bursty` is a
sharp step of concurrency (idle, spike, idle); for arrivals that ignore the server, replay a trace (open loop).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    until_s: float  # the stage lasts until this time since the start
    users: int
    spawn_rate: float  # users started (or stopped) per second on entering the stage


def steady(duration_s: float, users: int, spawn_rate: float) -> list[Stage]:
    return [Stage(duration_s, users, spawn_rate)]


def step(duration_s: float, max_users: int, step_users: int, step_time_s: float, spawn_rate: float) -> list[Stage]:
    """`step_users` more users every `step_time_s`, up to `max_users`, then hold until `duration_s`."""
    if step_users < 1 or step_time_s <= 0:
        raise ValueError("step: --step-users must be >= 1 and --step-time > 0")
    stages: list[Stage] = []
    users, until = step_users, step_time_s
    while users < max_users and until < duration_s:
        stages.append(Stage(until, users, spawn_rate))
        users, until = users + step_users, until + step_time_s
    stages.append(Stage(duration_s, min(users, max_users), spawn_rate))
    return stages


def bursty(duration_s: float, peak_users: int, idle_users: int = 0, burst_at_s: float | None = None,
           burst_duration_s: float | None = None) -> list[Stage]:
    """Idle, then all `peak_users` at once (within a second) for the burst, then idle again.

    By default the burst is the middle third of the run.
    """
    burst_at = duration_s / 3 if burst_at_s is None else burst_at_s
    length = duration_s / 3 if burst_duration_s is None else burst_duration_s
    if burst_at < 0 or length <= 0 or burst_at + length > duration_s:
        raise ValueError(f"bursty: the burst [{burst_at:g}, {burst_at + length:g}) s must lie within the "
                         f"{duration_s:g} s run")
    sharp = float(max(peak_users, idle_users, 1))  # everyone starts (and stops) within a second
    stages = [Stage(burst_at, idle_users, sharp)] if burst_at > 0 else []
    stages += [Stage(burst_at + length, peak_users, sharp)]
    if burst_at + length < duration_s:
        stages.append(Stage(duration_s, idle_users, sharp))
    return stages


def stage_at(stages: list[Stage], t: float) -> Stage | None:
    """The stage running at time t, or None once the last has ended (the test stops)."""
    return next((s for s in stages if t < s.until_s), None)
