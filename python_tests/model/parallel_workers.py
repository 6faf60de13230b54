"""Per-rank bodies of the parallel-equivalence tests (run by python_tests.distributed)."""
import torch

from real_ext.data.packed import PackedBatch
from real_ext.model import ModelConfig, ReaLModel
from real_ext.model.checkpoint import full_state_dict
from real_ext.model.logprob import next_token_targets
from real_ext.model.train import OptimConfig, Trainer
from real_ext.parallel import ParallelLayout

# Tiny configs: GQA (4 q / 2 kv heads: tp=4 replicates kv heads), 4 layers
# (pp up to 4), a vocabulary that tp=4 must pad, and a tied variant.
LLAMA = dict(model_type="llama", vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2)
QWEN2_TIED = dict(model_type="qwen2", vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
OPTIM = OptimConfig(lr=1e-3, weight_decay=0.1, grad_clip=0.5, betas=(0.9, 0.95))
CASES = [("llama", LLAMA, "lm"), ("llama", LLAMA, "value"), ("qwen2_tied", QWEN2_TIED, "lm")]


def make_batch(seed: int = 0) -> PackedBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 1, 19, 4, 12, 9]
    seqs = [torch.randint(0, 50, (n,), generator=g).tolist() for n in lengths]
    targets = torch.randn(sum(lengths), generator=g)
    batch = PackedBatch.from_sequences(seqs)
    batch.token_data["value_target"] = targets
    return batch


def loss_fn(model, hidden, mb):
    if model.head == "value":
        values = model.head_output(hidden)
        return ((values - mb.token_data["value_target"]) ** 2).mean(), {}
    targets, valid = next_token_targets(mb.input_ids, mb.cu_seqlens)
    logp = model.token_logprobs(hidden, targets)
    return -(logp * valid).sum() / valid.sum(), {"tokens": float(valid.sum())}


def run_case(config: dict, head: str, layout, n_microbatches: int, dp_share: bool):
    """Forward output, stats and full parameters after one step; one process when layout is None."""
    model = ReaLModel.from_config(ModelConfig.from_hf_dict(config), head=head, layout=layout, seed=3)
    batch = make_batch()
    with torch.no_grad():
        out = model(batch.input_ids, batch.cu_seqlens, n_microbatches=n_microbatches)
    trainer = Trainer(model, OPTIM)
    # Each micro-batch's loss is a mean over predicted tokens (LM: all but each
    # sequence's last) or all tokens (values): weight it by that count.
    share = batch.split(model.ctx.dp)[model.ctx.coord.dp] if dp_share else batch
    weight = (lambda mb: mb.n_tokens - mb.n_seqs) if head == "lm" else (lambda mb: mb.n_tokens)
    stats = trainer.train_step(share, loss_fn, n_microbatches=n_microbatches, loss_weight=weight)
    return out, stats, full_state_dict(model)


def parallel_worker(rank, world_size, dp, tp, pp):
    layout = ParallelLayout(tuple(range(world_size)), dp=dp, tp=tp, pp=pp)
    results = {}
    for name, config, head in CASES:
        out, stats, state = run_case(config, head, layout, n_microbatches=2, dp_share=True)
        results[(name, head)] = (out, stats, state)
    return results
