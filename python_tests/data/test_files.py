"""Datasets from files (real_ext/data/files.py): a built-in task written as
JSONL and read back with its saved tokenizer gives the task's token ids; a
saved Hugging Face dataset and Parquet give the same; bad lines, empty and
missing files, over-long examples and vocab mismatches give errors that name
the file, line or limit."""
import json

import pytest
import transformers
from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing

from real_ext.data.files import (DataError, check_vocab, completion_dataset, load_dataset_file, load_records,
                                 load_tokenizer, prompt_dataset, write_task_jsonl)
from real_ext.tasks import get_task

N, SEED = 24, 7


@pytest.fixture(scope="module")
def task():
    return get_task("sort")


@pytest.fixture(scope="module")
def tokenizer(task, tmp_path_factory):
    path = tmp_path_factory.mktemp("sort_tokenizer")
    task.save_tokenizer(str(path))
    return load_tokenizer(str(path))


@pytest.fixture(scope="module")
def bos_tokenizer():
    """A LLaMA-like tokenizer: BOS added to every text encoded with special tokens."""
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "sort", "=", "1", "2", "3"])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _dataset_ids(dataset):
    completions = getattr(dataset, "completions", None)
    return dataset.prompts, completions


@pytest.mark.parametrize("kind", ["prompts", "sft", "pairs"])
def test_task_round_trip(task, tokenizer, tmp_path, kind):
    path = str(tmp_path / f"{kind}.jsonl")
    write_task_jsonl(task, path, kind, N, SEED)
    dataset, report = load_dataset_file(path, kind, tokenizer, max_len=task.max_positions)
    assert report == {"file": path, "skipped_lines": 0, "records": N, "truncated": 0, "dropped": 0}
    if kind == "prompts":
        assert dataset.prompts == task.prompts(N, SEED)
    elif kind == "sft":
        assert [(p, c[0]) for p, c in zip(dataset.prompts, dataset.completions)] == task.sft_examples(N, SEED)
    else:
        pairs = [(p, c, r) for p, (c, r) in zip(dataset.prompts, dataset.completions)]
        assert pairs == task.preference_pairs(N, SEED)


def test_tokenizer_folder_path_is_accepted(task, tmp_path):
    task.save_tokenizer(str(tmp_path / "tok"))
    path = str(tmp_path / "p.jsonl")
    write_task_jsonl(task, path, "prompts", 3, SEED)
    dataset, _ = load_dataset_file(path, "prompts", str(tmp_path / "tok"), max_len=64)
    assert dataset.prompts == task.prompts(3, SEED)


def test_saved_hf_dataset_and_parquet_match_jsonl(task, tokenizer, tmp_path):
    import datasets

    path = str(tmp_path / "pairs.jsonl")
    write_task_jsonl(task, path, "pairs", N, SEED)
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    hf = datasets.Dataset.from_list(rows)
    hf.save_to_disk(str(tmp_path / "saved"))
    hf.to_parquet(str(tmp_path / "pairs.parquet"))
    expected = _dataset_ids(load_dataset_file(path, "pairs", tokenizer, max_len=64)[0])
    for other in (tmp_path / "saved", tmp_path / "pairs.parquet"):
        dataset, report = load_dataset_file(str(other), "pairs", tokenizer, max_len=64)
        assert _dataset_ids(dataset) == expected
        assert report["records"] == N


def test_saved_hf_dataset_missing_column_names_row_and_field(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"text": "a"}]).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"saved row 1: missing field 'prompt' \(the record has: text\)"):
        load_records(str(tmp_path / "saved"), ("prompt",))


BAD_LINES = [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object with fields prompt, answer, got list"),
    ('{"prompt": "sort 1 ="}', "missing field 'answer'"),
    ('{"prompt": "sort 1 =", "answer": 1}', "field 'answer' must be a string, got int"),
]


@pytest.mark.parametrize("line,problem", BAD_LINES)
def test_bad_line_error_names_file_and_line(tmp_path, line, problem):
    good = '{"prompt": "<bos> sort 2 1 =", "answer": "1 2 <eos>"}'
    path = _write_lines(tmp_path / "d.jsonl", [good, "", line, good])
    with pytest.raises(DataError, match="on_bad_line: skip") as info:
        load_records(path, ("prompt", "answer"))
    assert f"{path} line 3: {problem}" in str(info.value)


def test_skip_mode_counts_bad_lines(tokenizer, tmp_path):
    good = '{"prompt": "<bos> sort 2 1 =", "answer": "1 2 <eos>", "extra": 5}'
    path = _write_lines(tmp_path / "d.jsonl", [good] + [line for line, _ in BAD_LINES] + ["", good])
    records, skipped = load_records(path, ("prompt", "answer"), on_bad_line="skip")
    assert skipped == len(BAD_LINES)
    assert records == [{"prompt": "<bos> sort 2 1 =", "answer": "1 2 <eos>"}] * 2
    _, report = load_dataset_file(path, "sft", tokenizer, max_len=64, on_bad_line="skip")
    assert report["skipped_lines"] == len(BAD_LINES) and report["records"] == 2


def test_empty_missing_and_all_bad_files(tmp_path):
    empty = _write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match=f"{empty} has no usable records \\(0 lines skipped"):
        load_records(empty, ("prompt",))
    all_bad = _write_lines(tmp_path / "bad.jsonl", ["{}", "3"])
    with pytest.raises(DataError, match="has no usable records \\(2 lines skipped"):
        load_records(all_bad, ("prompt",), on_bad_line="skip")
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=f"{missing} does not exist"):
        load_records(missing, ("prompt",))


def test_options_are_checked(tokenizer, tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", ['{"prompt": "<bos> sort 1 ="}'])
    records, _ = load_records(path, ("prompt",))
    with pytest.raises(DataError, match="on_bad_line='ignore' unknown"):
        load_records(path, ("prompt",), on_bad_line="ignore")
    with pytest.raises(DataError, match="on_long='cut' unknown"):
        prompt_dataset(records, tokenizer, max_prompt_len=8, on_long="cut")
    with pytest.raises(DataError, match="max_prompt_len must be a whole number of tokens >= 1, got 0"):
        prompt_dataset(records, tokenizer, max_prompt_len=0)
    with pytest.raises(DataError, match="kind='rm' unknown"):
        load_dataset_file(path, "rm", tokenizer, max_len=8)
    with pytest.raises(DataError, match="tokenizer folder .*nope does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(DataError, match=f"cannot load a tokenizer from {tmp_path}"):
        load_tokenizer(str(tmp_path))


def test_prompt_truncate_and_drop(tokenizer):
    records = [{"prompt": "<bos> sort 1 2 3 4 5 ="}, {"prompt": "<bos> sort 9 ="}]   # 8 and 4 tokens
    full = tokenizer(records[0]["prompt"])["input_ids"]
    dataset, report = prompt_dataset(records, tokenizer, max_prompt_len=5)
    assert report == {"records": 2, "truncated": 1, "dropped": 0}
    assert dataset.prompts[0] == full[-5:] and len(dataset.prompts[1]) == 4
    dataset, report = prompt_dataset(records, tokenizer, max_prompt_len=5, on_long="drop")
    assert report == {"records": 2, "truncated": 0, "dropped": 1}
    assert dataset.prompts == [tokenizer(records[1]["prompt"])["input_ids"]]


def test_completion_truncate_and_drop(tokenizer):
    # prompts of 8 and 4 tokens; longest completions of 6 and 3 tokens (eos appended to "9")
    records = [{"prompt": "<bos> sort 5 4 3 2 1 =", "chosen": "1 2 3 4 5 <eos>", "rejected": "1 2 3 <eos>"},
               {"prompt": "<bos> sort 9 =", "chosen": "9", "rejected": "8 8"}]
    full = tokenizer(records[0]["prompt"])["input_ids"]
    dataset, report = completion_dataset(records, tokenizer, kind="pairs", max_len=10)
    assert report == {"records": 2, "truncated": 1, "dropped": 0}
    assert dataset.prompts[0] == full[-4:] and max(dataset.lengths(0)) == 10
    assert dataset.completions[1] == [[tokenizer.convert_tokens_to_ids("9"), tokenizer.eos_token_id],
                                      tokenizer("8 8 <eos>", add_special_tokens=False)["input_ids"]]
    dataset, report = completion_dataset(records, tokenizer, kind="pairs", max_len=10, on_long="drop")
    assert report == {"records": 2, "truncated": 0, "dropped": 1} and len(dataset) == 1
    # max_len 6: the 6-token completion leaves no room for a prompt token, so truncation drops it too
    dataset, report = completion_dataset(records, tokenizer, kind="pairs", max_len=6)
    assert report == {"records": 2, "truncated": 1, "dropped": 1}
    assert dataset.lengths(0) == [3 + 2, 3 + 3]   # the 4-token prompt cut to 3


def test_all_dropped_names_file_and_limit(task, tokenizer, tmp_path):
    path = str(tmp_path / "sft.jsonl")
    write_task_jsonl(task, path, "sft", 4, SEED)
    with pytest.raises(DataError, match=f"{path}: all 4 examples are dropped as longer than max_len=5 tokens"
                                        ".*raise max_len or set on_long: truncate"):
        load_dataset_file(path, "sft", tokenizer, max_len=5, on_long="drop")
    with pytest.raises(DataError, match=r"max_len=2 tokens \(the longest completion alone has \d+\); raise max_len$"):
        load_dataset_file(path, "sft", tokenizer, max_len=2)
    with pytest.raises(DataError, match=f"{path}: all 4 prompts are longer than max_prompt_len=3"):
        load_dataset_file(path, "prompts", tokenizer, max_len=3, on_long="drop")


def test_empty_prompt_is_an_error(tokenizer):
    with pytest.raises(DataError, match=r"the prompt of record 2 \(' '\) gives no tokens"):
        prompt_dataset([{"prompt": "<bos> sort 1 ="}, {"prompt": " "}], tokenizer, max_prompt_len=8)


def test_bos_tokenizer_conventions(bos_tokenizer):
    records = [{"prompt": "sort 2 1 =", "answer": "1 2"}, {"prompt": "sort 1 =", "answer": "1 </s>"}]
    dataset, _ = completion_dataset(records, bos_tokenizer, kind="sft", max_len=16)
    assert dataset.prompts == [[1, 3, 6, 5, 4], [1, 3, 5, 4]]      # the tokenizer's own BOS
    assert dataset.completions == [[[5, 6, 2]], [[5, 2]]]         # no BOS; eos appended once
    dataset, report = completion_dataset(records, bos_tokenizer, kind="sft", max_len=6)
    assert dataset.prompts[0] == [6, 5, 4] and report["truncated"] == 1   # cut from the left: BOS goes first


def test_vocab_mismatch(tokenizer):
    check_vocab(tokenizer, len(tokenizer), "model 'actor'")
    check_vocab(tokenizer, 64, "model 'actor'")   # a padded embedding is fine
    with pytest.raises(DataError, match=f"tokenizer of .* has {len(tokenizer)} tokens but model 'actor' has "
                                        "vocab_size 10; use the model's own tokenizer"):
        check_vocab(tokenizer, 10, "model 'actor'")
