"""The one typed configuration of a pdserve deployment.

`PDServeConfig` feeds `pdserve up` (local Ray), the KubeRay manifests and the tests. Fields that belong to
vLLM are passed through `PoolConfig.engine_args` and checked against vLLM's own argument parser when the
engine is built (see `serving.engine_args`), so this module never has to mirror vLLM's ~200 flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.deploy_config import KubernetesConfig

Role = Literal["prefill", "decode", "colocated"]
Mode = Literal["disaggregated", "colocated"]
Device = Literal["cpu", "cuda"]

BUILTIN_MODEL = "builtin:smollm2-135m-instruct"
BUILTIN_TOOL_PARSERS = {BUILTIN_MODEL: "hermes", "builtin:stand-in": "hermes"}
"""SmolLM2 writes tool calls as Hermes-style `<tool_call>{json}</tool_call>` (the stand-in has its tokenizer)."""

# Engine arguments that pdserve derives itself; setting them by hand would break the P/D pairing.
RESERVED_ENGINE_ARGS = frozenset(
    {"model", "served_model_name", "kv_transfer_config", "host", "port", "dtype", "max_model_len",
     "tool_call_parser", "enable_auto_tool_choice", "reasoning_parser", "chat_template",
     "default_chat_template_kwargs"}
)


class ConfigError(ValueError):
    """A configuration the engines would refuse, found before they start."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(StrictModel):
    source: str = BUILTIN_MODEL
    """`builtin:smollm2-135m-instruct`, a local Hugging Face folder, or a hub id (where a hub is reachable)."""
    served_name: str = "SmolLM2-135M-Instruct"
    """The name clients pass as `model` and that `GET /v1/models` lists."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "bfloat16"
    max_model_len: int = Field(2048, ge=16)
    # vLLM front-end flags. Both legs of a P/D request render it, so every pool gets the same ones (they are
    # refused in a pool's engine_args) and the prompt's tokens, hence its KV, are the same on both.
    tool_call_parser: str | None = None
    """vLLM's `--tool-call-parser` (e.g. `hermes`, `llama3_json`). None: the built-in models' own (`hermes`), no
    parser for other models; `none`: no parser. Checked against vLLM's registry when `pdserve up` starts."""
    enable_auto_tool_choice: bool | None = None
    """`--enable-auto-tool-choice` (`tool_choice: "auto"` parses tool calls out of the text). None: on whenever
    a tool-call parser is set."""
    reasoning_parser: str | None = None
    """vLLM's `--reasoning-parser` (e.g. `deepseek_r1`, `qwen3`): reasoning goes to `reasoning_content`."""
    chat_template: str | None = None
    """vLLM's `--chat-template`: a Jinja file (a path the replicas can read) or the template itself."""
    default_chat_template_kwargs: dict[str, Any] | None = None
    """vLLM's `--default-chat-template-kwargs`, e.g. `{enable_thinking: false}`: reasoning off unless a request
    asks for it (`reasoning_effort`, `reasoning.effort`, `chat_template_kwargs`)."""

    def frontend_args(self) -> dict[str, Any]:
        """The vLLM front-end flags this model is served with."""
        parser = self.tool_call_parser
        if parser is None and self.source in BUILTIN_TOOL_PARSERS:
            parser = BUILTIN_TOOL_PARSERS[self.source]
        parser = None if parser == "none" else parser
        auto = parser is not None if self.enable_auto_tool_choice is None else self.enable_auto_tool_choice
        args: dict[str, Any] = {"tool_call_parser": parser, "enable_auto_tool_choice": auto or None,
                                "reasoning_parser": self.reasoning_parser, "chat_template": self.chat_template,
                                "default_chat_template_kwargs": self.default_chat_template_kwargs}
        return {key: value for key, value in args.items() if value is not None}


class ResourcesConfig(StrictModel):
    """Ray resources one replica asks for; on KubeRay they pin a pool to its worker group (MIG slice)."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources, e.g. `{pdserve_prefill: 1}`; the local cluster is started with enough of them."""


class CPUConfig(StrictModel):
    """Settings that only matter when vLLM runs on the CPU."""

    threads_bind: str = "auto"
    """VLLM_CPU_OMP_THREADS_BIND for the engine: core list such as `0` or `0-1`, or `auto`."""
    kvcache_space_gib: int = Field(1, ge=1)
    """VLLM_CPU_KVCACHE_SPACE: GiB of KV cache per replica (vLLM takes whole GiB)."""
    engine_spin_s: float = Field(0.01, ge=0, le=1)
    """How long the engine's processes busy-wait for the next step after one (vLLM: 1 s); see
    `serving.vllm_cpu_plugin`. Long enough to span the gap between steps of a busy engine."""


class ReplicasConfig(StrictModel):
    min: int = Field(1, ge=0)
    max: int = Field(1, ge=1)
    initial: int | None = None

    @model_validator(mode="after")
    def _min_not_above_max(self) -> ReplicasConfig:
        """min <= initial <= max."""
        initial = self.min if self.initial is None else self.initial
        if not self.min <= initial <= self.max:
            raise ValueError(f"replicas must satisfy min <= initial <= max, got {self.min}/{initial}/{self.max}")
        return self


class PoolConfig(StrictModel):
    """One vLLM deployment: the prefill pool, the decode pool, or the single colocated pool."""

    replicas: ReplicasConfig = Field(default_factory=ReplicasConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    cpu: CPUConfig = Field(default_factory=CPUConfig)
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """Passed to vLLM as `--flag value` (snake_case keys); validated by vLLM's own parser."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment for the replica and its engine process."""
    max_ongoing_requests: int = Field(64, ge=1)
    """Requests Serve lets into one replica at once; the engine's scheduler batches them."""
    max_queued_requests: int = Field(256, ge=-1)
    """Requests that may wait for this pool beyond its replicas' max_ongoing_requests (-1: unbounded); past
    it the router answers 429 with Retry-After instead of letting latency grow without bound."""

    @model_validator(mode="after")
    def _no_reserved_engine_args(self) -> PoolConfig:
        """Engine args that pdserve owns cannot be overridden per pool."""
        clash = sorted(RESERVED_ENGINE_ARGS & set(self.engine_args))
        if clash:
            raise ValueError(f"engine_args may not set {clash}: pdserve derives them from model/kv_transfer (set "
                             "model.tool_call_parser & co there: every pool must render requests alike)")
        return self


class LocalConfig(StrictModel):
    """How `pdserve up` uses this machine (the RayService ignores it: there each pool has pods of its own)."""

    stack_cores: str = "auto"
    """Cores for everything but the engines' model threads (Ray, Serve, the ingress' HTTP side, the engines'
    scheduler processes), as a list like `0` or `2-3`. `auto`: the cores no pool binds its model to; where the
    pools bind every core (2 cores), the prefill pool's: its work comes in bursts, decode's steadily, token by
    token. `all`: no pinning."""


def cpu_list(text: str) -> set[int]:
    """`0-2,4` -> {0, 1, 2, 4}."""
    cores: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


class KVTransferConfig(StrictModel):
    connector: Literal["NixlConnector"] = "NixlConnector"
    buffer_device: Device = "cpu"
    """Where NIXL registers the KV cache: `cpu` here, `cuda` on GPUs with GPUDirect-capable UCX."""
    backends: list[str] = Field(default_factory=lambda: ["UCX"])
    side_channel_port: int | None = Field(None, ge=1024, le=65535)
    """NIXL handshake port; None picks a free port per replica (several replicas per host)."""
    lease_seconds: int = Field(30, ge=1)
    """How long a prefill replica pins KV blocks that no decode replica has pulled (vLLM `kv_lease_duration`)."""
    load_failure_policy: Literal["recompute", "fail"] = "recompute"
    """What decode does when a NIXL pull fails: recompute the prompt (counted as a transfer failure) or fail."""


class RouterConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    metrics_port: int = Field(8080, ge=1, le=65535)
    """Ray's Prometheus export port on this node (`/metrics`)."""
    prefill_timeout_s: float = Field(120.0, gt=0)
    """Longest wait for the prefill leg (queueing included) before the request fails with 504."""
    decode_first_token_timeout_s: float = Field(120.0, gt=0)
    """Longest wait for a stream's first chunk from the decode (or colocated) engine (KV pull included); past
    it the stream ends with a 504 error event."""
    request_timeout_s: float = Field(600.0, gt=0)
    """Longest wait for a whole non-streamed completion."""
    scale_from_zero_timeout_s: float = Field(600.0, gt=0)
    """Longest wait for pools at zero replicas to come up (an engine's cold start; minutes on a busy CPU)."""
    max_ongoing_requests: int = Field(256, ge=1)
    """Requests Serve lets into one ingress (decode or colocated) replica at once; the pool's own
    `max_ongoing_requests`/`max_queued_requests` then decide, with an OpenAI 429 past them."""
    direct_ingress: bool = True
    """Clients reach the ingress replicas through HAProxy (Ray Serve's direct ingress), which forwards each
    connection to a replica's own HTTP server: no Python proxy and no Ray hop per streamed token. False: Serve's
    Python proxy, one Ray hop per streamed chunk."""
    fallback_to_decode: bool = True
    """When the prefill leg fails (5xx, timeout, replica gone), serve the request on decode alone."""
    remote_prefill_min_tokens: int | None = Field(None, ge=0)
    """Selective disaggregation: a prompt whose part not already in the decode replica's prefix cache is shorter
    than this runs on decode alone (no prefill hop, no KV transfer); longer ones go through the prefill pool.
    0: every request is disaggregated. None: the default measured for the device (`REMOTE_PREFILL_MIN_TOKENS`);
    docs/routing.md says how it was measured and how to measure it for a model and hardware."""
    prefill_replica_choice: Literal["prefix_affinity", "power_of_two"] = "prefix_affinity"
    """How a decode replica picks the prefill replica for a prompt: `prefix_affinity` (the one whose prefix cache
    likely holds most of the prompt, or the session's, `serving.prefill_router`) or `power_of_two` (Serve's
    default: the shorter queue of two at random)."""
    prefix_imbalance_max: int = Field(2, ge=0)
    """`prefix_affinity` gives way to the shorter queue when the preferred replica has more than this many
    requests more than the least busy one (so one hot prefix cannot pile up one replica's queue)."""
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    """Larger request bodies get 413."""
    api_keys_env: str = "PDSERVE_API_KEYS"
    """Environment variable with comma-separated API keys (e.g. from a Kubernetes Secret); unset or empty:
    no authentication. /health stays open."""
    retry_after_s: int = Field(2, ge=1)
    drain_timeout_s: float = Field(300.0, ge=0)
    """How long a replica that is being stopped (redeploy, config reload, scale-down, upgrade) keeps serving its
    in-flight requests before it exits (Serve `graceful_shutdown_timeout_s`; on Kubernetes also how long the old
    cluster lives after an upgrade switched traffic away). Costs nothing when the replica is idle."""

    def leg_timeout_s(self, stream: bool) -> float:
        """A stream must start within the first-token bound; a unary reply must finish within the request bound."""
        return self.decode_first_token_timeout_s if stream else self.request_timeout_s


class PoolScalingConfig(StrictModel):
    """When one pool needs another replica."""

    target_waiting_per_replica: float = Field(1.0, gt=0)
    """Scheduler-waiting requests per replica that call for one more replica. Small, so scaling starts
    before the queue fills (the engine batches running requests; waiting ones are pure delay)."""
    target_running_per_replica: float = Field(8.0, gt=0)
    """Running requests per replica a replica should carry at most."""
    slo_s: float | None = Field(None, gt=0)
    """Latency objective of the pool: TTFT for prefill (and colocated), TPOT for decode. Above it, +1 replica."""


class AutoscalingConfig(StrictModel):
    """Serve's application-level policy (`serving.autoscaling`) for pools whose replicas.min < replicas.max."""

    prefill: PoolScalingConfig = Field(default_factory=lambda: PoolScalingConfig(target_running_per_replica=4,
                                                                                 slo_s=2.0))
    decode: PoolScalingConfig = Field(default_factory=lambda: PoolScalingConfig(target_running_per_replica=16,
                                                                                slo_s=0.25))
    colocated: PoolScalingConfig = Field(default_factory=lambda: PoolScalingConfig(slo_s=2.0))
    min_prefill_per_decode: float = Field(0.25, gt=0)
    """Keep at least this many prefill replicas per decode replica (rounded up)."""
    max_prefill_per_decode: float = Field(4.0, gt=0)
    upscale_delay_s: float = Field(3.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    downscale_to_zero_delay_s: float = Field(120.0, ge=0)
    look_back_period_s: float = Field(10.0, gt=0)
    metrics_interval_s: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _ratio_bounds_ordered(self) -> AutoscalingConfig:
        """min_prefill_per_decode <= max_prefill_per_decode."""
        if self.min_prefill_per_decode > self.max_prefill_per_decode:
            raise ValueError("autoscaling.min_prefill_per_decode must be <= max_prefill_per_decode")
        return self


REMOTE_PREFILL_MIN_TOKENS: dict[str, int] = {"cpu": 16, "cuda": 0}
"""`router.remote_prefill_min_tokens` when the config leaves it out. CPU: the prompt length whose prefill on the
decode engine costs what the prefill hop adds to a request (docs/routing.md, measured with `pdserve bench
--servers pd-remote,pd-local --workloads len16,...`). GPU: not measured on one yet, so every prompt takes the hop."""


class PDServeConfig(StrictModel):
    """A whole deployment: one model served by a router over prefill+decode pools (or one colocated pool)."""

    mode: Mode = "disaggregated"
    device: Device = "cpu"
    model: ModelConfig = Field(default_factory=ModelConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    kv_transfer: KVTransferConfig = Field(default_factory=KVTransferConfig)
    prefill: PoolConfig = Field(
        default_factory=lambda: PoolConfig(
            resources=ResourcesConfig(resources={"pdserve_prefill": 1}), cpu=CPUConfig(threads_bind="0")
        )
    )
    decode: PoolConfig = Field(
        default_factory=lambda: PoolConfig(
            resources=ResourcesConfig(resources={"pdserve_decode": 1}), cpu=CPUConfig(threads_bind="1")
        )
    )
    # `auto` binds like `vllm serve` does: the model on the node's cores but one, which is left to the scheduler
    # process and the HTTP side (binding every core would make them compete with the model's threads).
    colocated: PoolConfig = Field(default_factory=lambda: PoolConfig(cpu=CPUConfig(threads_bind="auto")))
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)
    kubernetes: KubernetesConfig | None = None
    """Where this profile runs on Kubernetes (`pdserve render`); `pdserve up` and the app ignore it."""

    @property
    def remote_prefill_min_tokens(self) -> int:
        """The selective-disaggregation threshold in force (the config's, else the device's default)."""
        configured = self.router.remote_prefill_min_tokens
        return REMOTE_PREFILL_MIN_TOKENS[self.device] if configured is None else configured

    @model_validator(mode="after")
    def _kv_buffer_matches_device(self) -> PDServeConfig:
        """A CPU engine can only register CPU memory with NIXL."""
        if self.device == "cpu" and self.kv_transfer.buffer_device != "cpu":
            raise ValueError("kv_transfer.buffer_device must be 'cpu' when device is 'cpu'")
        return self

    @model_validator(mode="after")
    def _gpu_pools_ask_for_gpus(self) -> PDServeConfig:
        """On GPUs every active pool must request a GPU (or a MIG slice of one)."""
        if self.device == "cuda":
            for role in self.active_roles():
                if self.pool(role).resources.num_gpus <= 0:
                    raise ValueError(f"{role}.resources.num_gpus must be > 0 when device is 'cuda'")
        return self

    @model_validator(mode="after")
    def _pools_placed_apart(self) -> PDServeConfig:
        """Prefill and decode must not ask for the same custom resources, or they could share a slice."""
        if self.mode == "disaggregated":
            shared = set(self.prefill.resources.resources) & set(self.decode.resources.resources)
            if shared:
                raise ValueError(f"prefill and decode request the same custom resources {sorted(shared)}")
        return self

    def stack_cores(self, available: set[int]) -> set[int]:
        """The cores `local.stack_cores` names on a machine with these `available` cores."""
        if self.local.stack_cores == "all":
            return set(available)
        if self.local.stack_cores != "auto":
            return cpu_list(self.local.stack_cores) & available or set(available)
        binds = {role: self.pool(role).cpu.threads_bind for role in self.active_roles()}
        if any(bind in ("auto", "nobind") for bind in binds.values()):
            return set(available)  # vLLM picks the model's cores itself and leaves the rest free
        free = available - set().union(*(cpu_list(bind) for bind in binds.values()))
        if free:
            return free
        return cpu_list(binds["prefill"]) & available if "prefill" in binds else set(available)

    def autoscaled_roles(self) -> tuple[Role, ...]:
        return tuple(r for r in self.active_roles() if self.pool(r).replicas.min < self.pool(r).replicas.max)

    def active_roles(self) -> tuple[Role, ...]:
        return ("prefill", "decode") if self.mode == "disaggregated" else ("colocated",)

    def pool(self, role: Role) -> PoolConfig:
        return getattr(self, role)

    def with_overrides(self, **changes: Any) -> PDServeConfig:
        """A copy with top-level or dotted (`router.port`) fields replaced, re-validated."""
        data = self.model_dump()
        for dotted, value in changes.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            node[leaf] = value
        return PDServeConfig.model_validate(data)

    @classmethod
    def from_file(cls, path: str | Path) -> PDServeConfig:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        return cls.model_validate(data)
