"""The Kubernetes subcommands of `pdserve`: `render` (manifests of a profile) and `status` (the live RayService)."""

from __future__ import annotations

import argparse


def add_kube_parsers(sub: argparse._SubParsersAction) -> None:
    render = sub.add_parser("render", help="write the KubeRay/Kubernetes manifests of a profile (kubectl apply -k)")
    render.add_argument("--config", required=True, help="a configs/*.yaml file with a kubernetes section")
    render.add_argument("--out", required=True, help="output folder, e.g. deploy/kuberay/<profile>/")
    render.set_defaults(func=_render)
    status = sub.add_parser("status", help="show a profile's RayService on the cluster (needs a kubeconfig)")
    status.add_argument("--config", help="the profile's configs/*.yaml (gives namespace and name)")
    status.add_argument("--namespace")
    status.add_argument("--name", help="RayService name")
    status.set_defaults(func=_status)


def _render(args: argparse.Namespace) -> int:
    from serving.render import render_command

    return render_command(args)


def _status(args: argparse.Namespace) -> int:
    from serving.status import status_command

    return status_command(args)
