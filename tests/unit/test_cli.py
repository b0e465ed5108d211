"""`pdserve up`'s flags land in the one config model the run, the manifests and the tests share."""

from __future__ import annotations

from pathlib import Path

from serving.cli import load_config, parser

ROOT = Path(__file__).resolve().parents[2]


def test_up_flags_override_the_config_file():
    args = parser().parse_args(["up", "--config", str(ROOT / "configs" / "cpu-exact.yaml"), "--model",
                                "builtin:stand-in", "--mode", "colocated", "--port", "9000", "--metrics-port", "9100",
                                "--host", "0.0.0.0", "--verbose"])
    config = load_config(args)
    assert (config.model.source, config.mode, config.router.port, config.router.metrics_port,
            config.router.host) == ("builtin:stand-in", "colocated", 9000, 9100, "0.0.0.0")
    assert config.model.dtype == "float32"  # the rest is the file's
    assert args.verbose


def test_up_without_flags_is_the_built_in_default():
    args = parser().parse_args(["up"])
    config = load_config(args)
    assert config.model.source == "builtin:smollm2-135m-instruct" and config.mode == "disaggregated"
    assert not args.verbose
