"""Tiny random Hugging Face models of every supported family, saved to disk."""
import torch
import transformers

VOCAB = 101


def hf_config(family: str):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=256)
    if family == "llama":  # Llama-3 style: GQA and llama3 rope scaling
        return transformers.LlamaConfig(**common, num_key_value_heads=2, rope_theta=50000.0,
                                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 32})
    if family == "qwen2":  # qkv bias, tied embeddings
        return transformers.Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True)
    if family == "mistral":  # MQA, head_dim != hidden / heads
        return transformers.MistralConfig(**common, num_key_value_heads=1, head_dim=32, sliding_window=4096)
    if family == "gpt2":  # learned positions, LayerNorm, GELU, Conv1D, tied
        return transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                       bos_token_id=0, eos_token_id=0)
    raise ValueError(family)


FAMILIES = ("llama", "qwen2", "mistral", "gpt2")


def save_random_hf(family: str, path, seed: int = 0):
    """A seeded random HF model of the family saved at path; returns it (eval mode)."""
    torch.manual_seed(seed)
    config = hf_config(family)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    model.save_pretrained(path)
    return model


def hf_logits_per_sequence(model, input_ids, cu_seqlens):
    """Logits of each sequence, run through HF as one right-padded batch."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, (s, n) in enumerate(zip(cu_seqlens[:-1].tolist(), lengths)):
        ids[i, :n] = input_ids[s:s + n]
        mask[i, :n] = 1
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    return torch.cat([logits[i, :n] for i, n in enumerate(lengths)])
