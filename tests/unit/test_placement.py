"""KubeRay's operator rules, and that every pod and every Serve replica can only land where it belongs."""

from __future__ import annotations

import copy

import pytest
import yaml

from serving import mig
from serving.app import replica_options
from serving.config import PDServeConfig
from tests.unit.manifests import (
    CPU_NODE,
    KUBERAY,
    PROFILE_DIRS,
    admitted,
    all_of,
    app_config,
    extended_requests,
    fits,
    gpu_nodes,
    kuberay_errors,
    kubernetes_configs,
    offered,
    one,
    schedulable,
)

PROFILES = pytest.mark.parametrize("profile_dir", PROFILE_DIRS, ids=[p.name for p in PROFILE_DIRS])
ROLES = ("prefill", "decode")


def groups(rayservice: dict) -> dict[str, dict]:
    spec = rayservice["spec"]["rayClusterConfig"]
    return {"head": spec["headGroupSpec"], **{g["groupName"]: g for g in spec["workerGroupSpecs"]}}


def ray_request(config: PDServeConfig, role: str) -> dict[str, float]:
    """The Ray resources one replica of `role` asks for, as `serving.app` builds its Serve options."""
    actor = replica_options(config.pool(role))["ray_actor_options"]
    return {"CPU": actor["num_cpus"], "GPU": actor["num_gpus"], **actor.get("resources", {})}


@PROFILES
def test_kuberay_operator_rules_hold(profile_dir):
    assert kuberay_errors(one(profile_dir, "RayService")) == []


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda rs: rs["metadata"].update(name="p" * 48), "no more than 47 characters"),
        (
            lambda rs: groups(rs)["prefill"].update(minReplicas=9, maxReplicas=8, replicas=9),
            "minReplicas > maxReplicas",
        ),
        (
            lambda rs: groups(rs)["decode"]["rayStartParams"].update({"num-gpus": "1"}),
            "both rayStartParams and Resources",
        ),
        (lambda rs: groups(rs)["head"]["rayStartParams"].update(labels="a=b"), "rayStartParams['labels']"),
        (
            lambda rs: groups(rs)["decode"]["template"]["spec"].update(restartPolicy="Always"),
            "should be Never or unset",
        ),
    ],
)
def test_kuberay_rules_catch_violations(mutate, message):
    rayservice = copy.deepcopy(one(KUBERAY / "h100-mig", "RayService"))
    mutate(rayservice)
    assert any(message in err for err in kuberay_errors(rayservice)), kuberay_errors(rayservice)


@PROFILES
def test_each_role_can_only_be_placed_on_its_own_group(profile_dir):
    rayservice = one(profile_dir, "RayService")
    config = app_config(rayservice)
    offers = {name: offered(group) for name, group in groups(rayservice).items()}
    for role in ROLES:
        hosts = [name for name, offer in offers.items() if fits(ray_request(config, role), offer)]
        assert hosts == [role], f"{role} replicas could be placed on {hosts}"
    assert offers["head"].get("CPU", 0) == 0, "the head must offer no CPU: nothing may run there but Ray's own actors"


@PROFILES
def test_one_replica_per_pod_and_per_slice(profile_dir):
    """A pod holds one slice and offers Ray one GPU and one unit of its role's resource: one replica fits."""
    rayservice = one(profile_dir, "RayService")
    config = app_config(rayservice)
    for role in ROLES:
        group = groups(rayservice)[role]
        request = ray_request(config, role)
        offer = offered(group)
        assert not fits({k: 2 * v for k, v in request.items() if k != "CPU"}, offer)
        (gpu,) = extended_requests(group["template"]["spec"]).values()
        assert gpu == offer["GPU"] == 1
        reps = config.pool(role).replicas
        assert (group["minReplicas"], group["maxReplicas"]) == (reps.min, reps.max)


@PROFILES
def test_worker_pods_fit_the_gpu_nodes_and_the_head_does_not(profile_dir):
    node = gpu_nodes(profile_dir)
    rayservice = one(profile_dir, "RayService")
    for role in ROLES:
        pod = groups(rayservice)[role]["template"]["spec"]
        assert schedulable(pod, node), f"{role} pods cannot be scheduled on the profile's nodes"
        assert not schedulable(pod, CPU_NODE), f"{role} pods could land on a node without slices"
    head = groups(rayservice)["head"]["template"]["spec"]
    assert not schedulable(head, node), "the CPU-only head must stay off the GPU nodes (it tolerates no GPU taint)"
    assert schedulable(head, CPU_NODE)


@PROFILES
def test_prefill_and_decode_request_their_own_slice_in_production(profile_dir):
    rayservice = one(profile_dir, "RayService")
    k = PDServeConfig.from_file(kubernetes_configs()[profile_dir.name]).kubernetes
    requested = {role: set(extended_requests(groups(rayservice)[role]["template"]["spec"])) for role in ROLES}
    if k.tier == "production":
        assert requested["prefill"].isdisjoint(requested["decode"])
        assert not any(name.endswith(".shared") for names in requested.values() for name in names)


@PROFILES
def test_mig_layout_is_valid_for_the_gpu(profile_dir):
    maps = [cm for cm in all_of(profile_dir, "ConfigMap") if cm["metadata"]["name"] == "pdserve-mig-parted-config"]
    labels = one(profile_dir, "NodePool")["spec"]["template"]["metadata"]["labels"]
    if "nvidia.com/mig.config" not in labels:
        pytest.skip(f"{profile_dir.name} does not partition its GPUs")
    mig_configs = yaml.safe_load(maps[0]["data"]["config.yaml"])["mig-configs"]
    assert mig_configs["all-disabled"] == [{"devices": "all", "mig-enabled": False}]
    (entry,) = mig_configs[labels["nvidia.com/mig.config"]]
    (gpu,) = [name for name, spec in mig.GPUS.items() if set(entry["device-filter"]) == set(spec.pci_device_ids)]
    layout = [profile for profile, count in entry["mig-devices"].items() for _ in range(count)]
    assert mig.fits(gpu, layout)
    capacity = gpu_nodes(profile_dir)["capacity"]
    for profile, count in entry["mig-devices"].items():
        advertised = {k: v for k, v in capacity.items() if k.startswith(f"nvidia.com/mig-{profile}")}
        assert advertised, f"NodeOverlay declares no capacity for {profile}"
        assert sum(advertised.values()) % count == 0


@PROFILES
def test_time_slicing_config_selects_and_names_what_pods_request(profile_dir):
    plugin = [cm for cm in all_of(profile_dir, "ConfigMap") if cm["metadata"]["name"] == "pdserve-device-plugin-config"]
    if not plugin:
        pytest.skip(f"{profile_dir.name} shares no GPU")
    labels = one(profile_dir, "NodePool")["spec"]["template"]["metadata"]["labels"]
    config = yaml.safe_load(plugin[0]["data"][labels["nvidia.com/device-plugin.config"]])
    sharing = config["sharing"]["timeSlicing"]
    assert sharing["renameByDefault"] is True
    (resource,) = sharing["resources"]
    shared = f"{resource['name']}.shared"
    assert gpu_nodes(profile_dir)["capacity"][shared] % resource["replicas"] == 0
    pods = [g["template"]["spec"] for g in groups(one(profile_dir, "RayService")).values()]
    pods += [d["spec"]["template"]["spec"] for d in all_of(profile_dir, "Deployment")]
    assert any(shared in extended_requests(pod) for pod in pods)


def test_hybrid_dev_pods_stay_off_production_slices():
    hybrid = KUBERAY / "hybrid"
    node = gpu_nodes(hybrid)
    quotas = all_of(hybrid, "ResourceQuota")
    (dev,) = all_of(hybrid, "Deployment")
    dev_pod = dev["spec"]["template"]["spec"]
    dev_ns = dev["metadata"]["namespace"]
    assert all(q["metadata"]["namespace"] == dev_ns for q in quotas) and quotas
    # The dev sandbox runs on the shared slice of the hybrid nodes, and only there.
    assert schedulable(dev_pod, node) and admitted(dev_pod, quotas)
    assert set(extended_requests(dev_pod)) == {"nvidia.com/mig-1g.20gb.shared"}
    # A dev pod asking for any production slice is refused at admission, tolerations or not.
    production = set()
    for role in ROLES:
        pod = groups(one(hybrid, "RayService"))[role]["template"]["spec"]
        production |= set(extended_requests(pod))
        assert not admitted({**copy.deepcopy(dev_pod), "containers": pod["containers"]}, quotas)
    assert production and not any(name.endswith(".shared") for name in production)
    # A pod without the pool's tolerations cannot land on the hybrid nodes at all.
    untolerated = {k: v for k, v in dev_pod.items() if k != "tolerations"}
    assert not schedulable(untolerated, node)
    # The sandbox serves the same model colocated, taking at most its share of the time-sliced slice's memory.
    (config_map,) = [cm for cm in all_of(hybrid, "ConfigMap") if cm["metadata"]["namespace"] == dev_ns]
    sandbox = PDServeConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert sandbox.mode == "colocated" and sandbox.colocated.resources.num_gpus == 1
    (plugin,) = [cm for cm in all_of(hybrid, "ConfigMap") if cm["metadata"]["name"] == "pdserve-device-plugin-config"]
    (shared,) = yaml.safe_load(next(iter(plugin["data"].values())))["sharing"]["timeSlicing"]["resources"]
    assert sandbox.colocated.engine_args["gpu_memory_utilization"] <= 1 / shared["replicas"]
    # The production NetworkPolicy does not admit the dev sandbox to the Ray/NIXL ports.
    policy = one(hybrid, "NetworkPolicy")
    selector = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    dev_labels = dev["spec"]["template"]["metadata"]["labels"]
    assert any(dev_labels.get(k) != v for k, v in selector.items())


@PROFILES
def test_network_policy_keeps_ray_and_nixl_ports_inside_the_app(profile_dir):
    policy = one(profile_dir, "NetworkPolicy")
    rayservice = one(profile_dir, "RayService")
    config = app_config(rayservice)
    pods = [g["template"]["metadata"]["labels"] for g in groups(rayservice).values()]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert all(all(labels.get(k) == v for k, v in selector.items()) for labels in pods)
    open_ports = {
        p["port"]
        for rule in policy["spec"]["ingress"]
        if rule["from"] != [{"podSelector": {"matchLabels": selector}}]
        for p in rule.get("ports", [])
    }
    assert config.kv_transfer.side_channel_port not in open_ports
    assert 6379 not in open_ports and config.router.port in open_ports
