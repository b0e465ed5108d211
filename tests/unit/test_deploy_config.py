"""Bad Kubernetes profiles fail to load or render, with a message that names the field to change."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serving.config import PDServeConfig
from serving.deploy_config import KubernetesConfig
from serving.render import RenderError, render, render_command

ROOT = Path(__file__).resolve().parents[2]


def profile(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


def changed(name: str, **dotted) -> dict:
    data = copy.deepcopy(profile(name))
    for path, value in dotted.items():
        node = data
        *parents, leaf = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data


def load_error(data: dict) -> str:
    with pytest.raises(ValidationError) as err:
        PDServeConfig.model_validate(data)
    return str(err.value)


def render_error(data: dict) -> str:
    config = PDServeConfig.model_validate(data)
    with pytest.raises(RenderError) as err:
        render(config, "configs/test.yaml")
    return str(err.value)


def test_unknown_mig_profile_names_the_layout_field():
    message = load_error(changed("h100-mig", kubernetes__nodes__mig_layout=["3g.40gb", "2g.30gb", "2g.20gb"]))
    assert "kubernetes.nodes.mig_layout" in message and "unknown MIG profile '2g.30gb'" in message


def test_layout_that_does_not_fit_names_the_layout_field():
    message = load_error(changed("h100-mig", kubernetes__nodes__mig_layout=["3g.40gb", "3g.40gb", "2g.20gb"]))
    assert "nodes.mig_layout" in message and "does not fit a H100-80GB" in message


def test_prefill_and_decode_sharing_a_slice_in_production_is_refused():
    data = changed("h100-mig", kubernetes__decode__mig_profile="3g.40gb")
    message = load_error(data)
    assert "kubernetes.decode.mig_profile" in message and "share '3g.40gb' in production" in message


def test_time_sliced_group_in_production_is_refused():
    data = changed("hybrid", kubernetes__decode__mig_profile="1g.20gb")
    data["kubernetes"]["decode"]["time_sliced"] = True
    assert "kubernetes.decode.time_sliced: production slices are dedicated" in load_error(data)


def test_development_may_share_a_gpu():
    config = PDServeConfig.model_validate(profile("dev-timeslice"))
    assert (
        config.kubernetes.prefill.gpu_resource() == config.kubernetes.decode.gpu_resource() == "nvidia.com/gpu.shared"
    )


def test_group_slice_must_be_in_the_layout():
    message = load_error(changed("h100-mig", kubernetes__decode__mig_profile="1g.10gb"))
    assert "kubernetes.decode.mig_profile '1g.10gb' is not in nodes.mig_layout" in message


def test_unshared_group_on_a_time_sliced_profile_is_refused():
    message = load_error(changed("hybrid", kubernetes__decode__mig_profile="1g.20gb"))
    assert "kubernetes.decode.mig_profile '1g.20gb' is time-sliced" in message


def test_rayservice_name_follows_kuberay():
    assert "at most 47 characters" in load_error(changed("h100-mig", kubernetes__name="p" * 48))
    assert "DNS-1035" in load_error(changed("h100-mig", kubernetes__name="PD_serve"))


def test_unknown_fields_and_bad_quantities_are_rejected():
    assert "kubernetes.prefill.gpus" in load_error(changed("h100-mig", kubernetes__prefill__gpus=2))
    assert "kubernetes.decode.memory" in load_error(changed("h100-mig", kubernetes__decode__memory="32 GB"))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"device": "cpu", "kv_transfer__buffer_device": "cpu"}, "device:"),
        ({"kv_transfer__buffer_device": "cpu"}, "kv_transfer.buffer_device:"),
        ({"kv_transfer__side_channel_port": None}, "kv_transfer.side_channel_port:"),
        ({"mode": "colocated", "colocated__resources": {"num_gpus": 1}}, "mode:"),
        ({"prefill__resources__resources": {}}, "prefill.resources.resources:"),
        ({"decode__resources__num_gpus": 0.5}, "decode.resources.num_gpus:"),
        ({"decode__replicas__max": 40}, "decode.replicas.max:"),
        ({"kubernetes__prefill__cpu": "0.5"}, "kubernetes.prefill.cpu:"),
    ],
)
def test_render_checks_name_the_field(changes, field):
    assert render_error(changed("h100-mig", **changes)).startswith(field)


def test_time_sliced_engines_must_fit_their_share_of_memory():
    data = changed("dev-timeslice", prefill__engine_args={"gpu_memory_utilization": 0.5})
    assert render_error(data).startswith("prefill.engine_args.gpu_memory_utilization:")


def test_dev_sandbox_needs_its_share_of_memory():
    data = changed("hybrid", kubernetes__dev__gpu_memory_utilization=0.8)
    assert "kubernetes.dev.gpu_memory_utilization" in load_error(data)


def test_config_without_kubernetes_section_cannot_render():
    assert render_error({}).startswith("kubernetes:")


def test_cli_reports_the_field_and_fails(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(changed("h100-mig", kubernetes__nodes__mig_layout=["7g.80gb", "1g.10gb"])))
    out = tmp_path / "out"
    from argparse import Namespace

    assert render_command(Namespace(config=str(bad), out=str(out))) == 2
    assert "kubernetes.nodes.mig_layout" in capsys.readouterr().err
    assert not out.exists()


def test_pdserve_up_configs_need_no_kubernetes_section():
    config = PDServeConfig.from_file(ROOT / "configs" / "cpu-exact.yaml")
    assert config.kubernetes is None
    assert isinstance(PDServeConfig.model_validate(profile("h100-mig")).kubernetes, KubernetesConfig)
