"""ModelConfig: the one description of a decoder that real_ext runs, read from
a Hugging Face ``config.json`` (LLaMA, Qwen2, Mistral and GPT-2 families)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "gpt2")
_ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedModelError(ValueError):
    """The checkpoint's config asks for something this implementation does not run."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str                      # one of SUPPORTED_MODEL_TYPES
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm: str                        # "rms" | "layer"
    norm_eps: float
    activation: str                  # "silu" | "gelu_tanh" | "gelu" | "relu"
    gated_mlp: bool                  # SwiGLU (gate, up, down) vs plain (up, down)
    position: str                    # "rope" | "learned"
    max_positions: int
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    rope_theta: float = 10000.0
    rope_scaling: tuple = ()         # sorted (key, value) pairs of the HF rope parameters
    sliding_window: int | None = None
    hf_config: str = "{}"            # the original config.json, written back on save

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def rope_params(self) -> dict:
        return dict(self.rope_scaling)

    def hf_dict(self) -> dict:
        return json.loads(self.hf_config)

    @staticmethod
    def from_pretrained(path: str) -> "ModelConfig":
        config_file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.exists(config_file):
            raise FileNotFoundError(f"no config.json at {config_file!r}: pass a Hugging Face checkpoint folder")
        with open(config_file) as f:
            return ModelConfig.from_hf_dict(json.load(f))

    @staticmethod
    def from_hf_dict(cfg: dict[str, Any]) -> "ModelConfig":
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"config.json model_type={model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        build = _from_gpt2 if model_type == "gpt2" else _from_llama_like
        config = build(cfg)
        _validate(config)
        return config


def _get(cfg: dict, key: str, default=None, *, required=False):
    if key not in cfg or cfg[key] is None:
        if required:
            raise UnsupportedModelError(f"config.json lacks {key!r}, which a {cfg.get('model_type')} model needs")
        return default
    return cfg[key]


def _rope(cfg: dict) -> tuple[float, tuple]:
    """(theta, scaling) from either transformers-5 ``rope_parameters`` or the older
    ``rope_theta`` + ``rope_scaling`` keys."""
    params = dict(cfg.get("rope_parameters") or {})
    if not params:
        params = dict(cfg.get("rope_scaling") or {})
        params["rope_theta"] = cfg.get("rope_theta", 10000.0)
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _ROPE_TYPES:
        raise UnsupportedModelError(f"rope type {rope_type!r} is not supported; supported: {', '.join(_ROPE_TYPES)}")
    theta = float(params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    params.pop("type", None)
    params["rope_type"] = rope_type
    return theta, tuple(sorted((k, v) for k, v in params.items() if not isinstance(v, (dict, list))))


def _from_llama_like(cfg: dict) -> ModelConfig:
    model_type = cfg["model_type"]
    hidden = _get(cfg, "hidden_size", required=True)
    heads = _get(cfg, "num_attention_heads", required=True)
    act = _get(cfg, "hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"hidden_act={act!r} is not supported for {model_type}; supported: silu")
    theta, scaling = _rope(cfg)
    attention_bias = bool(_get(cfg, "attention_bias", False))
    sliding = None
    if model_type == "mistral" or (model_type == "qwen2" and _get(cfg, "use_sliding_window", False)):
        sliding = _get(cfg, "sliding_window")
    return ModelConfig(
        family=model_type,
        vocab_size=_get(cfg, "vocab_size", required=True),
        hidden_size=hidden,
        num_layers=_get(cfg, "num_hidden_layers", required=True),
        num_heads=heads,
        num_kv_heads=_get(cfg, "num_key_value_heads", heads),
        head_dim=_get(cfg, "head_dim", hidden // heads),
        intermediate_size=_get(cfg, "intermediate_size", required=True),
        norm="rms",
        norm_eps=float(_get(cfg, "rms_norm_eps", 1e-6)),
        activation="silu",
        gated_mlp=True,
        position="rope",
        max_positions=_get(cfg, "max_position_embeddings", 4096),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(_get(cfg, "mlp_bias", False)),
        tie_word_embeddings=bool(_get(cfg, "tie_word_embeddings", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=sliding,
        hf_config=json.dumps(cfg, sort_keys=True),
    )


_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def _from_gpt2(cfg: dict) -> ModelConfig:
    act = _get(cfg, "activation_function", "gelu_new")
    if act not in _GPT2_ACTIVATIONS:
        raise UnsupportedModelError(
            f"activation_function={act!r} is not supported for gpt2; supported: {', '.join(_GPT2_ACTIVATIONS)}")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if _get(cfg, flag, False):
            raise UnsupportedModelError(f"gpt2 config {flag}=True is not supported")
    if not _get(cfg, "scale_attn_weights", True):
        raise UnsupportedModelError("gpt2 config scale_attn_weights=False is not supported")
    hidden = _get(cfg, "n_embd", required=True)
    heads = _get(cfg, "n_head", required=True)
    return ModelConfig(
        family="gpt2",
        vocab_size=_get(cfg, "vocab_size", required=True),
        hidden_size=hidden,
        num_layers=_get(cfg, "n_layer", required=True),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=_get(cfg, "n_inner") or 4 * hidden,
        norm="layer",
        norm_eps=float(_get(cfg, "layer_norm_epsilon", 1e-5)),
        activation=_GPT2_ACTIVATIONS[act],
        gated_mlp=False,
        position="learned",
        max_positions=_get(cfg, "n_positions", 1024),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        tie_word_embeddings=bool(_get(cfg, "tie_word_embeddings", True)),
        hf_config=json.dumps(cfg, sort_keys=True),
    )


def _validate(c: ModelConfig) -> None:
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                 "intermediate_size"):
        if getattr(c, name) <= 0:
            raise UnsupportedModelError(f"config {name}={getattr(c, name)} must be positive")
    if c.num_heads % c.num_kv_heads:
        raise UnsupportedModelError(
            f"num_attention_heads={c.num_heads} must be a multiple of num_key_value_heads={c.num_kv_heads}")
    if c.head_dim > 256:
        raise UnsupportedModelError(f"head_dim={c.head_dim} exceeds 256, the attention kernels' limit")
    if c.family == "gpt2" and c.hidden_size % c.num_heads:
        raise UnsupportedModelError(f"n_embd={c.hidden_size} must be a multiple of n_head={c.num_heads}")
    if c.position == "rope" and not math.isfinite(c.rope_theta):
        raise UnsupportedModelError("rope_theta must be finite")
