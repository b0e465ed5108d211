"""The MIG catalog against NVIDIA's mig-parted default config, and the placement rule on known layouts."""

from __future__ import annotations

import pytest
import yaml

from serving import mig
from tests.unit.kube_schema import SHARED

MIG_PARTED = SHARED / "mig-parted-default-config.yaml"
MIG_MODELS = [name for name, spec in mig.GPUS.items() if spec.mig_capable]


@pytest.fixture(scope="module")
def mig_configs() -> dict[str, list[dict]]:
    if not MIG_PARTED.exists():
        pytest.skip(f"{MIG_PARTED} is absent: the shared reference data is needed to check the MIG catalog")
    return yaml.safe_load(MIG_PARTED.read_text())["mig-configs"]


def _filters(entry: dict) -> set[str]:
    flt = entry.get("device-filter")
    if flt is None:
        return set()
    return {flt} if isinstance(flt, str) else set(flt)


def layouts_for(mig_configs: dict, gpu: str) -> dict[str, dict[str, int]]:
    """name -> mig-devices of every enabled layout mig-parted would apply to this GPU model.

    Entries with a device filter apply when it names one of the model's PCI ids; unfiltered entries apply to
    every GPU, so they are taken when all their profile names exist on this model (the file's comments say
    which model each `all-*` layout is for, and names are unique per memory size).
    """
    ids = set(mig.GPUS[gpu].pci_device_ids)
    out = {}
    for name, entries in mig_configs.items():
        for entry in entries:
            devices = entry.get("mig-devices") or {}
            if not entry.get("mig-enabled") or not devices:
                continue
            flt = _filters(entry)
            if (flt and flt & ids) or (not flt and set(devices) <= set(mig.GPUS[gpu].profiles)):
                out[name] = devices
    return out


@pytest.mark.parametrize("gpu", MIG_MODELS)
def test_every_nvidia_layout_for_the_model_fits(mig_configs, gpu):
    layouts = layouts_for(mig_configs, gpu)
    assert "all-balanced" in layouts, f"no all-balanced layout found for {gpu}"
    for name, devices in layouts.items():
        expanded = [profile for profile, count in devices.items() for _ in range(count)]
        assert mig.fits(gpu, expanded), f"mig-parted layout {name} {devices} rejected for {gpu}"


@pytest.mark.parametrize("gpu", MIG_MODELS)
def test_catalog_profiles_and_counts_match_nvidia(mig_configs, gpu):
    """Each profile has an `all-<profile>` layout in mig-parted whose count is the catalog's maximum."""
    layouts = layouts_for(mig_configs, gpu)
    for profile in mig.GPUS[gpu].profiles.values():
        name = "all-" + profile.name.replace("+me", ".me")
        assert name in layouts, f"{gpu} {profile.name}: mig-parted has no {name}"
        assert layouts[name] == {profile.name: profile.max_count}, (gpu, profile.name, layouts[name])


@pytest.mark.parametrize("gpu", MIG_MODELS)
def test_catalog_pci_ids_are_nvidias(mig_configs, gpu):
    known = set().union(*(_filters(e) for entries in mig_configs.values() for e in entries))
    assert set(mig.GPUS[gpu].pci_device_ids) <= known


@pytest.mark.parametrize("gpu", MIG_MODELS)
def test_full_gpu_profile_takes_all_slices(gpu):
    full = [p for p in mig.GPUS[gpu].profiles.values() if p.name.startswith("7g.")]
    assert len(full) == 1 and full[0].memory_gb == mig.GPUS[gpu].memory_gb
    assert not mig.fits(gpu, [full[0].name, next(iter(mig.GPUS[gpu].profiles))])


@pytest.mark.parametrize(
    ("gpu", "layout", "ok"),
    [
        ("H100-80GB", ["3g.40gb", "2g.20gb", "2g.20gb"], True),  # 3g at 4, the 2g's at 0 and 2
        ("H100-80GB", ["3g.40gb", "2g.20gb", "1g.20gb"], True),
        ("H100-80GB", ["4g.40gb", "2g.20gb", "1g.10gb"], True),
        ("H100-80GB", ["3g.40gb", "3g.40gb", "1g.10gb"], False),  # 7 compute, but no memory slice left
        ("H100-80GB", ["2g.20gb"] * 4, False),  # 2g only starts at 0, 2, 4
        ("H100-80GB", ["1g.20gb"] * 5, False),
        ("H100-80GB", ["1g.10gb"] * 8, False),  # 8 compute slices
        ("H100-80GB", ["1g.10gb+me", "1g.10gb+me"], False),  # one set of media engines
        ("A100-40GB", ["3g.20gb", "2g.10gb", "2g.10gb"], True),
        ("A100-40GB", ["4g.20gb", "3g.20gb"], True),
        ("A100-40GB", ["7g.40gb"], True),
        ("H200-141GB", ["3g.71gb", "2g.35gb", "2g.35gb"], True),
        ("H200-141GB", ["4g.71gb", "4g.71gb"], False),
    ],
)
def test_placement_rule(gpu, layout, ok):
    assert mig.fits(gpu, layout) is ok


def test_unknown_profile_and_non_mig_gpu_are_named():
    with pytest.raises(mig.LayoutError, match="unknown MIG profile '3g.20gb' for H100-80GB"):
        mig.place("H100-80GB", ["3g.20gb"])
    with pytest.raises(mig.LayoutError, match="L4 does not support MIG"):
        mig.place("L4", ["1g.10gb"])


def test_mig_parted_entry_counts_profiles():
    entry = mig.mig_parted_entry("H100-80GB", ["3g.40gb", "2g.20gb", "2g.20gb"])
    assert entry["mig-devices"] == {"3g.40gb": 1, "2g.20gb": 2}
    assert entry["device-filter"] == list(mig.GPUS["H100-80GB"].pci_device_ids)
