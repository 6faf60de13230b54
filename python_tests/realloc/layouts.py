"""Random model configs and layout pairs for the reallocation tests."""
import math
import random

from real_ext.realloc import Layout

DEGREES = (1, 2, 3, 4, 8)


def random_config(rng: random.Random, tps: tuple[int, ...], max_pp: int) -> dict:
    """A tiny llama/qwen2-like config that every tp in tps can split."""
    m = math.lcm(*tps)
    heads = m * rng.choice((1, 2))
    kv_options = [k for k in range(1, heads + 1)
                  if heads % k == 0 and all(k % tp == 0 or tp % k == 0 for tp in tps)]
    kv = rng.choice(kv_options)
    head_dim = rng.choice((4, 8))
    return dict(model_type=rng.choice(("llama", "qwen2")), vocab_size=rng.randint(17, 90),
                hidden_size=heads * head_dim, head_dim=head_dim, num_attention_heads=heads,
                num_key_value_heads=kv, intermediate_size=8 * m * rng.choice((1, 2)),
                num_hidden_layers=rng.randint(max_pp, max_pp + 2), tie_word_embeddings=rng.random() < 0.5)


def random_strategy(rng: random.Random, limit: int) -> tuple[int, int, int]:
    while True:
        dp, tp, pp = (rng.choice(DEGREES) for _ in range(3))
        if dp * tp * pp <= limit:
            return dp, tp, pp


def random_pair(seed: int, world: int = 64):
    """(config, head, src layout, dst layout) with equal, overlapping or disjoint meshes."""
    rng = random.Random(seed)
    s, d = random_strategy(rng, world), random_strategy(rng, world)
    config = random_config(rng, (s[1], d[1]), max(s[2], d[2]))
    head = rng.choice(("lm", "lm", "value"))
    ranks = list(range(world))
    rng.shuffle(ranks)
    n_s, n_d = math.prod(s), math.prod(d)
    kind = rng.choice(("equal", "overlap", "disjoint"))
    if kind == "equal" and n_s == n_d:
        mesh_s = mesh_d = sorted(ranks[:n_s])
    elif kind == "disjoint" and n_s + n_d <= world:
        mesh_s, mesh_d = sorted(ranks[:n_s]), sorted(ranks[n_s:n_s + n_d])
    else:
        start = min(n_s // 2, world - n_d)  # overlapping (or equal when the sizes force it)
        mesh_s, mesh_d = sorted(ranks[:n_s]), sorted(ranks[start:start + n_d])
    wpn = rng.choice((1, 4, 8))
    src = Layout.from_config(config, mesh_s, *s, head=head, workers_per_node=wpn)
    dst = Layout.from_config(config, mesh_d, *d, head=head, workers_per_node=wpn)
    return config, head, src, dst
