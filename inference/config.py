"""Configuration of the serving side: which models run where, and how to reach the control plane.

Built once at the edge (`ServeConfig.from_env`) and validated at construction, so the
deployments can trust every field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from inference.generation import ShapeBuckets

# Kept in step with inference.backends.BACKEND_NAMES (a unit test checks), without importing torch here.
BACKENDS = ("compile", "eager", "onnxruntime", "tensorrt")
# Backends that run image edits (each backend class's `supports_editing`; a unit test checks): the
# onnxruntime and tensorrt exports hold no VAE encoder.
EDITING_BACKENDS = ("compile", "eager")
DEVICES = ("cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")
# SD-family models work on latents 1/8 of the image size.
SIZE_MULTIPLE = 8
# Hard ceiling for any model; a model's own max_steps may be lower.
MAX_STEPS = 150
MAX_IMAGES_PER_REQUEST = 8
MAX_GUIDANCE_SCALE = 30.0
MAX_PROMPT_CHARS = 2000
PROXY_LOCATIONS = ("EveryNode", "HeadOnly", "Disabled")
# Kept in step with inference.safety.TINY_SAFETY_CHECKER (a unit test checks), without importing torch here.
BUILTIN_OUTPUT_CLASSIFIERS = ("tiny-safety-checker",)


def _require(condition: bool, setting: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{setting}: {message}")


def _parse_int(setting: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{setting}: must be an integer, got {raw!r}") from None


class ConfigError(ValueError):
    """A setting is missing or out of range; the message names the setting."""


@dataclass(frozen=True)
class ModelConfig:
    """One model served by a pool of `DiffusionModel` replicas."""

    name: str
    """Name callers pass as `GenerateRequest.model`."""
    source: str = "tiny-sd"
    """A builtin model's name (`tiny-sd`), a local directory holding a diffusers checkpoint, or a single
    ``.safetensors`` checkpoint file in the original (LDM) key layout, with `single_file_config`."""
    backend: str = "eager"
    """Which backend runs the pipeline: one of `BACKENDS`."""
    device: str = "cpu"
    """`cpu` or `cuda`."""
    dtype: str = "auto"
    """Weights and activations dtype: one of `DTYPES`. ``auto`` is float32 on a CPU and, on a GPU, the
    model family's half precision (float16 for SD 1.x/2.x and SDXL UNets, bfloat16 for transformer
    models such as SD3 and Flux)."""
    variant: str = ""
    """The weights variant to load (``fp16`` for checkpoints holding only ``*.fp16.safetensors``); empty
    for the unsuffixed files."""
    single_file_config: str = ""
    """With a single-file `source`: a local diffusers checkpoint directory giving the file's architecture,
    tokenizer and scheduler (its configs are read, its weights are not), so that loading stays offline."""
    bucket_batch_sizes: tuple[int, ...] = ()
    """Shape buckets: the image counts a pipeline call is padded up to (ascending, e.g. [1, 2, 4, 8]); the
    fast backend is compiled or built for each, at every `bucket_sizes`, before the replica is ready.
    Empty: no buckets (every shape runs on the backend, shaped on first use)."""
    bucket_sizes: tuple[str, ...] = ()
    """Shape buckets: image sizes as ``"WIDTHxHEIGHT"``. Batches of other sizes, or of more images than the
    largest batch bucket, run on the eager path of the same weights (ListModels says so)."""
    default_width: int = 64
    """Width in pixels when a request leaves it out."""
    default_height: int = 64
    """Height in pixels when a request leaves it out."""
    min_size: int = 64
    """Smallest width or height accepted, in pixels."""
    max_size: int = 512
    """Largest width or height accepted, in pixels."""
    default_steps: int = 20
    """Denoising steps when a request leaves them out."""
    max_steps: int = 50
    """Most denoising steps a request may ask for (at most `MAX_STEPS`)."""
    default_guidance_scale: float = 7.5
    """Classifier-free guidance scale when a request leaves it out, in [0, `MAX_GUIDANCE_SCALE`]; few-step
    models (SDXL-Turbo, LCM) set 0 to 1 here (at most 1 turns guidance off, halving the UNet's work)."""
    millicredits_per_step: int = 50
    """Price of one denoising step of one 512x512 image, in thousandths of a credit."""
    num_replicas: int = 1
    """Replicas of this model's deployment."""
    num_cpus: float = 1.0
    """CPUs Ray reserves for each replica."""
    num_gpus: float = 0.0
    """GPUs Ray reserves for each replica (needs `device="cuda"`)."""
    max_ongoing_requests: int = 8
    """Requests a replica accepts at once before Serve queues them elsewhere; at least `max_batch_size`
    for batches to fill."""
    max_queued_requests: int = 64
    """Most requests each gateway replica lets wait for this model's pool beyond what its replicas accept
    (`max_ongoing_requests` each); past it a request fails fast with UNAVAILABLE and a retry hint
    instead of queueing until its deadline. The gateway admits fewer while few replicas run: one batch
    (`max_batch_size`) per running replica (`inference.admission`). -1 queues without bound."""
    max_batch_size: int = 8
    """Most images one pipeline call generates; compatible requests (same size, steps and guidance)
    share a call up to this many images. 1 turns batching off."""
    batch_wait_timeout_ms: float = 0.0
    """How long a batch waits for more compatible requests before it starts, in milliseconds. 0 starts
    at once on an idle replica (requests still batch while the pipeline is busy); a few milliseconds
    fill batches better on a GPU at the price of that much latency."""
    description: str = "Tiny random-weight Stable Diffusion pipeline; images are noise."
    """Shown by ListModels."""
    output_classifier: str = "tiny-safety-checker"
    """The image classifier every generated image passes through in the replica, batched on its device:
    ``tiny-safety-checker`` (diffusers' StableDiffusionSafetyChecker architecture with tiny random weights, whose
    thresholds let noise pass), or the absolute path of a local StableDiffusionSafetyChecker checkpoint directory
    (SD 1.5's ``safety_checker/``: ``config.json`` and weights), judged by its published concept thresholds."""
    output_threshold: float | None = None
    """One threshold in [0, 1] for every category of `output_classifier`, replacing its own; an image scoring at or
    above it is withheld or kept private and flagged, as the tenant's policy profile says. 0 flags every image.
    None (null): the classifier's own thresholds."""
    watermark: bool = True
    """Embed the invisible watermark in this model's images (the control plane does it as it stores
    them; images under 256x256 pixels in area are too small and go without). The signed C2PA
    manifest is embedded either way."""
    version: str = ""
    """The model's version (e.g. a release tag or weights hash), stated in each image's signed C2PA
    manifest beside its name; at most 200 characters."""

    @property
    def buckets(self) -> ShapeBuckets:
        """The shape buckets `bucket_batch_sizes` x `bucket_sizes` declare (empty when none)."""
        sizes = tuple(tuple(int(side) for side in size.split("x")) for size in self.bucket_sizes)
        return ShapeBuckets(tuple(self.bucket_batch_sizes), sizes)  # type: ignore[arg-type]

    @property
    def supports_editing(self) -> bool:
        """Whether requests with an init image (image-to-image, inpainting) can run on this model."""
        return self.backend in EDITING_BACKENDS

    def __post_init__(self) -> None:
        _require(
            bool(self.name) and self.name.replace("-", "").replace("_", "").replace(".", "").isalnum(),
            "models[].name",
            f"must be a non-empty name of letters, digits, '-', '_' or '.', got {self.name!r}",
        )
        _require(
            self.backend in BACKENDS, f"models[{self.name}].backend", f"must be one of {BACKENDS}, got {self.backend!r}"
        )
        _require(
            self.device in DEVICES, f"models[{self.name}].device", f"must be one of {DEVICES}, got {self.device!r}"
        )
        _require(self.dtype in DTYPES, f"models[{self.name}].dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        for name in ("default_width", "default_height", "min_size", "max_size"):
            value = getattr(self, name)
            _require(
                value > 0 and value % SIZE_MULTIPLE == 0,
                f"models[{self.name}].{name}",
                f"must be a positive multiple of {SIZE_MULTIPLE}, got {value}",
            )
        _require(self.min_size <= self.max_size, f"models[{self.name}].min_size", "must not exceed max_size")
        for name in ("default_width", "default_height"):
            _require(
                self.min_size <= getattr(self, name) <= self.max_size,
                f"models[{self.name}].{name}",
                f"must lie within [{self.min_size}, {self.max_size}]",
            )
        _require(
            1 <= self.max_steps <= MAX_STEPS, f"models[{self.name}].max_steps", f"must lie within [1, {MAX_STEPS}]"
        )
        _require(
            1 <= self.default_steps <= self.max_steps,
            f"models[{self.name}].default_steps",
            f"must lie within [1, max_steps={self.max_steps}]",
        )
        _require(
            0.0 <= self.default_guidance_scale <= MAX_GUIDANCE_SCALE,  # also rejects NaN
            f"models[{self.name}].default_guidance_scale",
            f"must lie within [0, {MAX_GUIDANCE_SCALE:g}], got {self.default_guidance_scale}",
        )
        _require(self.millicredits_per_step >= 0, f"models[{self.name}].millicredits_per_step", "must be >= 0")
        _require(self.num_replicas >= 1, f"models[{self.name}].num_replicas", "must be >= 1")
        _require(self.max_ongoing_requests >= 1, f"models[{self.name}].max_ongoing_requests", "must be >= 1")
        _require(
            self.max_queued_requests == -1 or self.max_queued_requests >= 1,
            f"models[{self.name}].max_queued_requests",
            "must be -1 (unbounded) or >= 1",
        )
        _require(1 <= self.max_batch_size <= 64, f"models[{self.name}].max_batch_size", "must lie within [1, 64]")
        _require(
            0 <= self.batch_wait_timeout_ms <= 1000,
            f"models[{self.name}].batch_wait_timeout_ms",
            "must lie within [0, 1000] milliseconds",
        )
        _require(len(self.version) <= 200, f"models[{self.name}].version", "must be at most 200 characters")
        _require(self.num_gpus == 0 or self.device == "cuda", f"models[{self.name}].num_gpus", "needs device='cuda'")
        single_file = self.source.endswith(".safetensors")
        _require(
            single_file == bool(self.single_file_config),
            f"models[{self.name}].single_file_config",
            "is required with a single-file .safetensors source (a diffusers directory with its architecture)"
            if single_file
            else "applies only to a single-file .safetensors source",
        )
        self._check_output_classifier()
        self._check_buckets()

    def _check_output_classifier(self) -> None:
        _require(
            self.output_classifier in BUILTIN_OUTPUT_CLASSIFIERS or Path(self.output_classifier).is_absolute(),
            f"models[{self.name}].output_classifier",
            f"must be one of {BUILTIN_OUTPUT_CLASSIFIERS} or the absolute path of a local StableDiffusionSafetyChecker "
            f"checkpoint directory, got {self.output_classifier!r}",
        )
        threshold = self.output_threshold
        _require(
            threshold is None
            or (isinstance(threshold, int | float) and not isinstance(threshold, bool) and 0.0 <= threshold <= 1.0),
            f"models[{self.name}].output_threshold",
            f"must be null (the classifier's own thresholds) or a number within [0, 1], got {threshold!r}",
        )

    def _check_buckets(self) -> None:
        # JSON gives lists; the frozen config keeps tuples (hashable, comparable).
        object.__setattr__(self, "bucket_batch_sizes", tuple(self.bucket_batch_sizes))
        object.__setattr__(self, "bucket_sizes", tuple(self.bucket_sizes))
        for size in self.bucket_sizes:
            sides = size.split("x")
            _require(
                len(sides) == 2
                and all(side.isdigit() and int(side) % SIZE_MULTIPLE == 0 for side in sides)
                and all(self.min_size <= int(side) <= self.max_size for side in sides),
                f"models[{self.name}].bucket_sizes",
                f"must be 'WIDTHxHEIGHT' sizes, multiples of {SIZE_MULTIPLE} within [{self.min_size}, "
                f"{self.max_size}], got {size!r}",
            )
        _require(
            all(1 <= b <= self.max_batch_size for b in self.bucket_batch_sizes),
            f"models[{self.name}].bucket_batch_sizes",
            f"must lie within [1, max_batch_size={self.max_batch_size}], got {list(self.bucket_batch_sizes)}",
        )
        try:
            self.buckets  # noqa: B018 - validates order and pairing
        except ValueError as exc:
            raise ConfigError(f"models[{self.name}].bucket_batch_sizes/bucket_sizes: {exc}") from None


@dataclass(frozen=True)
class PoolConfig:
    """A pool of `DiffusionModel` replicas (one Serve deployment) serving one or more models.

    A model named by no pool gets a pool of its own, named after it, with these defaults. The replicas of
    a pool of several models load them on demand (Serve model multiplexing) and evict the least recently
    used; the models must then agree on every replica setting (`POOL_SETTINGS`), which the pool's first
    model sets.
    """

    name: str
    """Pool name; its deployment is ``DiffusionModel-<name>``."""
    models: tuple[str, ...]
    """Names of the models it serves (from `ServeConfig.models`), at least one."""
    max_models_per_replica: int = 2
    """Most models one replica keeps loaded."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each replica needs, e.g. ``{"pool_sd15": 1}`` to place replicas only on the nodes
    that advertise them (``ray start --resources``)."""
    max_replicas: int = 0
    """Autoscaling: most replicas. 0 turns autoscaling off (the first model's `num_replicas`, fixed)."""
    min_replicas: int = 1
    """Autoscaling: fewest replicas (0 lets an idle pool scale to zero)."""
    target_ongoing_requests: float = 2.0
    """Autoscaling: requests per replica (queued and running) the autoscaler steers towards."""
    upscale_delay_s: float = 30.0
    """Autoscaling: how long load must stay above target before replicas are added, in seconds."""
    downscale_delay_s: float = 600.0
    """Autoscaling: how long load must stay below target before replicas are removed, in seconds."""

    def __post_init__(self) -> None:
        _require(
            bool(self.name) and self.name.replace("-", "").replace("_", "").replace(".", "").isalnum(),
            "pools[].name",
            f"must be a non-empty name of letters, digits, '-', '_' or '.', got {self.name!r}",
        )
        _require(bool(self.models), f"pools[{self.name}].models", "must name at least one model")
        _require(self.max_models_per_replica >= 1, f"pools[{self.name}].max_models_per_replica", "must be >= 1")
        _require(
            all(isinstance(v, int | float) and v >= 0 for v in self.resources.values()),
            f"pools[{self.name}].resources",
            "must map resource names to amounts >= 0",
        )
        _require(self.max_replicas >= 0, f"pools[{self.name}].max_replicas", "must be >= 0 (0: no autoscaling)")
        if self.max_replicas:
            _require(
                0 <= self.min_replicas <= self.max_replicas,
                f"pools[{self.name}].min_replicas",
                f"must lie within [0, max_replicas={self.max_replicas}]",
            )
            _require(self.target_ongoing_requests > 0, f"pools[{self.name}].target_ongoing_requests", "must be > 0")
            for name in ("upscale_delay_s", "downscale_delay_s"):
                _require(getattr(self, name) >= 0, f"pools[{self.name}].{name}", "must be >= 0 seconds")

    @property
    def may_scale_to_zero(self) -> bool:
        """Whether the autoscaler may leave the pool without replicas (so none running is no fault)."""
        return bool(self.max_replicas) and self.min_replicas == 0

    def autoscaling_config(self) -> dict[str, float] | None:
        """Serve's ``autoscaling_config`` for this pool, or None when autoscaling is off."""
        if not self.max_replicas:
            return None
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
        }


# Model settings that configure a pool's replicas: every model of one pool must agree on them.
POOL_SETTINGS = (
    "backend",
    "device",
    "dtype",
    "bucket_batch_sizes",
    "bucket_sizes",
    "num_replicas",
    "num_cpus",
    "num_gpus",
    "max_ongoing_requests",
    "max_queued_requests",
    "max_batch_size",
    "batch_wait_timeout_ms",
)


@dataclass(frozen=True)
class ServeConfig:
    """The Serve application: gateway settings and the models it routes to."""

    control_plane_address: str = "127.0.0.1:50051"
    """host:port of the control plane's gRPC server."""
    control_plane_timeout_s: float = 10.0
    """Deadline of each gateway call to the control plane, in seconds."""
    reservation_ttl_s: int = 600
    """How long the gateway's credit reservation may stay open, in seconds."""
    grpc_port: int = 9000
    """Port of Serve's gRPC proxy."""
    http_port: int = 8000
    """Port of Serve's HTTP proxy (unused by atelier, but Serve always starts one)."""
    proxy_location: str = "EveryNode"
    """Where Serve runs its proxies: one of `PROXY_LOCATIONS`. ``HeadOnly`` when several Ray nodes share
    one machine (their proxies would all bind the same ports)."""
    model_cache_dir: Path = Path(".atelier/models")
    """Where builtin models are built and cached."""
    models: tuple[ModelConfig, ...] = (ModelConfig(name="tiny-sd"),)
    """Models served; the first is the default."""
    pools: tuple[PoolConfig, ...] = ()
    """Pools serving several models, or with autoscaling or placement settings; every model named by no
    pool is served by a pool of its own, named after it, with `PoolConfig`'s defaults."""

    def __post_init__(self) -> None:
        _require(
            ":" in self.control_plane_address,
            "ATELIER_CONTROL_PLANE_ADDRESS",
            f"must be host:port, got {self.control_plane_address!r}",
        )
        _require(self.control_plane_timeout_s > 0, "control_plane_timeout_s", "must be > 0")
        _require(
            self.proxy_location in PROXY_LOCATIONS,
            "proxy_location",
            f"must be one of {PROXY_LOCATIONS}, got {self.proxy_location!r}",
        )
        _require(60 <= self.reservation_ttl_s <= 3600, "reservation_ttl_s", "must lie within [60, 3600]")
        _require(bool(self.models), "models", "must name at least one model")
        names = [m.name for m in self.models]
        _require(len(set(names)) == len(names), "models", f"names must be unique, got {names}")
        listed = [name for pool in self.pools for name in pool.models]
        _require(len(set(listed)) == len(listed), "pools", f"a model may be in one pool only, got {listed}")
        pool_names = [pool.name for pool in self.pools]
        _require(len(set(pool_names)) == len(pool_names), "pools", f"names must be unique, got {pool_names}")
        for pool in self.pools:
            for name in pool.models:
                _require(name in names, f"pools[{pool.name}].models", f"{name!r} is not in models {names}")
        for pool, members in self.model_pools():
            lead = members[0]
            for member in members[1:]:
                for setting in POOL_SETTINGS:
                    _require(
                        getattr(member, setting) == getattr(lead, setting),
                        f"models[{member.name}].{setting}",
                        f"must equal models[{lead.name}].{setting} ({getattr(lead, setting)!r}): both are in pool "
                        f"{pool.name!r}, whose replicas serve every model of the pool",
                    )

    def pool_of(self, model: ModelConfig) -> PoolConfig:
        """The pool serving `model` (its own, with defaults, when no pool names it)."""
        for pool in self.pools:
            if model.name in pool.models:
                return pool
        return PoolConfig(name=model.name, models=(model.name,))

    def model_pools(self) -> list[tuple[PoolConfig, tuple[ModelConfig, ...]]]:
        """Every pool with its models in config order; a pool's first model sets its replicas' settings."""
        pools: dict[str, tuple[PoolConfig, list[ModelConfig]]] = {}
        for model in self.models:
            pool = self.pool_of(model)
            pools.setdefault(pool.name, (pool, []))[1].append(model)
        return [(pool, tuple(members)) for pool, members in pools.values()]

    @property
    def default_model(self) -> ModelConfig:
        return self.models[0]

    def model(self, name: str) -> ModelConfig | None:
        """The model called `name`, or None when it is not served."""
        return next((m for m in self.models if m.name == name), None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ServeConfig:
        """Builds the config from `ATELIER_*` variables.

        `ATELIER_SERVE_CONFIG` names a JSON file with any of this class's fields
        (`models` as a list of objects); single variables override it:
        `ATELIER_CONTROL_PLANE_ADDRESS`, `ATELIER_SERVE_GRPC_PORT`, `ATELIER_SERVE_HTTP_PORT`,
        and `ATELIER_HOME` (the model cache lives under it).

        Raises:
            ConfigError: a setting is malformed or out of range.
        """
        values: dict[str, Any] = {}
        if path := environ.get("ATELIER_SERVE_CONFIG"):
            try:
                values = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"ATELIER_SERVE_CONFIG: cannot read {path}: {exc}") from None
            if not isinstance(values, dict):
                raise ConfigError("ATELIER_SERVE_CONFIG: must hold a JSON object")
        home = Path(environ.get("ATELIER_HOME", ".atelier"))
        values.setdefault("model_cache_dir", home / "models")
        if address := environ.get("ATELIER_CONTROL_PLANE_ADDRESS"):
            values["control_plane_address"] = address
        for variable, name in (("ATELIER_SERVE_GRPC_PORT", "grpc_port"), ("ATELIER_SERVE_HTTP_PORT", "http_port")):
            if variable in environ:
                values[name] = _parse_int(variable, environ[variable])
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ServeConfig:
        """Builds the config from plain values (as read from JSON).

        Raises:
            ConfigError: an unknown key, or a setting out of range.
        """
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown serve settings {sorted(unknown)}; valid: {sorted(known)}")
        kwargs = dict(values)
        if "models" in kwargs:
            model_fields = {f.name for f in fields(ModelConfig)}
            models = []
            for entry in kwargs["models"]:
                bad = set(entry) - model_fields
                if bad:
                    raise ConfigError(f"unknown model settings {sorted(bad)}; valid: {sorted(model_fields)}")
                models.append(ModelConfig(**entry))
            kwargs["models"] = tuple(models)
        if "pools" in kwargs:
            pool_fields = {f.name for f in fields(PoolConfig)}
            pools = []
            for entry in kwargs["pools"]:
                bad = set(entry) - pool_fields
                if bad:
                    raise ConfigError(f"unknown pool settings {sorted(bad)}; valid: {sorted(pool_fields)}")
                pools.append(PoolConfig(**{**entry, "models": tuple(entry.get("models", ()))}))
            kwargs["pools"] = tuple(pools)
        if "model_cache_dir" in kwargs:
            kwargs["model_cache_dir"] = Path(kwargs["model_cache_dir"])
        return cls(**kwargs)


__all__ = ["POOL_SETTINGS", "ConfigError", "ModelConfig", "PoolConfig", "ServeConfig"]
