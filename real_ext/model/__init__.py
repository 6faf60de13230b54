"""Packed decoder models (LLaMA, Qwen2, Mistral, GPT-2 families) with tensor and
pipeline parallelism, flat parameter storage and HF checkpoints in and out."""
from real_ext.model.config import ModelConfig, UnsupportedModelError
from real_ext.model.model import ReaLModel

__all__ = ["ModelConfig", "ReaLModel", "UnsupportedModelError"]
