"""The built-in "sort" task (real_ext/tasks): prompt format and seeding,
reference answers against Python's sorted, the partial-credit reward worked
out by hand, wrong answers and preference pairs, the saved Hugging Face
tokenizer and model config, and the SFT warm start (HF parity of its
checkpoint, and a reward that rises over a fresh model's)."""
import os
import random
import subprocess
import sys

import pytest
import torch
import transformers

from real_ext.generation import GenerationConfig, generate
from real_ext.model import ReaLModel
from real_ext.tasks import TASKS, SortTask, get_task
from real_ext.data.packed import PackedBatch
from real_ext.tasks.warm_start import answer_mask, warm_start
from python_tests.conftest import cu_seqlens
from python_tests.model.hf_models import hf_logits_per_sequence

DIGIT_WORDS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def task():
    return get_task("sort")


def _words(task, ids):
    return task.decode(ids).split()


def _digit_words(task, prompt):
    """The digits of a prompt, read from its text as documented: '<bos> sort d1 .. dn ='."""
    words = _words(task, prompt)
    assert words[:2] == ["<bos>", "sort"] and words[-1] == "="
    return words[2:-1]


def _ids(task, text):
    ids = task.encode(text)
    assert task.unk_id not in ids, text
    return ids


def _reward_by_rule(reference, output, eos):
    """The documented rule, written out again: cut the output after its first
    eos, count position-wise matches, divide by the longer length."""
    if eos in output:
        output = output[:output.index(eos) + 1]
    matches = sum(1 for i in range(min(len(output), len(reference))) if output[i] == reference[i])
    return matches / max(len(output), len(reference))


# ------------------------------------------------------------ prompts


def test_registry(task):
    assert "sort" in TASKS and isinstance(task, SortTask)
    assert (task.min_len, task.max_len) == (3, 8)
    assert task.vocab[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert (task.pad_id, task.bos_id, task.eos_id, task.unk_id) == (0, 1, 2, 3)
    assert sorted(task.vocab[4:]) == sorted(["sort", "="] + DIGIT_WORDS)
    assert get_task("sort", min_len=2, max_len=5).max_len == 5


@pytest.mark.parametrize("min_len,max_len", [(3, 8), (1, 1), (2, 4), (30, 30)])
def test_prompt_format(min_len, max_len):
    task = SortTask(min_len=min_len, max_len=max_len)
    prompts = task.prompts(400, seed=7)
    lengths = set()
    for p in prompts:
        digits = _digit_words(task, p)
        assert set(digits) <= set(DIGIT_WORDS)
        assert len(p) == len(digits) + 3
        lengths.add(len(digits))
    # Lengths are drawn uniformly from min_len..max_len: 400 draws hit every one.
    assert lengths == set(range(min_len, max_len + 1))
    if max_len > 1:
        assert {d for p in prompts for d in _digit_words(task, p)} == set(DIGIT_WORDS)
    # Every prompt with its answer fits the context of the model configs.
    assert max(len(p) + len(task.reference_answer(p)) for p in prompts) <= task.max_positions


def test_prompts_are_seeded(task):
    assert task.prompts(50, seed=0) == task.prompts(50, seed=0)
    assert task.prompts(50, seed=0) != task.prompts(50, seed=1)
    assert task.prompts(50, seed=3)[:20] == task.prompts(20, seed=3)
    # A fresh task object draws the same prompts: nothing hides in instance state.
    assert SortTask().prompts(50, seed=5) == task.prompts(50, seed=5)
    assert [p for p, _ in task.sft_examples(30, seed=4)] == task.prompts(30, seed=4)


_DRAW = ("from real_ext.tasks import get_task; t = get_task('sort'); "
         "print(t.prompts(20, seed=3), t.preference_pairs(20, seed=3))")


def test_draws_do_not_depend_on_the_process():
    # Fresh interpreters with different hash seeds: no set or hash order leaks into the data.
    outs = [subprocess.run([sys.executable, "-c", _DRAW], capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONHASHSEED=h)).stdout for h in ("1", "2")]
    assert outs[0] == outs[1]
    task = get_task("sort")
    assert outs[0].strip() == f"{task.prompts(20, seed=3)} {task.preference_pairs(20, seed=3)}"


# ------------------------------------------------------------ answers and reward


def test_reference_answer_is_sorted_digits(task):
    for p in task.prompts(300, seed=11):
        answer = _words(task, task.reference_answer(p))
        assert answer == sorted(_digit_words(task, p)) + ["<eos>"]
    for p, a in task.sft_examples(50, seed=12):
        assert a == task.reference_answer(p)


def test_reward_extremes(task):
    for p in task.prompts(100, seed=13):
        reference = task.reference_answer(p)
        assert task.reward(p, reference) == 1.0
        assert task.reward(p, []) == 0.0
        # Whatever follows the first eos is ignored.
        assert task.reward(p, reference + [task.eos_id, task.bos_id] + reference) == 1.0
        assert task.reward(p, torch.tensor(reference)) == 1.0


# Prompt '<bos> sort 3 1 2 =', reference '1 2 3 <eos>' (4 tokens); rewards by hand.
HAND_WORKED = [
    ("1 3 2 <eos>", 2 / 4),               # positions 0 and 3 right
    ("3 2 1 <eos>", 2 / 4),               # positions 1 and 3 right
    ("1 2 <eos>", 2 / 4),                 # '<eos>' at 2 is not '3'; the longer is the reference
    ("1 2 3", 3 / 4),                     # no eos: the eos position counts as wrong
    ("1 2 3 3 <eos>", 3 / 5),             # one token too many: divided by 5
    ("1 2 3 3 3 3 3 3", 3 / 8),           # no eos, runs on: divided by the output's 8
    ("2 <eos> 1 2 3 <eos>", 0 / 4),       # cut to '2 <eos>'
    ("1 2 4 <eos> 3 <eos>", 3 / 4),       # cut to '1 2 4 <eos>'
    ("<eos> 1 2 3 <eos>", 0 / 4),         # cut to '<eos>'
    ("sort 2 3 <eos>", 3 / 4),            # positions 1..3 right
]


@pytest.mark.parametrize("output,expected", HAND_WORKED)
def test_reward_partial_credit_by_hand(task, output, expected):
    prompt = _ids(task, "<bos> sort 3 1 2 =")
    assert task.reward(prompt, _ids(task, output)) == pytest.approx(expected, abs=1e-12)


def test_reward_longer_prompt_by_hand(task):
    # Reference '0 4 6 6 7 8 <eos>' (7 tokens); the output repeats one 6 too few.
    prompt = _ids(task, "<bos> sort 6 0 4 8 7 6 =")
    assert task.reward(prompt, _ids(task, "0 4 6 7 8 <eos>")) == pytest.approx(3 / 7)
    assert task.reward(prompt, _ids(task, "0 4 6 6 7 8 9 <eos>")) == pytest.approx(6 / 8)


def test_reward_matches_rule_on_random_outputs(task):
    rng = random.Random(0)
    for p in task.prompts(200, seed=14):
        reference = task.reference_answer(p)
        output = [rng.choice(task.digit_ids + [task.eos_id]) for _ in range(rng.randint(0, 12))]
        assert task.reward(p, output) == pytest.approx(_reward_by_rule(reference, output, task.eos_id))


def test_wrong_answer_differs_and_scores_lower(task):
    prompts = task.prompts(100, seed=15)
    # Cases where copying or swapping gives the reference back: sorted input, equal digits, one digit.
    prompts += [_ids(task, t) for t in ("<bos> sort 3 3 3 =", "<bos> sort 1 2 3 =", "<bos> sort 0 =",
                                        "<bos> sort 9 9 =", "<bos> sort 0 0 0 0 0 0 0 0 =")]
    for i, p in enumerate(prompts):
        reference = task.reference_answer(p)
        for seed in range(20):
            wrong = task.wrong_answer(p, random.Random(1000 * i + seed))
            assert wrong != reference
            assert wrong[-1] == task.eos_id and task.eos_id not in wrong[:-1]
            assert set(wrong[:-1]) <= set(task.digit_ids)
            assert task.reward(p, wrong) < 1.0
            worse = task.wrong_answer(p, random.Random(seed), answer=wrong)   # a mistake on a mistake
            assert worse != wrong and worse[-1] == task.eos_id and set(worse[:-1]) <= set(task.digit_ids)


def test_preference_pairs(task):
    pairs = task.preference_pairs(200, seed=16)
    assert [p for p, _, _ in pairs] == task.prompts(200, seed=16)
    assert pairs == task.preference_pairs(200, seed=16)
    assert pairs != task.preference_pairs(200, seed=17)
    n_reference = 0
    for p, chosen, rejected in pairs:
        n_reference += _words(task, chosen) == sorted(_digit_words(task, p)) + ["<eos>"]
        assert task.reward(p, rejected) < task.reward(p, chosen)
    # Graded pairs: about half prefer the reference, the rest a lesser mistake.
    assert 0.3 * len(pairs) < n_reference < 0.8 * len(pairs)


# ------------------------------------------------------------ Hugging Face artefacts


def test_saved_tokenizer_matches_task(task, tmp_path):
    task.save_tokenizer(str(tmp_path))
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (
        task.pad_id, task.bos_id, task.eos_id, task.unk_id)
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert len(tok) == task.vocab_size
    for p, a in task.sft_examples(50, seed=17):
        for ids in (p, p + a):
            text = task.decode(ids)
            # The default call adds no specials: the prompt already starts with <bos>.
            assert tok(text)["input_ids"] == task.encode(text) == ids
            assert tok.decode(ids) == text
    assert tok("sort banana 3 =")["input_ids"] == task.encode("sort banana 3 =")
    assert task.encode("sort banana 3 =")[1] == task.unk_id


def test_model_config_loads_in_transformers(task, tmp_path):
    config = transformers.LlamaConfig(**task.model_config("tiny"))
    config.save_pretrained(str(tmp_path))
    assert isinstance(transformers.AutoConfig.from_pretrained(str(tmp_path), local_files_only=True),
                      transformers.LlamaConfig)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    assert model.config.vocab_size == task.vocab_size
    assert model.get_input_embeddings().weight.shape[0] == task.vocab_size
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied
    ids = torch.tensor([task.prompts(1, seed=0)[0]])
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, ids.shape[1], task.vocab_size)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (task.bos_id, task.eos_id, task.pad_id)
    assert config.max_position_embeddings == task.max_positions
    small = transformers.LlamaConfig(**task.model_config("small"))
    assert small.hidden_size > config.hidden_size and small.vocab_size == task.vocab_size


# ------------------------------------------------------------ warm start


def test_answer_mask_covers_answer_predictions():
    # Two sequences of 5 = 3 prompt + 2 answer and 4 = 1 prompt + 3 answer tokens.
    # Position j is on when token j + 1 is an answer token.
    batch = PackedBatch.from_sequences([[1, 4, 5, 6, 2], [1, 7, 8, 2]], prompt_len=[3, 1])
    assert answer_mask(batch).tolist() == [0, 0, 1, 1, 0] + [1, 1, 1, 0]


@pytest.fixture(scope="module")
def checkpoints(task, tmp_path_factory):
    """A fresh model (0 steps) and a 30-step warm start, same initialisation."""
    root = tmp_path_factory.mktemp("warm")
    fresh = warm_start(task, str(root / "fresh"), steps=0)
    warm = warm_start(task, str(root / "warm"), steps=30)
    assert warm == str(root / "warm")
    return fresh, warm


def _rel(a, b):
    return (a - b).abs().max().item() / b.abs().max().item()


def test_warm_start_checkpoint_matches_hf(task, checkpoints):
    _, path = checkpoints
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                           attn_implementation="eager").eval()
    assert isinstance(hf, transformers.LlamaForCausalLM)
    ours = ReaLModel.from_pretrained(path)
    sequences = [p + a for p, a in task.sft_examples(6, seed=18)]
    ids = torch.tensor([t for s in sequences for t in s])
    cu = cu_seqlens([len(s) for s in sequences])
    with torch.no_grad():
        logits = ours(ids, cu)
    assert logits.shape == (ids.shape[0], task.vocab_size)
    assert _rel(logits, hf_logits_per_sequence(hf, ids, cu)) < 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert tok(task.decode(sequences[0]))["input_ids"] == sequences[0]


def _greedy_reward(task, path, prompts):
    model = ReaLModel.from_pretrained(path)
    config = GenerationConfig(max_new_tokens=task.max_len + 1, greedy=True, stop_token_ids=(task.eos_id,))
    with torch.no_grad():
        out = generate(model, prompts, config)
    assert sorted(out.prompt_index) == list(range(len(prompts)))
    rewards = [task.reward(prompts[i], o) for i, o in zip(out.prompt_index, out.output_ids)]
    return sum(rewards) / len(rewards)


def test_warm_start_raises_greedy_reward(task, checkpoints):
    fresh, warm = checkpoints
    held_out = task.prompts(64, seed=0)   # the RL prompts; warm start trains on other seeds
    before, after = _greedy_reward(task, fresh, held_out), _greedy_reward(task, warm, held_out)
    print(f"greedy reward: fresh {before:.3f}, warm start {after:.3f}")
    assert after > before + 0.2


# ------------------------------------------------------------ bad input


def test_bad_input_names_the_problem(task):
    with pytest.raises(ValueError, match="unknown task 'nope'.*available: sort"):
        get_task("nope")
    with pytest.raises(ValueError, match="min_len=0"):
        SortTask(min_len=0)
    with pytest.raises(ValueError, match="min_len=5, max_len=4"):
        SortTask(min_len=5, max_len=4)
    with pytest.raises(ValueError, match="max_len=31 does not fit the 64-token context"):
        SortTask(max_len=31)
    SortTask(max_len=30)   # 30 digits: prompt 33 + answer 31 = 64 tokens, exactly the context
    with pytest.raises(ValueError, match=r"token id 16 is outside the vocabulary \[0, 16\)"):
        task.decode([task.bos_id, 16])
    with pytest.raises(ValueError, match=r"token id -1 is outside"):
        task.decode([-1])
    with pytest.raises(ValueError, match="model size 'huge' unknown"):
        task.model_config("huge")


@pytest.mark.parametrize("text", [
    "<bos> sort 3 1 2",        # no '='
    "sort 3 1 2 =",            # no <bos>
    "<bos> 3 1 2 =",           # no 'sort'
    "<bos> sort =",            # no digits
    "<bos> sort 3 = 2 =",      # '=' among the digits
    "<bos> sort 3 <eos> 2 =",  # a special token among the digits
    "",
])
def test_reward_on_malformed_prompt(task, text):
    prompt = task.encode(text)
    with pytest.raises(ValueError, match="not a sort prompt"):
        task.reward(prompt, [task.eos_id])
    with pytest.raises(ValueError, match="not a sort prompt"):
        task.reference_answer(prompt)
    with pytest.raises(ValueError, match="not a sort prompt"):
        task.wrong_answer(prompt, random.Random(0))
