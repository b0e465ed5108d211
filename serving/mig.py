"""NVIDIA MIG catalog per GPU model, and whether a per-GPU layout of slices fits the GPU. No Kubernetes here.

Every MIG-capable GPU of these generations has 7 compute slices and 8 memory slices. A profile `<c>g.<m>gb`
takes `c` compute slices and a fixed run of memory slices, and may only start at certain memory-slice indices
(NVIDIA MIG User Guide, "Supported MIG Profiles"; `nvidia-smi mig -lgipp` lists the same placements):

    7g.*               8 memory slices, start 0
    4g.*               4 memory slices, start 0
    3g.*               4 memory slices, start 0 or 4
    2g.*               2 memory slices, start 0, 2 or 4
    1g.* (double mem)  2 memory slices, start 0, 2, 4 or 6   (A100-40GB 1g.10gb, H100 1g.20gb, H200 1g.35gb)
    1g.*               1 memory slice,  start 0 .. 6
    1g.*+me            as its 1g profile, at most one per GPU (it takes the media engines)

A layout fits when its profiles can be placed on disjoint memory slices, with at most 7 compute slices in all
and at most one `+me` profile. `fits` searches for such a placement; every layout of NVIDIA's own mig-parted
default config for these models passes it (tests/unit/test_mig.py checks that against the real file).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

GPUModel = Literal["A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB", "L4", "A10G"]

COMPUTE_SLICES = 7
MEMORY_SLICES = 8


@dataclass(frozen=True)
class MigProfile:
    name: str
    compute: int
    memory_slices: int
    starts: tuple[int, ...]
    """Memory-slice indices where an instance of this profile may begin."""
    memory_gb: int

    @property
    def media_extensions(self) -> bool:
        return self.name.endswith("+me")

    @property
    def resource(self) -> str:
        """The extended resource the GPU operator's device plugin advertises under the mixed strategy."""
        return f"nvidia.com/mig-{self.name}"

    @property
    def max_count(self) -> int:
        return 1 if self.media_extensions else len(self.starts)


@dataclass(frozen=True)
class GPUSpec:
    model: str
    memory_gb: int
    pci_device_ids: tuple[str, ...]
    """PCI ids as mig-parted's `device-filter` spells them (device id + vendor 10DE)."""
    karpenter_gpu_name: str
    """Value of the `karpenter.k8s.aws/instance-gpu-name` label on AWS."""
    profiles: dict[str, MigProfile]

    @property
    def mig_capable(self) -> bool:
        return bool(self.profiles)


def _profiles(unit_gb: int, double_gb: int, two_gb: int, four_gb: int, full_gb: int) -> dict[str, MigProfile]:
    """The seven profiles every A100/H100/H200 variant has, named by its memory sizes."""
    table = [
        MigProfile(f"1g.{unit_gb}gb", 1, 1, (0, 1, 2, 3, 4, 5, 6), unit_gb),
        MigProfile(f"1g.{unit_gb}gb+me", 1, 1, (0, 1, 2, 3, 4, 5, 6), unit_gb),
        MigProfile(f"1g.{double_gb}gb", 1, 2, (0, 2, 4, 6), double_gb),
        MigProfile(f"2g.{two_gb}gb", 2, 2, (0, 2, 4), two_gb),
        MigProfile(f"3g.{four_gb}gb", 3, 4, (0, 4), four_gb),
        MigProfile(f"4g.{four_gb}gb", 4, 4, (0,), four_gb),
        MigProfile(f"7g.{full_gb}gb", 7, 8, (0,), full_gb),
    ]
    return {p.name: p for p in table}


GPUS: dict[str, GPUSpec] = {
    spec.model: spec
    for spec in (
        # A100-SXM4-40GB, A100-PCIE-40GB
        GPUSpec("A100-40GB", 40, ("0x20B010DE", "0x20F110DE"), "a100", _profiles(5, 10, 10, 20, 40)),
        # A100-SXM4-80GB, A100-PCIE-80GB
        GPUSpec("A100-80GB", 80, ("0x20B210DE", "0x20B510DE"), "a100", _profiles(10, 20, 20, 40, 80)),
        # H100-SXM5-80GB, H100-PCIE-80GB
        GPUSpec("H100-80GB", 80, ("0x233010DE", "0x233110DE"), "h100", _profiles(10, 20, 20, 40, 80)),
        # H200-SXM5-141GB
        GPUSpec("H200-141GB", 141, ("0x233510DE",), "h200", _profiles(18, 35, 35, 71, 141)),
        # Whole GPUs without MIG: shared by time-slicing only.
        GPUSpec("L4", 24, (), "l4", {}),
        GPUSpec("A10G", 24, (), "a10g", {}),
    )
}


class LayoutError(ValueError):
    """A MIG layout that names an unknown profile or cannot be placed on the GPU."""


def profile(gpu: str, name: str) -> MigProfile:
    spec = GPUS[gpu]
    if not spec.mig_capable:
        raise LayoutError(f"{gpu} does not support MIG")
    if name not in spec.profiles:
        raise LayoutError(f"unknown MIG profile {name!r} for {gpu}; known: {', '.join(spec.profiles)}")
    return spec.profiles[name]


def place(gpu: str, layout: Iterable[str]) -> dict[int, str]:
    """Start index -> profile for one valid placement of `layout` on a `gpu`; raises `LayoutError` if none."""
    profiles = sorted((profile(gpu, name) for name in layout), key=lambda p: (-p.memory_slices, p.name))
    if not profiles:
        raise LayoutError("a MIG layout needs at least one slice")
    compute = sum(p.compute for p in profiles)
    if compute > COMPUTE_SLICES:
        raise LayoutError(f"layout needs {compute} compute slices; a {gpu} has {COMPUTE_SLICES}")
    memory = sum(p.memory_slices for p in profiles)
    if memory > MEMORY_SLICES:
        raise LayoutError(f"layout needs {memory} memory slices; a {gpu} has {MEMORY_SLICES}")
    media = sum(p.media_extensions for p in profiles)
    if media > 1:
        raise LayoutError(f"layout has {media} '+me' profiles; a GPU has one set of media engines")
    placement = _search(profiles, frozenset(), {})
    if placement is None:
        counts = ", ".join(f"{n}x{name}" for name, n in Counter(p.name for p in profiles).items())
        raise LayoutError(f"no valid placement of {counts} on a {gpu} (placement rules: see serving.mig)")
    return dict(sorted(placement.items()))


def _search(rest: Sequence[MigProfile], used: frozenset[int], placed: dict[int, str]) -> dict[int, str] | None:
    if not rest:
        return placed
    head, tail = rest[0], rest[1:]
    for start in head.starts:
        span = frozenset(range(start, start + head.memory_slices))
        if span & used:
            continue
        found = _search(tail, used | span, {**placed, start: head.name})
        if found is not None:
            return found
    return None


def fits(gpu: str, layout: Iterable[str]) -> bool:
    try:
        place(gpu, layout)
    except LayoutError:
        return False
    return True


def layout_counts(layout: Iterable[str]) -> dict[str, int]:
    """`[3g.40gb, 2g.20gb, 2g.20gb]` -> `{3g.40gb: 1, 2g.20gb: 2}`, in first-seen order (mig-parted's form)."""
    return dict(Counter(layout))


def mig_parted_entry(gpu: str, layout: Iterable[str]) -> dict:
    """One `mig-configs` entry of a mig-parted config applying `layout` to every GPU of this model on a node."""
    layout = list(layout)
    place(gpu, layout)
    return {
        "device-filter": list(GPUS[gpu].pci_device_ids),
        "devices": "all",
        "mig-enabled": True,
        "mig-devices": layout_counts(layout),
    }
