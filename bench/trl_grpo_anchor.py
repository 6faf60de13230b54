"""TRL anchor for the GRPO benchmark: seconds per optimizer step of TRL's `GRPOTrainer` on CPU, offline.

One measured step is everything between TRL's `on_step_begin` and `on_step_end` callbacks:
sampling `prompts_per_step * group_size` completions with HF `generate` (temperature 1.0, no vLLM),
the reward calls, the group-normalised advantages, one forward + backward of the policy over the
whole batch, and the AdamW step. Fetching the prompt strings and logging fall outside. The result
is the median over `steps` optimizer steps after `warmup` steps.

Batch relation in TRL 1.16 (`GRPOConfig.__post_init__`): with `steps_per_generation` unset it equals
`gradient_accumulation_steps`, and `generation_batch_size = per_device_train_batch_size *
num_processes * steps_per_generation` completions are generated per optimizer step, i.e.
`generation_batch_size / num_generations` prompts. Here `per_device_train_batch_size =
prompts_per_step * group_size` and `gradient_accumulation_steps = 1` (one process), so one step
is one `generate` call and one backward over exactly prompts_per_step x group_size completions.

Installed with (keeps torch 2.13.0+cpu; pulls accelerate, datasets, pandas, pyarrow, ...):
    pip install "trl==1.16.0"
"""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # set before transformers / huggingface_hub read them at import
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_DISABLED"] = "true"

import statistics
import tempfile
import time

import torch
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer


class _StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t0 = [], None

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t0)


def trl_grpo_step_time(model_dir: str, prompts: list[str], reward_fn, *, group_size: int, max_new_tokens: int,
                       prompts_per_step: int, steps: int = 3, warmup: int = 1, lr: float = 1e-6, seed: int = 0,
                       fixed_length: bool = False, bf16: bool = False) -> dict:
    """Median seconds per GRPO optimizer step of TRL on CPU. `reward_fn(prompt, completion) -> float`.

    `fixed_length=True` forbids EOS before `max_new_tokens` (generate's `min_new_tokens`), so every
    completion has exactly max_new_tokens tokens; otherwise completions stop at EOS as in TRL.
    """
    if len(prompts) < prompts_per_step:  # TRL's RepeatSampler drops incomplete prompt batches
        raise ValueError(f"need at least prompts_per_step={prompts_per_step} prompts, got {len(prompts)}")
    tokens_per_step = []

    def reward(prompts, completions, completion_ids, **_):  # TRL's signature; ids are cut after EOS
        tokens_per_step.append(sum(len(ids) for ids in completion_ids))
        return [float(reward_fn(p, c)) for p, c in zip(prompts, completions)]

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    with tempfile.TemporaryDirectory() as out_dir:
        config = GRPOConfig(
            output_dir=out_dir,
            use_cpu=True,
            bf16=bf16,  # TRL's default is bf16 autocast (fp32 weights); False runs fully in float32
            # TRL's gradient_checkpointing defaults to True (a recompute forward per step); transformers 5.24
            # renamed it activation_checkpointing, which wins over the old name
            activation_checkpointing=False,
            per_device_train_batch_size=prompts_per_step * group_size,
            gradient_accumulation_steps=1,  # -> steps_per_generation 1, generation_batch_size P*G
            num_generations=group_size,
            max_completion_length=max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            generation_kwargs={"min_new_tokens": max_new_tokens} if fixed_length else None,
            use_vllm=False,
            beta=0.0,  # TRL 1.16 default: no reference model, no KL term
            num_iterations=1,  # one update per generated batch, so no old-logprob forward
            learning_rate=lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_steps=warmup + steps,
            seed=seed,
            report_to="none",
            logging_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
        )
        timer = _StepTimer()
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, processing_class=tokenizer,
                              train_dataset=Dataset.from_dict({"prompt": list(prompts)}), callbacks=[timer])
        trainer.train()
    step_s = statistics.median(timer.times[warmup:])
    return {
        "step_s": step_s,
        "steps_per_s": 1.0 / step_s,
        "trl_version": trl.__version__,
        "generated_tokens_per_step": statistics.median(tokens_per_step[warmup:]),
        "completions_per_step": prompts_per_step * group_size,
        "step_times_s": timer.times,
        "torch_threads": torch.get_num_threads(),
    }


def _tiny_model_dir(path: str) -> str:
    """A random 2-layer LLaMA (hidden 64) with a byte-level BPE tokenizer, saved for offline loading."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["What is 12 plus 7? The answer is 19.", "Count to ten: 1 2 3 4 5 6 7 8 9 10."] * 8
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    hf_tok.save_pretrained(path)
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=hf_tok.pad_token_id, bos_token_id=hf_tok.bos_token_id,
                         eos_token_id=hf_tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


if __name__ == "__main__":
    def digit_fraction(prompt: str, completion: str) -> float:
        return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)

    with tempfile.TemporaryDirectory() as d:
        model_dir = _tiny_model_dir(d)
        prompts = [f"What is {a} plus {b}?" for a, b in zip(range(8), range(10, 18))]
        for fixed in (False, True):
            print(f"fixed_length={fixed}:", trl_grpo_step_time(
                model_dir, prompts, digit_fraction, group_size=4, max_new_tokens=16, prompts_per_step=4,
                fixed_length=fixed))
