"""Task: a toy problem with a word-level vocabulary, a prompt distribution, a
reference answer and a rule-based reward with partial credit, small enough
that a ~1-5M-parameter LLaMA learns it on a CPU in minutes (SFT warm start,
then PPO/GRPO/DPO on the reward).

Sequences are token ids: a prompt starts with ``bos``; an answer ends with
``eos``. Text is the tokens joined by single spaces (``encode`` splits on
whitespace), and ``save_tokenizer`` writes the same mapping as a Hugging Face
tokenizer folder.
"""
from __future__ import annotations

import json
import os
import random
from typing import Sequence

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)   # ids 0..3 in every task

# "tiny": tests (~0.85M parameters); "small": the quickstart (~5M).
MODEL_SIZES = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8),
}


class Task:
    """Base class: subclasses set ``name`` and pass their words to __init__,
    and implement ``sample_prompt``, ``reference_answer`` and ``wrong_answer``."""

    name = "task"
    max_positions = 64       # context of the model configs; every prompt + answer fits

    def __init__(self, words: Sequence[str]):
        vocab = list(SPECIAL_TOKENS) + list(words)
        if len(set(vocab)) != len(vocab) or any(not w or w.split() != [w] for w in vocab):
            raise ValueError(f"task {self.name!r}: words must be distinct, non-empty and without whitespace")
        self.vocab: list[str] = vocab
        self.token_to_id: dict[str, int] = {w: i for i, w in enumerate(vocab)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (self.token_to_id[t] for t in SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ------------------------------------------------------------ text

    def encode(self, text: str) -> list[int]:
        """Whitespace-separated words to ids (unknown words -> unk); adds no specials."""
        return [self.token_to_id.get(w, self.unk_id) for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to words joined by spaces, special tokens included."""
        for i in ids:
            if not 0 <= int(i) < self.vocab_size:
                raise ValueError(f"token id {int(i)} is outside the vocabulary [0, {self.vocab_size})")
        return " ".join(self.vocab[int(i)] for i in ids)

    # ------------------------------------------------------------ the problem (subclasses)

    def sample_prompt(self, rng: random.Random) -> list[int]:
        raise NotImplementedError

    def reference_answer(self, prompt_ids: Sequence[int]) -> list[int]:
        """The correct answer to a prompt, ending with eos."""
        raise NotImplementedError

    def wrong_answer(self, prompt_ids: Sequence[int], rng: random.Random,
                     answer: Sequence[int] | None = None) -> list[int]:
        """A plausible answer (ending with eos) that differs from ``answer``
        (default: the reference answer) by one mistake."""
        raise NotImplementedError

    # ------------------------------------------------------------ data

    def prompts(self, n: int, seed: int) -> list[list[int]]:
        """n prompts, the same for the same seed (on any machine and Python version)."""
        rng = random.Random(seed)
        return [self.sample_prompt(rng) for _ in range(n)]

    def sft_examples(self, n: int, seed: int) -> list[tuple[list[int], list[int]]]:
        """(prompt, answer) pairs; the prompts are those of ``prompts(n, seed)``."""
        return [(p, self.reference_answer(p)) for p in self.prompts(n, seed)]

    def preference_pairs(self, n: int, seed: int) -> list[tuple[list[int], list[int], list[int]]]:
        """(prompt, chosen, rejected) with reward(chosen) > reward(rejected).
        Half the chosen answers are the reference; the other half are wrong
        already, with a second mistake in the rejected one, as when both
        answers a labeller compares are imperfect. A reward model trained on
        correct-vs-wrong only cannot rank a policy's partly wrong answers, and
        PPO on it then exploits its blind spots."""
        rng = random.Random(f"{self.name}/rejected/{seed}")
        pairs = []
        for p in self.prompts(n, seed):
            reference = self.reference_answer(p)
            chosen = reference if rng.random() < 0.5 else self.wrong_answer(p, rng)
            rejected = self.wrong_answer(p, rng, answer=chosen)
            if self.reward(p, rejected) >= self.reward(p, chosen):   # the second mistake did not hurt
                chosen, rejected = reference, self.wrong_answer(p, rng)
            pairs.append((p, chosen, rejected))
        return pairs

    # ------------------------------------------------------------ reward

    def reward(self, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> float:
        """Fraction of answer positions right: matches against the reference
        (eos included) over the longer of the two, with the output cut after its
        first eos. 1 exactly for the reference answer; 0 for empty output."""
        reference = self.reference_answer(prompt_ids)
        output = list(output_ids)
        if self.eos_id in output:
            output = output[:output.index(self.eos_id) + 1]
        matches = sum(int(o) == r for o, r in zip(output, reference))
        return matches / max(len(reference), len(output))

    # ------------------------------------------------------------ Hugging Face artefacts

    def save_tokenizer(self, path: str) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json
        so that ``transformers.AutoTokenizer.from_pretrained(path)`` (offline)
        encodes and decodes like ``encode`` / ``decode``."""
        from tokenizers import AddedToken, Tokenizer
        from tokenizers.models import WordLevel
        from tokenizers.pre_tokenizers import WhitespaceSplit

        tokenizer = Tokenizer(WordLevel(dict(self.token_to_id), unk_token=UNK))
        tokenizer.pre_tokenizer = WhitespaceSplit()
        # No decoder: tokenizers then joins tokens with single spaces, as decode() does.
        tokenizer.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
        os.makedirs(path, exist_ok=True)
        tokenizer.save(os.path.join(path, "tokenizer.json"))
        special = {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "unk_token": UNK}
        config = dict(special, tokenizer_class="PreTrainedTokenizerFast", model_max_length=self.max_positions,
                      clean_up_tokenization_spaces=False, add_bos_token=False, add_eos_token=False)
        for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
            with open(os.path.join(path, name), "w") as f:
                json.dump(content, f, indent=2)

    def model_config(self, size: str = "tiny") -> dict:
        """A Hugging Face LlamaConfig dict for this task's vocabulary (tied embeddings)."""
        if size not in MODEL_SIZES:
            raise ValueError(f"model size {size!r} unknown; available: {', '.join(MODEL_SIZES)}")
        dims = MODEL_SIZES[size]
        return dict(
            model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=self.vocab_size,
            **dims, num_key_value_heads=dims["num_attention_heads"],
            head_dim=dims["hidden_size"] // dims["num_attention_heads"], hidden_act="silu",
            max_position_embeddings=self.max_positions, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, attention_bias=False,
            mlp_bias=False, tie_word_embeddings=True, initializer_range=0.02,
            bos_token_id=self.bos_id, eos_token_id=self.eos_id, pad_token_id=self.pad_id,
        )
