"""From an ExperimentConfig to what the Master runs: model specs, the
algorithm (its MFCs and allocations), datasets. Defaults are filled in here
(``resolve``), so the config saved with a run says everything it used; every
check across fields happens here, before any worker starts.

Defaults: ``ref`` is the actor's starting checkpoint; ``critic`` starts from
the reward model (else the actor) with a new value head and the actor's
optimizer; an MFC without an allocation runs on all workers, data parallel.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re

from real_ext.experiments.config import ConfigError, did_you_mean
from real_ext.experiments.schema import ExperimentConfig, ModelSection
from real_ext.runtime.spec import Allocation, AllocationError, ModelSpec, validate, validate_offload

# Per experiment: model role -> (head, trains, needed); "needed" may depend on the algorithm section.
ROLES = {
    "ppo": lambda a: {"actor": ("lm", True), "critic": ("value", True), "ref": ("lm", False),
                      **({"reward": ("value", False)} if a.reward == "model" else {})},
    "grpo": lambda a: {"actor": ("lm", True), **({"ref": ("lm", False)} if a.beta > 0 else {})},
    "remax": lambda a: {"actor": ("lm", True), **({"ref": ("lm", False)} if a.beta > 0 else {})},
    "sft": lambda a: {"actor": ("lm", True)},
    "rw": lambda a: {"reward": ("value", True)},
    "dpo": lambda a: {"actor": ("lm", True), "ref": ("lm", False)},
}

MFC_NAMES = {
    "ppo": lambda a: ["actor_gen", "reward_inf" if a.reward == "model" else "reward_fn", "ref_inf", "critic_inf",
                      "actor_train", "critic_train"] + (["monitor_fn"] if a.monitor_reward else []),
    "grpo": lambda a: ["actor_gen", "reward_fn", "actor_train"] + (["ref_inf"] if a.beta > 0 else []),
    "remax": lambda a: ["actor_gen", "reward_fn", "actor_train"] + (["ref_inf"] if a.beta > 0 else []),
    "sft": lambda a: ["actor_train"],
    "rw": lambda a: ["rw_train"],
    "dpo": lambda a: ["ref_inf", "actor_train"],
}

DATA_KIND = {"ppo": "prompts", "grpo": "prompts", "remax": "prompts", "sft": "sft", "rw": "pairs", "dpo": "pairs"}
RL = ("ppo", "grpo", "remax")


def policy_role(experiment: str) -> str:
    """The model whose tokenizer reads the data."""
    return "reward" if experiment == "rw" else "actor"


def resolve(c: ExperimentConfig) -> ExperimentConfig:
    """A copy with every default filled in; ConfigError for what cannot run."""
    c = copy.deepcopy(c)
    from real_ext.experiments import schema
    sections = {"ppo": schema.PPOSection, "grpo": schema.GRPOSection, "remax": schema.ReMaxSection,
                "sft": schema.SupervisedSection, "rw": schema.SupervisedSection, "dpo": schema.DPOSection}
    for name in sections:
        if name != c.experiment and getattr(c, name) is not None:
            raise ConfigError(f"{name}: section given but experiment is {c.experiment!r}; "
                              f"rename it to {c.experiment!r} or remove it")
    if c.algo is None:
        setattr(c, c.experiment, sections[c.experiment]())
    a = c.algo
    for field in ("reward", "monitor_reward"):
        if c.experiment in RL and getattr(a, field, None) == "task":
            if c.data.task is None:
                raise ConfigError(f"{c.experiment}.{field}: 'task' needs data.task; name a rule "
                                  f"('task:<name>' or 'fn:<module>.<function>')")
            setattr(a, field, f"task:{c.data.task}")
    _resolve_models(c)
    _resolve_data(c)
    names = MFC_NAMES[c.experiment](a)
    auto = c.allocations == "auto"
    if auto:
        c.allocations = {}
    for name in c.allocations:
        if name not in names:
            raise ConfigError(f"allocations.{name}: no such MFC in a {c.experiment} experiment"
                              f"{did_you_mean(name, names)} (MFCs: {', '.join(names)})")
    everyone = Allocation(tuple(range(c.n_workers)), dp=c.n_workers)
    given = dict(c.allocations)
    c.allocations = {n: given.get(n, everyone) for n in names}
    if "monitor_fn" in names and "monitor_fn" not in given:   # scores responses where they were generated
        c.allocations["monitor_fn"] = c.allocations["actor_gen"]
    if c.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' but this torch sees no CUDA GPU; set device: cpu")
    _check_launcher(c)
    if auto:
        c.allocations = _searched_allocations(c, names)
    return c


def _check_launcher(c: ExperimentConfig) -> None:
    if c.launcher != "ray":
        if c.ray_address is not None:
            raise ConfigError("ray_address: used only with launcher: ray; set launcher: ray or remove ray_address")
        return
    try:
        import ray  # noqa: F401  (only checked here; real_ext/runtime/ray_launcher.py uses it)
    except ImportError:
        raise ConfigError('launcher: \'ray\' needs Ray, which is not installed; pip install "real_ext[ray]" '
                          '(or set launcher: local)') from None


def _searched_allocations(c: ExperimentConfig, names) -> dict:
    """``allocations: auto``: the plan search's choice for this config on
    this machine's workers (CPU: from the measured profile, made if missing)."""
    from real_ext.plan.problem import problem_from_config
    from real_ext.plan.search import PlanSearchError, search
    try:
        cost = local_cost(c)
        # The graph and data, built under a placeholder allocation the search replaces.
        placeholder = dataclasses.replace(c, allocations={n: Allocation((0,)) for n in names})
        problem = problem_from_config(placeholder, cost)
        found = search(problem, time_budget_s=c.plan.time_s)
    except PlanSearchError as e:
        raise ConfigError(f"allocations: auto: {e}") from None
    print(f"[plan] searched {found.evaluated} plans in {found.seconds:.1f} s: estimated "
          f"{found.result.iteration_time:.3g} s per step; baselines: "
          + ", ".join(f"{k} {v[1].iteration_time:.3g} s" if v else f"{k} does not fit"
                      for k, v in found.baselines.items()), flush=True)
    return found.allocations


def local_cost(c: ExperimentConfig):
    """The cost model of this machine's n_workers workers."""
    from real_ext.plan.cost import AnalyticCost, ProfiledCost
    from real_ext.plan.hardware import parse_cluster
    if c.device == "cuda":
        import torch
        cluster = c.plan.cluster or f"1x{c.n_workers}x{torch.cuda.get_device_name(0).split()[-1]}"
        try:
            return AnalyticCost(parse_cluster(cluster))
        except ValueError as e:
            raise ConfigError(f"plan.cluster: {e}; name the GPUs, e.g. plan.cluster=1x8xH100") from None
    from real_ext.plan.hardware import cpu_hardware, load_profile
    from real_ext.plan.profile import run_profile
    profile, why = None, "measuring this machine first"
    if os.path.exists(c.plan.profile):
        try:
            profile = load_profile(c.plan.profile)
        except ValueError as e:   # written by an older real_ext
            why = f"{e}: measuring again"
    if profile is None:
        print(f"[plan] {why} (real-ext profile) -> {c.plan.profile}", flush=True)
        profile = run_profile(c.plan.profile)
    return ProfiledCost(cpu_hardware(profile, c.n_workers), profile)


def _resolve_models(c: ExperimentConfig) -> None:
    roles = ROLES[c.experiment](c.algo)
    for role in ("actor", "critic", "ref", "reward"):
        if role not in roles and getattr(c, role) is not None:
            raise ConfigError(f"{role}: a {c.experiment} experiment uses no {role} model "
                              f"(it uses {', '.join(roles)}); remove the section")
    if "ref" in roles and c.ref is None and c.actor is not None:
        c.ref = ModelSection(path=c.actor.path, init=c.actor.init, dtype=c.actor.dtype)
    if "critic" in roles and c.critic is None:
        start = c.reward if c.reward is not None else c.actor
        if start is not None:
            c.critic = ModelSection(path=start.path, init=start.init, dtype=start.dtype,
                                    optimizer=c.actor.optimizer if c.actor else None)
    for role, (_, trains) in roles.items():
        m = getattr(c, role)
        if m is None:
            raise ConfigError(f"{role}: a {c.experiment} experiment needs a {role} model; add a section "
                              f"'{role}: {{path: <HF checkpoint>}}'")
        if (m.path is None) == (m.init is None):
            raise ConfigError(f"{role}: give exactly one of path (a HF checkpoint) or init (a fresh model)")
        if m.path is not None and not os.path.isfile(os.path.join(m.path, "config.json")):
            raise ConfigError(f"{role}.path: {m.path!r} is not a Hugging Face checkpoint folder "
                              f"(no config.json there)")
        if m.init is not None:
            _check_task(m.init.task, f"{role}.init.task")
        if trains and m.optimizer is None:
            raise ConfigError(f"{role}.optimizer: model {role!r} trains in a {c.experiment} experiment; "
                              f"add 'optimizer: {{lr: ...}}'")
        if not trains and m.optimizer is not None:
            raise ConfigError(f"{role}.optimizer: model {role!r} does not train in a {c.experiment} "
                              f"experiment; remove its optimizer")


def _check_task(name: str, where: str) -> None:
    from real_ext.tasks import TASKS
    if name not in TASKS:
        raise ConfigError(f"{where}: no built-in task {name!r}{did_you_mean(name, TASKS)} (tasks: {', '.join(TASKS)})")


def _resolve_data(c: ExperimentConfig) -> None:
    d = c.data
    if (d.task is None) == (d.path is None):
        raise ConfigError("data: give exactly one of task (a built-in task) or path (a JSONL file or "
                          "HF datasets folder)")
    if d.task is not None:
        _check_task(d.task, "data.task")
        if d.eval_path is not None:
            raise ConfigError("data.eval_path: built-in task data makes its eval set itself; set data.eval_n")
    else:
        for field in ("path", "eval_path"):
            p = getattr(d, field)
            if p is not None and not os.path.exists(p):
                raise ConfigError(f"data.{field}: {p!r} does not exist")
        if d.tokenizer is None:   # a fresh model's is its task's, which build() writes
            d.tokenizer = getattr(c, policy_role(c.experiment)).path
    has_eval = d.eval_n > 0 or d.eval_path is not None
    if c.eval.every > 0 and not has_eval:
        raise ConfigError("eval.every: evaluation needs eval data; set data.eval_n (built-in task) or "
                          "data.eval_path, or eval.every: 0")


# ------------------------------------------------------------------ runtime objects


@dataclasses.dataclass
class Built:
    models: dict[str, ModelSpec]
    algorithm: object
    dataset: object
    eval_dataset: object | None
    data_report: dict
    trained: list[str]                  # models with a train_step, in role order


def build(c: ExperimentConfig, tokenizer_dir: str) -> Built:
    """Runtime objects of a resolved config. Fresh (``init``) models get the
    task's tokenizer, written to ``tokenizer_dir``, so their HF saves carry it."""
    roles = ROLES[c.experiment](c.algo)
    models = {}
    for role, (head, trains) in roles.items():
        m = getattr(c, role)
        spec = ModelSpec(role, path=m.path, head=head, dtype=m.dtype, optimizer=m.optimizer if trains else None,
                         activation_checkpointing=m.activation_checkpointing)
        if m.init is not None:
            from real_ext.tasks import get_task
            task = get_task(m.init.task)
            if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
                task.save_tokenizer(tokenizer_dir)
            spec = dataclasses.replace(spec, config=task.model_config(m.init.size), seed=m.init.seed,
                                       tokenizer=tokenizer_dir)
        models[role] = spec
    policy = models[policy_role(c.experiment)]
    try:
        vocab = policy.model_config().vocab_size
    except AllocationError as e:
        raise ConfigError(f"{policy.name}: {e}") from None
    dataset, eval_dataset, report, eos = _datasets(c, vocab, c.data.tokenizer or policy.tokenizer)
    algorithm = _algorithm(c, eos)
    try:
        validate(models, algorithm.mfcs(), c.n_workers)
        validate_offload(models, algorithm.mfcs(), c.offload)
    except AllocationError as e:   # "MFC 'x': ..." is the field allocations.x
        raise ConfigError(re.sub(r"^MFC '(\w+)'", r"allocations.\1", str(e))) from None
    return Built(models, algorithm, dataset, eval_dataset, report,
                 [r for r, (_, trains) in roles.items() if trains])


def _datasets(c: ExperimentConfig, vocab: int, tokenizer_path: str | None):
    """(train, eval or None, report, eos id) for the experiment's data kind,
    checked against the ``vocab`` of the model that reads it."""
    from real_ext.data.completions import CompletionDataset
    from real_ext.data.prompts import PromptDataset
    d, kind = c.data, DATA_KIND[c.experiment]
    if d.task is not None:
        from real_ext.tasks import get_task
        try:
            task = get_task(d.task, **d.task_options)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"data.task_options: {e}") from None
        make = {"prompts": PromptDataset.from_task, "sft": CompletionDataset.sft_from_task,
                "pairs": CompletionDataset.pairs_from_task}[kind]
        train = make(task, d.n, d.seed)
        evals = make(task, d.eval_n, f"eval/{d.seed}") if d.eval_n else None
        if task.vocab_size > vocab:
            raise ConfigError(f"data.task: task {d.task!r} has {task.vocab_size} tokens but model "
                              f"{policy_role(c.experiment)!r} has vocab_size {vocab}; start from a model made for "
                              f"the task (init: {{task: {d.task}}})")
        report = {"source": f"task:{d.task}", "records": d.n, "eval_records": d.eval_n}
        return train, evals, report, task.eos_id
    from real_ext.data.files import DataError, check_vocab, load_dataset_file, load_tokenizer
    try:
        tokenizer = load_tokenizer(tokenizer_path)
        check_vocab(tokenizer, vocab, f"model {policy_role(c.experiment)!r}")
        options = dict(max_len=d.max_len, on_long=d.on_long, on_bad_line=d.on_bad_line)
        train, report = load_dataset_file(d.path, kind, tokenizer, **options)
        evals, eval_report = (load_dataset_file(d.eval_path, kind, tokenizer, **options) if d.eval_path
                              else (None, None))
    except DataError as e:
        raise ConfigError(f"data: {e}") from None
    report = dict(report, eval=eval_report)
    return train, evals, report, tokenizer.eos_token_id


def _generation(c: ExperimentConfig, eos: int | None) -> dict:
    g = c.generation
    stops = tuple(g.stop_token_ids) + ((eos,) if g.stop_at_eos and eos is not None else ())
    return dict(max_new_tokens=g.max_new_tokens, min_new_tokens=g.min_new_tokens, greedy=g.greedy,
                temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, stop_token_ids=tuple(dict.fromkeys(stops)),
                seed=g.seed, cuda_graphs=g.cuda_graphs)


def _algorithm(c: ExperimentConfig, eos: int | None):
    from real_ext import algo
    a, alloc = c.algo, dict(c.allocations)
    shuffle = c.data.seed if c.data.shuffle else None
    if c.experiment in RL:
        from real_ext.generation import GenerationConfig
        gen = _generation(c, eos)
        try:
            GenerationConfig(**gen)
        except ValueError as e:
            raise ConfigError(f"generation: {e}") from None
    common = dataclasses.asdict(a)
    if c.experiment == "ppo":
        return algo.PPO(algo.PPOConfig(**common, generation=gen, allocations=alloc, shuffle_seed=shuffle))
    if c.experiment in ("grpo", "remax"):
        if c.experiment == "remax":
            common["group_size"] = 1
        return algo.GRPO(algo.GRPOConfig(**common, generation=gen, allocations=alloc, shuffle_seed=shuffle),
                         remax=c.experiment == "remax")
    if c.experiment == "sft":
        return algo.SFT(algo.SFTConfig(**common, allocations=alloc, shuffle_seed=shuffle))
    if c.experiment == "rw":
        return algo.RW(algo.RWConfig(**common, allocations=alloc, shuffle_seed=shuffle))
    return algo.DPO(algo.DPOConfig(**common, allocations=alloc, shuffle_seed=shuffle))
