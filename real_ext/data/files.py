"""Datasets from files: text records (JSONL, a Hugging Face dataset saved on
disk, or Parquet) tokenized with a Hugging Face tokenizer into the containers
experiments use: PromptDataset (kind "prompts", field prompt) and
CompletionDataset (kind "sft": prompt, answer; kind "pairs": prompt, chosen,
rejected).

Tokenization: a prompt gets the tokenizer's own special tokens (BOS for
LLaMA); a completion gets none, and ends with eos (appended unless the text
already ends with it), so a model trained on it learns to stop.
``write_task_jsonl`` writes a built-in task's data as such a file; read back
with the task's saved tokenizer it gives exactly the task's token ids.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from real_ext.data.completions import CompletionDataset
from real_ext.data.prompts import PromptDataset

FIELDS = {"prompts": ("prompt",), "sft": ("prompt", "answer"), "pairs": ("prompt", "chosen", "rejected")}
ON_BAD_LINE = ("error", "skip")
ON_LONG = ("truncate", "drop")


class DataError(ValueError):
    """A dataset file, tokenizer or option that cannot be used; the message says how to fix it."""


# ------------------------------------------------------------ records


def load_records(path: str, fields: tuple[str, ...], *, on_bad_line: str = "error") -> tuple[list[dict], int]:
    """The records of a JSONL file (one JSON object a line, blank lines
    ignored), a folder written by ``datasets.Dataset.save_to_disk`` or a
    .parquet file, each reduced to ``fields`` (all must be strings).
    A bad record raises DataError (on_bad_line "error") or is skipped
    ("skip"). Returns (records, number skipped)."""
    if on_bad_line not in ON_BAD_LINE:
        raise DataError(f"on_bad_line={on_bad_line!r} unknown; use one of {', '.join(ON_BAD_LINE)}")
    if not os.path.exists(path):
        raise DataError(f"dataset file {path} does not exist; check the path")
    if os.path.isdir(path):
        unit, rows = "row", _numbered(_saved_dataset_rows(path))
    elif path.endswith(".parquet"):
        unit, rows = "row", _numbered(_parquet_rows(path))
    else:
        unit, rows = "line", _jsonl_rows(path)

    records, skipped = [], 0
    for number, row, problem in rows:
        problem = problem or _problem(row, fields)
        if problem is None:
            records.append({f: row[f] for f in fields})
        elif on_bad_line == "skip":
            skipped += 1
        else:
            raise DataError(f"{path} {unit} {number}: {problem}; fix the {unit} or set on_bad_line: skip")
    if not records:
        raise DataError(f"{path} has no usable records ({skipped} {unit}s skipped as bad); "
                        f"each needs the string fields {', '.join(fields)}")
    return records, skipped


def _jsonl_rows(path: str):
    """(line number, parsed value, why it could not be parsed or None); blank lines left out."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None, "not UTF-8 text"
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as e:
                yield number, None, f"not JSON ({e.msg} at column {e.colno})"


def _numbered(rows):
    return ((number, row, None) for number, row in enumerate(rows, start=1))


def _problem(row, fields: Sequence[str]) -> str | None:
    if not isinstance(row, dict):
        return f"expected a JSON object with fields {', '.join(fields)}, got {type(row).__name__}"
    for f in fields:
        if f not in row:
            return f"missing field {f!r} (the record has: {', '.join(map(str, row)) or 'no fields'})"
        if not isinstance(row[f], str):
            return f"field {f!r} must be a string, got {type(row[f]).__name__}"
    return None


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("reading a saved dataset or Parquet file needs the datasets package: "
                        "pip install datasets") from None
    return datasets


def _saved_dataset_rows(path: str):
    datasets = _import_datasets()
    try:
        data = datasets.load_from_disk(path)
    except FileNotFoundError:
        raise DataError(f"{path} is a folder but not a dataset written by Dataset.save_to_disk; "
                        "give a JSONL file or such a folder") from None
    if isinstance(data, datasets.DatasetDict):
        if len(data) != 1:
            raise DataError(f"{path} holds the splits {', '.join(data)}; save the one to use on its own "
                            "(data['train'].save_to_disk(...))")
        data = next(iter(data.values()))
    return iter(data)


def _parquet_rows(path: str):
    _import_datasets()   # pyarrow comes with datasets; the message names the package to install
    import pyarrow.parquet

    return iter(pyarrow.parquet.read_table(path).to_pylist())


# ------------------------------------------------------------ tokenizer


def load_tokenizer(path: str):
    """The Hugging Face tokenizer saved in folder ``path`` (no network)."""
    try:
        import transformers
    except ImportError:
        raise DataError("loading a tokenizer needs the transformers package: pip install transformers") from None
    if not os.path.isdir(path):
        raise DataError(f"tokenizer folder {path} does not exist; give the model's folder or one written by "
                        "tokenizer.save_pretrained")
    try:
        return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise DataError(f"cannot load a tokenizer from {path} ({type(e).__name__}: {e}); give the model's folder "
                        "or one written by tokenizer.save_pretrained") from e


def check_vocab(tokenizer, model_vocab_size: int, where: str) -> None:
    """DataError if ``tokenizer`` can produce ids that the model described by
    ``where`` (e.g. "model 'actor'") has no embedding for."""
    n = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
    if n > model_vocab_size:
        name = tokenizer.name_or_path or "the dataset"
        raise DataError(f"tokenizer of {name} has {n} tokens but {where} has vocab_size {model_vocab_size}; "
                        "use the model's own tokenizer")


def _prompt_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts)["input_ids"]]


def _completion_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    out = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        out.append(ids)
    return out


# ------------------------------------------------------------ datasets


def prompt_dataset(records: Sequence[dict], tokenizer, *, max_prompt_len: int, on_long: str = "truncate",
                   source: str = "the records") -> tuple[PromptDataset, dict]:
    """A PromptDataset of the records' "prompt" texts. A prompt over
    max_prompt_len tokens keeps its last max_prompt_len tokens (on_long
    "truncate") or is left out ("drop"). Returns (dataset, {"records",
    "truncated", "dropped"}); ``source`` names the data in errors."""
    _check_limit("max_prompt_len", max_prompt_len, on_long)
    prompts = _prompt_ids(tokenizer, [r["prompt"] for r in records])
    _check_not_empty(prompts, records, "prompt", source)
    kept, truncated = [], 0
    for p in prompts:
        if len(p) > max_prompt_len:
            if on_long == "drop":
                continue
            # The end of a prompt (the question, the cue to answer) matters most next to the answer.
            p, truncated = p[-max_prompt_len:], truncated + 1
        kept.append(p)
    report = {"records": len(records), "truncated": truncated, "dropped": len(records) - len(kept)}
    if not kept:
        raise DataError(f"{source}: all {len(records)} prompts are longer than max_prompt_len={max_prompt_len} "
                        "tokens; raise max_prompt_len or set on_long: truncate")
    return PromptDataset(kept), report


def completion_dataset(records: Sequence[dict], tokenizer, *, kind: str, max_len: int, on_long: str = "truncate",
                       source: str = "the records") -> tuple[CompletionDataset, dict]:
    """A CompletionDataset of SFT records (kind "sft": prompt, answer) or
    preference pairs ("pairs": prompt, chosen, rejected). When prompt + its
    longest completion exceed max_len tokens, "truncate" cuts the prompt from
    the left to fit (dropping the example if no prompt token would be left)
    and "drop" leaves the example out. Returns (dataset, {"records",
    "truncated", "dropped"})."""
    if kind not in ("sft", "pairs"):
        raise DataError(f"completion dataset kind={kind!r} unknown; use sft or pairs")
    _check_limit("max_len", max_len, on_long)
    fields = FIELDS[kind][1:]
    prompts = _prompt_ids(tokenizer, [r["prompt"] for r in records])
    _check_not_empty(prompts, records, "prompt", source)
    columns = []
    for f in fields:
        columns.append(_completion_ids(tokenizer, [r[f] for r in records]))
        _check_not_empty(columns[-1], records, f, source)

    kept_prompts, kept_completions, truncated, longest = [], [], 0, 0
    for p, completions in zip(prompts, zip(*columns)):
        longest = max(longest, *map(len, completions))
        room = max_len - max(map(len, completions))
        if len(p) > room:
            if on_long == "drop" or room < 1:
                continue
            p, truncated = p[-room:], truncated + 1
        kept_prompts.append(p)
        kept_completions.append(list(completions))
    report = {"records": len(records), "truncated": truncated, "dropped": len(records) - len(kept_prompts)}
    if not kept_prompts:
        fix = "raise max_len" if on_long == "truncate" else "raise max_len or set on_long: truncate"
        raise DataError(f"{source}: all {len(records)} examples are dropped as longer than max_len={max_len} tokens "
                        f"(the longest completion alone has {longest}); {fix}")
    return CompletionDataset(kept_prompts, kept_completions), report


def _check_limit(name: str, value, on_long: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{name} must be a whole number of tokens >= 1, got {value!r}")
    if on_long not in ON_LONG:
        raise DataError(f"on_long={on_long!r} unknown; use one of {', '.join(ON_LONG)}")


def _check_not_empty(ids: list[list[int]], records: Sequence[dict], field: str, source: str) -> None:
    for i, seq in enumerate(ids):
        if not seq:
            raise DataError(f"{source}: the {field} of record {i + 1} ({records[i][field][:60]!r}) gives no tokens; "
                            f"give every record a non-empty {field}")


def load_dataset_file(path: str, kind: str, tokenizer, *, max_len: int, on_long: str = "truncate",
                      on_bad_line: str = "error"):
    """The dataset of kind "prompts" (max_len bounds the prompt), "sft" or
    "pairs" (max_len bounds prompt + completion) in file ``path``;
    ``tokenizer`` is a tokenizer or the folder of one. Returns (dataset,
    report): the counts of prompt_dataset / completion_dataset plus "file"
    and "skipped_lines"."""
    if kind not in FIELDS:
        raise DataError(f"dataset kind={kind!r} unknown; use one of {', '.join(FIELDS)}")
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    records, skipped = load_records(path, FIELDS[kind], on_bad_line=on_bad_line)
    if kind == "prompts":
        dataset, report = prompt_dataset(records, tokenizer, max_prompt_len=max_len, on_long=on_long, source=path)
    else:
        dataset, report = completion_dataset(records, tokenizer, kind=kind, max_len=max_len, on_long=on_long,
                                             source=path)
    return dataset, {"file": path, "skipped_lines": skipped, **report}


# ------------------------------------------------------------ built-in task export


def write_task_jsonl(task, path: str, kind: str, n: int, seed: int) -> None:
    """Write n examples of a built-in task (real_ext.tasks) as JSONL text
    records of ``kind``: the data of task.prompts / sft_examples /
    preference_pairs for ``seed``, decoded with task.decode."""
    if kind == "prompts":
        rows = [(p,) for p in task.prompts(n, seed)]
    elif kind == "sft":
        rows = task.sft_examples(n, seed)
    elif kind == "pairs":
        rows = task.preference_pairs(n, seed)
    else:
        raise DataError(f"dataset kind={kind!r} unknown; use one of {', '.join(FIELDS)}")
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(zip(FIELDS[kind], map(task.decode, row)))) + "\n")
