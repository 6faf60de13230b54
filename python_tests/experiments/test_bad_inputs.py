"""The catalogue of bad inputs: each is refused before any worker starts,
with a message naming the field (or file, line, checkpoint) and the fix, and
none touches the checkpoints already in the run folder it was pointed at."""
import copy
import json
import os
import shutil

import pytest
import torch

from python_tests.experiments.runs import raw, sft_checkpoint
from real_ext.experiments import checkpoint
from real_ext.experiments.cli import main
from real_ext.experiments.config import ConfigError, from_dict
from real_ext.experiments.runner import run_experiment
from real_ext.experiments.schema import ExperimentConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A finished SFT run with checkpoints at steps 1 and 2, and data files."""
    tmp = tmp_path_factory.mktemp("bad")
    actor = sft_checkpoint(str(tmp))
    out = str(tmp / "run")
    base = raw("sft", out, actor, steps=2, checkpoint={"every": 1, "keep": 5}, eval={"every": 0},
               allocations={"actor_train": {"mesh": [0, 1], "dp": 2}})
    base["data"]["eval_n"] = 0
    run_experiment(from_dict(ExperimentConfig, base), console=open(os.devnull, "w"))
    files = {"good": tmp / "good.jsonl", "bad_line": tmp / "bad_line.jsonl", "empty": tmp / "empty.jsonl"}
    files["good"].write_text('{"prompt": "<bos> sort 3 1 =", "answer": "1 3 <eos>"}\n')
    files["bad_line"].write_text('{"prompt": "<bos> sort 3 1 =", "answer": "1 3 <eos>"}\n{"prompt": "x"\n')
    files["empty"].write_text("\n")
    return {"actor": actor, "out": out, "base": base, "files": {k: str(v) for k, v in files.items()},
            "big_tokenizer": _big_tokenizer(str(tmp / "big_tok"))}


def _big_tokenizer(path: str) -> str:
    """A real HF tokenizer with far more tokens than the sort task's model."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + [f"w{i}" for i in range(500)])}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>").save_pretrained(path)
    return path


def _set(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[last] = value


def _file_data(s, name):
    return {"path": s["files"][name], "max_len": 64}


# (id, changes to the base config as {dotted key: value} or a function (setup, data) -> data, expected text)
CASES = [
    ("unknown key", {"stepz": 3}, "stepz: unknown key; did you mean 'steps'?"),
    ("unknown nested key", {"actor.optimizer.lrr": 1e-3}, "actor.optimizer.lrr: unknown key; did you mean 'lr'?"),
    ("wrong type", {"steps": "ten"}, "steps: expected an integer, got 'ten'"),
    ("negative lr", {"actor.optimizer.lr": -1.0}, "actor.optimizer: optimizer lr must be > 0"),
    ("unknown experiment", {"experiment": "sftt"}, "experiment: 'sftt' is not one of"),
    ("zero workers", {"n_workers": 0}, "n_workers must be >= 1"),
    ("missing checkpoint folder", {"actor": {"path": "/no/such/model", "optimizer": {"lr": 1e-3}}},
     "actor.path: '/no/such/model' is not a Hugging Face checkpoint folder"),
    ("path and init", lambda s, d: _merge(d, {"actor.path": s["actor"]}), "actor: give exactly one of path"),
    ("trained model without optimizer", {"actor.optimizer": None}, "actor.optimizer: model 'actor' trains"),
    ("section of another experiment", {"dpo": {"beta": 0.1}}, "dpo: section given but experiment is 'sft'"),
    ("model the experiment does not use", {"critic": {"path": "x"}}, "critic: a sft experiment uses no critic"),
    ("missing data file", {"data": {"path": "/no/such.jsonl"}}, "data.path: '/no/such.jsonl' does not exist"),
    ("task and path", lambda s, d: _merge(d, {"data.path": s["files"]["good"]}), "data: give exactly one of task"),
    ("malformed JSONL line", lambda s, d: dict(d, data=_file_data(s, "bad_line")), "bad_line.jsonl line 2"),
    ("empty dataset", lambda s, d: dict(d, data=_file_data(s, "empty")), "has no usable records"),
    ("tokenizer/model vocab mismatch",
     lambda s, d: dict(d, data=dict(_file_data(s, "good"), tokenizer=s["big_tokenizer"])), "vocab_size"),
    ("unknown task", {"data.task": "sortt"}, "data.task: no built-in task 'sortt'; did you mean 'sort'?"),
    ("bad task options", {"data.task_options": {"max_len": 100}}, "data.task_options: sort task max_len=100"),
    ("bad switch value", {"data.on_long": "cut"}, "data.on_long: 'cut' is not one of ['truncate', 'drop']"),
    ("mesh outside the workers", {"allocations.actor_train": {"mesh": [0, 5], "dp": 2}},
     "allocations.actor_train: mesh [0, 5] names workers [5]"),
    ("batch not divisible by dp", {"sft.batch_size": 7}, "allocations.actor_train: its batch of 7 sequences is "
                                                        "not divisible by dp=2"),
    ("tp that does not divide the heads", {"n_workers": 3, "allocations.actor_train": {"mesh": [0, 1, 2], "tp": 3}},
     "allocations.actor_train"),
    ("allocation for an unknown MFC", {"allocations.actor_trian": {"mesh": [0]}},
     "allocations.actor_trian: no such MFC in a sft experiment; did you mean 'actor_train'?"),
    ("eval without eval data", {"eval.every": 1}, "eval.every: evaluation needs eval data"),
    ("generation temperature", lambda s, d: raw("grpo", s["out"], s["actor"], generation={"temperature": 0.0}),
     "generation: GenerationConfig.temperature must be > 0"),
    ("rule reward without a task", lambda s, d: _merge(raw("grpo", s["out"], s["actor"]),
                                                       {"data": _file_data(s, "good")}),
     "grpo.reward: 'task' needs data.task"),
    ("reward function that does not import",
     lambda s, d: _merge(raw("grpo", s["out"], s["actor"]), {"grpo.reward": "fn:no_such_module.f"}),
     "cannot import 'no_such_module.f'"),
    ("offloading a trained model", lambda s, d: dict(raw("dpo", s["out"], s["actor"]), offload=["actor"]),
     "offload names model 'actor', which trains"),
    ("run folder not writable", lambda s, d: dict(d, out=os.path.join(s["files"]["good"], "sub")),
     "out: cannot write the run folder"),
    ("existing run without --resume", lambda s, d: ("fresh", d), "already holds a run; pass --resume"),
    ("resume with another allocation", {"allocations.actor_train": {"mesh": [0, 1], "tp": 2}},
     "resume: allocations.actor_train differs from checkpoint"),
    ("resume with other workers", {"n_workers": 1, "allocations.actor_train": {"mesh": [0]}},
     "resume: n_workers was 2"),
    ("resume beyond steps", {"steps": 1}, "resume: checkpoint"),
]
if not torch.cuda.is_available():
    CASES.append(("cuda without a GPU", {"device": "cuda"}, "device: 'cuda' but this torch sees no CUDA GPU"))


def _merge(data: dict, changes: dict) -> dict:
    data = copy.deepcopy(data)
    for k, v in changes.items():
        _set(data, k, v)
    return data


def _snapshot(out: str) -> dict:
    root = os.path.join(out, "checkpoints")
    snap = {}
    for step in checkpoint.complete(root):
        folder = checkpoint.path_of(root, step)
        checkpoint.verify(folder)
        with open(os.path.join(folder, checkpoint.MANIFEST)) as f:
            snap[step] = f.read()
    return snap


@pytest.mark.parametrize("name, change, expected", CASES, ids=[c[0] for c in CASES])
def test_refused_with_a_clear_message(setup, name, change, expected):
    before = _snapshot(setup["out"])
    assert sorted(before) == [1, 2]
    data, resume = copy.deepcopy(setup["base"]), True
    if callable(change):
        data = change(setup, data)
        if isinstance(data, tuple):
            resume, data = False, data[1]
    else:
        data = _merge(data, change)
    with pytest.raises(ConfigError) as e:
        run_experiment(from_dict(ExperimentConfig, data), resume=resume, console=open(os.devnull, "w"))
    assert expected in str(e.value)
    assert _snapshot(setup["out"]) == before   # nothing saved was touched


def test_corrupt_checkpoint_is_named_and_the_earlier_one_kept(setup, tmp_path):
    out = str(tmp_path / "copy")
    shutil.copytree(setup["out"], out)
    latest = checkpoint.path_of(os.path.join(out, "checkpoints"), 2)
    state = os.path.join(latest, "train_state", "actor", "rank0.pt")
    with open(state, "r+b") as f:
        f.truncate(100)
    data = dict(copy.deepcopy(setup["base"]), out=out)
    with pytest.raises(ConfigError) as e:
        run_experiment(from_dict(ExperimentConfig, data), resume=True, console=open(os.devnull, "w"))
    assert "is damaged: train_state/actor/rank0.pt has 100 bytes" in str(e.value)
    assert "remove the folder to resume from an earlier checkpoint" in str(e.value)
    assert checkpoint.verify(checkpoint.path_of(os.path.join(out, "checkpoints"), 1))["step"] == 1


def test_cli_reports_errors_in_one_line(setup, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(setup["base"]))   # JSON is YAML
    assert main(["run", str(path), "steps"]) == 2
    assert "override 'steps': expected KEY=VALUE" in capsys.readouterr().err
    assert main(["run", str(path), "actor.optimizer.lr=-1", "--resume"]) == 2
    assert "actor.optimizer: optimizer lr must be > 0" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "missing.yaml")]) == 2
    assert "config file" in capsys.readouterr().err
    (tmp_path / "list.yaml").write_text("- 1\n")
    assert main(["check", str(tmp_path / "list.yaml")]) == 2
    assert "must hold a mapping" in capsys.readouterr().err
