"""A supervised warm start for a built-in task, in this process: a fresh model
trained for a few steps on the task's reference answers (loss on answer tokens
only), saved as a Hugging Face checkpoint with the task's tokenizer. RL runs on
the built-in tasks start from it, as RLHF starts from an SFT model; stopping
early leaves room for the reward to rise."""
from __future__ import annotations

from real_ext.algo.common import action_mask as answer_mask  # positions predicting answer tokens
from real_ext.algo.sft import sft_loss
from real_ext.data.packed import PackedBatch
from real_ext.model import ReaLModel
from real_ext.model.config import ModelConfig
from real_ext.model.train import OptimConfig, Trainer


def warm_start(task, path: str, *, size: str = "tiny", steps: int = 100, batch_size: int = 32, lr: float = 3e-3,
               seed: int = 0) -> str:
    """Train a fresh ``size`` model on ``steps`` batches of reference answers
    (prompts from random streams of their own, not those of integer-seeded RL
    prompt sets) and save it with the tokenizer to ``path``; returns ``path``."""
    config = ModelConfig.from_hf_dict(task.model_config(size))
    model = ReaLModel.from_config(config, seed=seed)
    trainer = Trainer(model, OptimConfig(lr=lr))
    for step in range(steps):
        examples = task.sft_examples(batch_size, seed=f"warm-start/{seed}/{step}")
        batch = PackedBatch.from_sequences([p + a for p, a in examples],
                                           prompt_len=[len(p) for p, _ in examples])
        batch.token_data["mask"] = answer_mask(batch)
        trainer.train_step(batch, sft_loss, loss_weight=lambda mb: float(mb.token_data["mask"].sum()))
    model.save_pretrained(path)
    task.save_tokenizer(path)
    return path
