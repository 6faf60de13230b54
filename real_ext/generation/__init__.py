"""real_ext's generation engine: paged KV cache, decode attention and fused
sampling ops, finished sequences leaving the batch, tensor- and
pipeline-parallel generation."""
from real_ext.generation.config import GenerationConfig, GenerationOutput
from real_ext.generation.engine import generate

__all__ = ["GenerationConfig", "GenerationOutput", "generate"]
