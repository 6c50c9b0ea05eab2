"""Is this adapter folder one the served base model can run? Typed, bounded checks of every file, before any
byte of it is stored or reaches the engine.

An adapter is three files a tenant writes: ``manifest.yaml`` (:class:`Manifest`), ``adapter_config.json``
(:class:`AdapterConfig`) and ``adapter_model.safetensors``, whose JSON header (:class:`TensorInfo` per tensor)
says each tensor's dtype, shape and byte range. Each is read with a bound on its size and nesting (YAML
without anchors or aliases: :mod:`service.safe_yaml`), and every tensor is held against the base model
(:class:`BaseShapes`): a name PEFT writes for a layer and projection the base has, a shape of
``[rank, in_features]`` (``lora_A``) or ``[out_features, rank]`` (``lora_B``) for that projection, a dtype the
engine loads, byte ranges that tile the data exactly, every A with its B. A tensor that does not fit once
loaded an adapter half-way into an engine slot, so that its requests ran another tenant's adapter and then
killed the engine (docs/SECURITY.md, 13); here it is a 400 that names the tensor, never its values.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service import safe_yaml
from service.engine.plugins.guard import MAX_WEIGHT, values_out_of_range
from service.names import EVERY_TENANT, NAME_PATTERN

__all__ = ["AdapterConfig", "AdapterInvalid", "BaseShapes", "Manifest", "TensorInfo", "check_folder",
           "read_manifest"]

#: The projections of a Llama/Mistral decoder layer vLLM applies LoRA to, and which base dimensions they map.
PROJECTIONS: dict[str, tuple[str, str]] = {
    "q_proj": ("hidden", "q"), "k_proj": ("hidden", "kv"), "v_proj": ("hidden", "kv"), "o_proj": ("q", "hidden"),
    "gate_proj": ("hidden", "intermediate"), "up_proj": ("hidden", "intermediate"),
    "down_proj": ("intermediate", "hidden"),
}
_TENSOR = re.compile(r"^base_model\.model\.model\.layers\.(\d{1,4})\.(self_attn|mlp)\."
                     r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.lora_([AB])\.weight$")
_ITEM_BYTES = {"F32": 4, "F16": 2, "BF16": 2}
_MAX_MANIFEST_BYTES = 16_384
_MAX_CONFIG_BYTES = 65_536
_MAX_HEADER_BYTES = 1_048_576
#: Seven projections x 2 matrices x 128 layers: more than any base this service runs.
_MAX_TENSORS = 2_000
_VALUES_PER_READ = 1 << 20


class AdapterInvalid(ValueError):
    """Why an adapter folder cannot be served (a sentence that names files and tensors, never their values)."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class BaseModelRef(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")

    id: str = Field(default="?", max_length=200)
    fingerprint: str = Field(pattern=r"^[0-9a-f]{16}$")


class PromptShape(_Strict):
    examples: int | None = Field(default=None, ge=0, le=64)
    catalog_hints: bool = False
    #: Candidates a request gets by default (onboarding chooses; service/api/generate/candidates.py).
    candidates: int = Field(default=1, ge=1, le=8)


class ConfidenceCalibration(_Strict):
    """``confidence``: the Platt scaling onboarding fitted on the adapter's held-out answers."""

    model_config = ConfigDict(strict=True, extra="allow")

    a: float = Field(ge=-100, le=100, allow_inf_nan=False)
    b: float = Field(ge=-100, le=100, allow_inf_nan=False)


class Manifest(_Strict):
    """``manifest.yaml``: what the adapter is for and which base it was made on. Unknown keys (``training``,
    ``metrics``: what the trainer records) are kept as they are, bounded by the loader."""

    model_config = ConfigDict(strict=True, extra="allow")

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    dsl: str | None = Field(default=None, pattern=NAME_PATTERN)
    tenants: list[str] = Field(default_factory=lambda: [EVERY_TENANT], max_length=256)
    base_model: BaseModelRef
    rank: int | None = Field(default=None, ge=1, le=1024)
    prompt: PromptShape = Field(default_factory=PromptShape)
    confidence: ConfidenceCalibration | None = None

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, tenants: list[str]) -> list[str]:
        if any(t != EVERY_TENANT and not re.fullmatch(NAME_PATTERN, t) for t in tenants):
            raise ValueError("each tenant is '*' or a name")
        return tenants


class AdapterConfig(BaseModel):
    """``adapter_config.json`` as PEFT writes it for a plain LoRA the engine serves (other keys pass)."""

    model_config = ConfigDict(extra="allow")

    peft_type: Literal["LORA"]
    r: int = Field(strict=True, ge=1, le=1024)
    lora_alpha: float = Field(gt=0, le=1e6)
    target_modules: list[Literal[tuple(PROJECTIONS)]] = Field(min_length=1, max_length=len(PROJECTIONS))  # type: ignore[valid-type]
    bias: Literal["none"] = "none"
    use_dora: Literal[False] = False
    modules_to_save: None = None
    rank_pattern: dict[str, Any] = Field(default_factory=dict, max_length=0)
    alpha_pattern: dict[str, Any] = Field(default_factory=dict, max_length=0)


class TensorInfo(_Strict):
    """One entry of a safetensors header."""

    dtype: Literal["F32", "F16", "BF16"]
    shape: list[Annotated[int, Field(ge=0, le=2**31)]] = Field(min_length=2, max_length=2)
    data_offsets: list[Annotated[int, Field(ge=0, le=2**62)]] = Field(min_length=2, max_length=2)


@dataclass(frozen=True)
class BaseShapes:
    """The dimensions of the served base model that an adapter's tensors must match."""

    layers: int
    hidden: int
    q: int
    kv: int
    intermediate: int

    @classmethod
    def of(cls, model_path: str | Path) -> BaseShapes:
        """Read from the base model's ``config.json``."""
        config = json.loads((Path(model_path) / "config.json").read_text())
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        return cls(layers=config["num_hidden_layers"], hidden=config["hidden_size"], q=heads * head_dim,
                   kv=config.get("num_key_value_heads", heads) * head_dim, intermediate=config["intermediate_size"])

    def features(self, projection: str) -> tuple[int, int]:
        """``(in_features, out_features)`` of a projection."""
        source, target = PROJECTIONS[projection]
        return getattr(self, source), getattr(self, target)


def read_manifest(data: bytes) -> Manifest:
    """``manifest.yaml``'s bytes as a :class:`Manifest`; AdapterInvalid says why not."""
    try:
        raw = safe_yaml.load(data, max_bytes=_MAX_MANIFEST_BYTES)
    except safe_yaml.YAMLRefused as exc:
        raise AdapterInvalid(f"manifest.yaml: {exc}") from None
    return model_of(Manifest, raw, "manifest.yaml")


def check_folder(folder: Path, *, base: BaseShapes, max_rank: int) -> tuple[Manifest, AdapterConfig]:
    """Every file of an adapter folder checked against ``base`` (see the module's docstring)."""
    if missing := [name for name in ("manifest.yaml", "adapter_config.json", "adapter_model.safetensors")
                   if not (folder / name).is_file()]:
        raise AdapterInvalid(f"no {', no '.join(missing)}")
    manifest = read_manifest(_read(folder / "manifest.yaml", _MAX_MANIFEST_BYTES))
    config = _config(_read(folder / "adapter_config.json", _MAX_CONFIG_BYTES))
    if config.r > max_rank:
        raise AdapterInvalid(f"rank {config.r} is above the served max_lora_rank {max_rank}")
    if manifest.rank is not None and manifest.rank != config.r:
        raise AdapterInvalid(f"manifest.yaml says rank {manifest.rank}, adapter_config.json r {config.r}")
    _check_weights(folder / "adapter_model.safetensors", base=base, rank=config.r,
                   targets=set(config.target_modules))
    return manifest, config


def _read(path: Path, limit: int) -> bytes:
    if not path.is_file():
        raise AdapterInvalid(f"no {path.name}")
    if path.stat().st_size > limit:
        raise AdapterInvalid(f"{path.name} is larger than {limit} bytes")
    return path.read_bytes()


def _config(data: bytes) -> AdapterConfig:
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        raise AdapterInvalid("adapter_config.json is not valid JSON") from None
    return model_of(AdapterConfig, raw, "adapter_config.json")


def _check_weights(path: Path, *, base: BaseShapes, rank: int, targets: set[str]) -> None:
    name = path.name
    if not path.is_file():
        raise AdapterInvalid(f"no {name}")
    size = path.stat().st_size
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if not 2 <= header_len <= min(_MAX_HEADER_BYTES, size - 8):
            raise AdapterInvalid(f"{name}: the header is cut short or larger than {_MAX_HEADER_BYTES} bytes")
        text = f.read(header_len)
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise AdapterInvalid(f"{name}: the header is not valid JSON") from None
    if not isinstance(raw, dict):
        raise AdapterInvalid(f"{name}: the header is not a JSON object")
    raw.pop("__metadata__", None)
    if not raw:
        raise AdapterInvalid(f"{name} holds no tensors")
    if len(raw) > _MAX_TENSORS:
        raise AdapterInvalid(f"{name} holds more than {_MAX_TENSORS} tensors")
    tensors = {key: model_of(TensorInfo, value, f"{name}: tensor {_shown(key)}") for key, value in raw.items()}
    pairs: dict[tuple[int, str], set[str]] = {}
    for key, info in tensors.items():
        match = _TENSOR.fullmatch(key)
        if match is None:
            raise AdapterInvalid(f"{name}: tensor {_shown(key)} is not a LoRA weight of a decoder layer's "
                                 "projection")
        layer, projection, side = int(match.group(1)), match.group(3), match.group(4)
        if layer >= base.layers:
            raise AdapterInvalid(f"{name}: tensor {key} is for layer {layer}; the base has {base.layers}")
        if projection not in targets:
            raise AdapterInvalid(f"{name}: tensor {key} is for {projection}, not in target_modules")
        in_features, out_features = base.features(projection)
        expected = [rank, in_features] if side == "A" else [out_features, rank]
        if info.shape != expected:
            raise AdapterInvalid(f"{name}: tensor {key} has shape {info.shape}; the base model needs {expected}")
        pairs.setdefault((layer, projection), set()).add(side)
    if unpaired := sorted(k for k, sides in pairs.items() if sides != {"A", "B"}):
        layer, projection = unpaired[0]
        raise AdapterInvalid(f"{name}: layer {layer}'s {projection} has lora_A or lora_B without the other")
    _check_offsets(name, tensors, data_bytes=size - 8 - header_len)
    _check_values(path, tensors, data_start=8 + header_len)


def _check_values(path: Path, tensors: dict[str, TensorInfo], *, data_start: int) -> None:
    """Every weight finite and at most :data:`MAX_WEIGHT` in magnitude, read a bounded piece at a time."""
    with path.open("rb") as f:
        for key, info in tensors.items():
            start, stop = info.data_offsets
            f.seek(data_start + start)
            item = _ITEM_BYTES[info.dtype]
            for offset in range(start, stop, _VALUES_PER_READ * item):
                values = _as_float32(f.read(min(stop - offset, _VALUES_PER_READ * item)), info.dtype)
                if values_out_of_range(values):
                    raise AdapterInvalid(f"{path.name}: tensor {key} holds NaN, infinite values or values beyond "
                                         f"+/-{MAX_WEIGHT:g}, far past what training makes")


def _as_float32(data: bytes, dtype: str) -> np.ndarray:
    """Little-endian safetensors values as float32 (bfloat16 is float32's upper half)."""
    if dtype == "F32":
        return np.frombuffer(data, dtype="<f4")
    if dtype == "F16":
        return np.frombuffer(data, dtype="<f2").astype(np.float32)
    return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)


def _check_offsets(name: str, tensors: dict[str, TensorInfo], *, data_bytes: int) -> None:
    """The byte ranges tile the data exactly (no gap, no overlap, nothing past the end) at each dtype's size."""
    end = 0
    for key, info in sorted(tensors.items(), key=lambda item: item[1].data_offsets):
        start, stop = info.data_offsets
        if start != end or stop - start != math.prod(info.shape) * _ITEM_BYTES[info.dtype]:
            raise AdapterInvalid(f"{name}: tensor {key}'s bytes do not match its dtype and shape, or overlap")
        end = stop
    if end > data_bytes:
        raise AdapterInvalid(f"{name}: the data is cut short ({data_bytes} bytes, {end} expected)")
    if end != data_bytes:
        raise AdapterInvalid(f"{name}: the data is {data_bytes} bytes; the header describes {end}")


def model_of(model: type[BaseModel], raw: Any, where: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "the document"
        raise AdapterInvalid(f"{where}: {field}: {first['msg']}") from None


def _shown(key: str) -> str:
    """A tensor name as a message may quote it: what a tenant wrote, cut short and made printable."""
    return repr(key[:120])
