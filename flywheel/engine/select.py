"""Which frames a human should label, within a budget: uncertainty, diversity, balance, or all three.

Inputs are the champion's view of the candidate frames: probabilities (N, C), penultimate
embeddings (N, D), and metadata columns (e.g. `condition`) for balance. Numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

STRATEGIES = ("uncertainty", "diversity", "balanced", "hybrid", "typical", "random")
MEASURES = ("max_softmax", "margin", "entropy")  # confidence measures, all in [0, 1]
HYBRID_POOL = 4  # hybrid draws from the budget x this most uncertain frames
TYPICAL_NEIGHBOURS = 20  # typicality: inverse mean distance to this many nearest frames of the cluster


def confidence(probs: np.ndarray, measure: str = "max_softmax") -> np.ndarray:
    """(N,) confidence in [0, 1] per row of probabilities (N, C), higher is surer.

    max_softmax: the top probability; margin: top minus runner-up; entropy: 1 - H(p) / log(C).
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown confidence measure {measure!r}; known: {MEASURES}")
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be (N, C) with C >= 2, got shape {probs.shape}")
    p = probs.astype(np.float64)
    if measure == "max_softmax":
        return p.max(axis=1)
    if measure == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]
    entropy = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)
    return 1.0 - entropy / np.log(p.shape[1])


def uncertainty(probs: np.ndarray, measure: str = "entropy") -> np.ndarray:
    """(N,) in [0, 1], higher is less sure: normalized entropy, or 1 - (top1 - top2) for `margin`."""
    if measure not in ("entropy", "margin"):
        raise ValueError(f"unknown uncertainty measure {measure!r}; known: entropy, margin")
    return 1.0 - confidence(probs, measure)


def k_center_greedy(embeddings: np.ndarray, budget: int, *, candidates: np.ndarray | None = None,
                    groups: np.ndarray | None = None, first: int | None = None) -> np.ndarray:  # fmt: skip
    """Greedy k-center (core-set) picks among `candidates`: each pick is the frame farthest from all picked.

    Embeddings are L2-normalized first (cosine geometry). With `groups` (N,) ints, picks go
    round-robin over the groups, each taking its own farthest frame, so every group is covered.
    `first` is the starting frame (default: the first candidate).
    """
    cand = np.arange(len(embeddings)) if candidates is None else np.asarray(candidates, np.int64)
    budget = min(budget, len(cand))
    if budget <= 0:
        return np.zeros(0, np.int64)
    z = embeddings[cand].astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12  # (M, D)
    g = np.zeros(len(cand), np.int64) if groups is None else np.asarray(groups)[cand]
    order = list(dict.fromkeys(g.tolist()))  # groups in first-seen order
    dist = np.full(len(cand), np.inf)  # distance to the nearest pick so far
    free = np.ones(len(cand), bool)
    start = 0 if first is None else int(np.flatnonzero(cand == first)[0])
    picks = []
    turn = order.index(g[start])
    while len(picks) < budget:
        group = order[turn % len(order)]
        turn += 1
        mask = free & (g == group)
        if not mask.any():
            continue
        j = start if not picks else int(np.flatnonzero(mask)[np.argmax(dist[mask])])
        picks.append(j)
        free[j] = False
        dist = np.minimum(dist, np.linalg.norm(z - z[j], axis=1))
    return cand[np.array(picks, np.int64)]


def typical(embeddings: np.ndarray, budget: int, *, seed: int = 0,
            neighbours: int = TYPICAL_NEIGHBOURS) -> np.ndarray:  # fmt: skip
    """TypiClust (Hacohen et al., 2022) within the candidates: k-means their L2-normalized embeddings
    into `budget` clusters and take each cluster's most typical frame (the highest inverse mean
    distance to its `neighbours` nearest frames in the cluster), largest clusters first. For small
    budgets, where typical frames teach a young model more than its uncertain ones."""
    from sklearn.cluster import KMeans

    budget = min(budget, len(embeddings))
    if budget <= 0:
        return np.zeros(0, np.int64)
    z = embeddings.astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    clusters = KMeans(n_clusters=budget, n_init=3, random_state=seed).fit_predict(z)
    picks = []
    for c in np.argsort(-np.bincount(clusters, minlength=budget), kind="stable"):
        members = np.flatnonzero(clusters == c)
        if len(members) == 0:
            continue
        d = np.linalg.norm(z[members, None] - z[None, members], axis=2)  # (m, m)
        k = min(neighbours, len(members) - 1)
        if k == 0:
            picks.append(int(members[0]))
            continue
        near = np.sort(d, axis=1)[:, 1 : k + 1]  # each frame's k nearest others
        picks.append(int(members[np.argmin(near.mean(axis=1))]))
    return np.array(picks, np.int64)


def balance_groups(probs: np.ndarray, meta: Mapping[str, Sequence], keys: Sequence[str]) -> np.ndarray:
    """(N,) group id per frame: predicted class x the metadata `keys` present in `meta`."""
    n = len(probs)
    cols = [probs.argmax(axis=1).tolist()]
    for k in keys:
        if k in meta:
            if len(meta[k]) != n:
                raise ValueError(f"meta[{k!r}] has {len(meta[k])} values for {n} frames")
            cols.append(list(meta[k]))
    names = list(zip(*cols, strict=True))
    ids = {name: i for i, name in enumerate(dict.fromkeys(names))}
    return np.array([ids[x] for x in names], np.int64)


def round_robin(groups: np.ndarray, score: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Take the highest-`score` frame of each group in turn (groups in random order) until `budget`."""
    queues = [np.flatnonzero(groups == g)[np.argsort(-score[groups == g], kind="stable")] for g in np.unique(groups)]
    queues = [queues[i].tolist() for i in rng.permutation(len(queues))]
    picks: list[int] = []
    while len(picks) < budget and any(queues):
        for q in queues:
            if q and len(picks) < budget:
                picks.append(q.pop(0))
    return np.array(picks, np.int64)


def select_for_labeling(
    probs: np.ndarray,
    embeddings: np.ndarray | None,
    meta: Mapping[str, Sequence] | None = None,
    *,
    budget: int,
    strategy: str = "hybrid",
    seed: int = 0,
    balance_by: Sequence[str] = ("condition",),
    measure: str = "entropy",
) -> np.ndarray:
    """Indices (at most `budget`, distinct, in pick order) of the frames to send to a human.

    uncertainty: the least sure first. diversity: k-center greedy on embeddings. balanced:
    round-robin over (predicted class x `balance_by`) groups, least sure first in each.
    hybrid: among the `HYBRID_POOL` x budget least sure, k-center round-robin over the same
    groups (uncertain, spread out, and covering every class/condition). typical: TypiClust, one
    typical frame per cluster (`typical`). random: uniform.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {STRATEGIES}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    n = len(probs)
    if embeddings is not None and len(embeddings) != n:
        raise ValueError(f"embeddings has {len(embeddings)} rows for {n} probs rows")
    if strategy in ("diversity", "hybrid", "typical") and embeddings is None:
        raise ValueError(f"strategy {strategy!r} needs embeddings")
    budget = min(budget, n)
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return rng.choice(n, size=budget, replace=False).astype(np.int64)
    u = uncertainty(probs, measure)
    if strategy == "uncertainty":
        return np.argsort(-u, kind="stable")[:budget].astype(np.int64)
    if strategy == "diversity":
        return k_center_greedy(embeddings, budget, first=int(np.argmax(u)))
    if strategy == "typical":
        return typical(embeddings, budget, seed=seed)
    groups = balance_groups(probs, meta or {}, balance_by)
    if strategy == "balanced":
        return round_robin(groups, u, budget, rng)
    pool = np.argsort(-u, kind="stable")[: min(n, HYBRID_POOL * budget)]
    return k_center_greedy(embeddings, budget, candidates=pool, groups=groups, first=int(pool[0]) if len(pool) else None)
