"""Seeded train/dev/test splits: of items, of groups (no group crosses splits), stratified by label."""

from __future__ import annotations

import random
from typing import Hashable, Sequence

SPLITS = ("train", "dev", "test")


def split_sizes(n: int, dev: float, test: float) -> dict[str, int]:
    """Target counts per split (rounded half up), keeping at least one item for train when n > 0."""
    n_test = int(n * test + 0.5)
    n_dev = int(n * dev + 0.5)
    while n > 0 and n_test + n_dev >= n:  # tiny inputs: train keeps one item
        if n_dev >= n_test and n_dev > 0:
            n_dev -= 1
        else:
            n_test -= 1
    return {"train": n - n_dev - n_test, "dev": n_dev, "test": n_test}


def split_items(items: Sequence[Hashable], dev: float, test: float, seed: int) -> dict[Hashable, str]:
    """item -> split. The items' order matters only through the seed (the caller passes a stable order)."""
    order = list(items)
    random.Random(seed).shuffle(order)
    sizes = split_sizes(len(order), dev, test)
    out: dict[Hashable, str] = {}
    for i, item in enumerate(order):
        out[item] = "test" if i < sizes["test"] else "dev" if i < sizes["test"] + sizes["dev"] else "train"
    return out


def split_groups(groups: Sequence[Sequence[Hashable]], dev: float, test: float, seed: int) -> dict[Hashable, str]:
    """item -> split, keeping every group whole.

    Groups are shuffled, then each goes to the split furthest below its target item count, so sizes
    come close to the fractions unless one group is very large.
    """
    order = [list(g) for g in groups if g]
    random.Random(seed).shuffle(order)
    total = sum(len(g) for g in order)
    target = split_sizes(total, dev, test)
    have = dict.fromkeys(SPLITS, 0)
    out: dict[Hashable, str] = {}
    for group in order:
        name = max(("test", "dev", "train"), key=lambda s: (target[s] - have[s]) / max(target[s], 1)
                   if target[s] > 0 else float("-inf"))
        have[name] += len(group)
        for item in group:
            out[item] = name
    return out


def split_stratified(items: Sequence[Hashable], labels: Sequence[Hashable], dev: float, test: float,
                     seed: int) -> dict[Hashable, str]:
    """item -> split, splitting each label's items separately (labels in first-seen order)."""
    by_label: dict[Hashable, list[Hashable]] = {}
    for item, label in zip(items, labels):
        by_label.setdefault(label, []).append(item)
    out: dict[Hashable, str] = {}
    for i, members in enumerate(by_label.values()):
        out.update(split_items(members, dev, test, seed + i))
    return out


def connected_groups(links: dict[Hashable, Sequence[Hashable]]) -> list[list[Hashable]]:
    """Queries grouped so that queries sharing a passage (directly or through others) are together.

    ``links`` maps query -> its positive passages; union-find over passages. Groups come out in the
    order of their first query.
    """
    parent: dict[Hashable, Hashable] = {}

    def find(x: Hashable) -> Hashable:
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for query, passages in links.items():
        node = ("q", query)
        for p in passages:
            a, b = find(node), find(("p", p))
            if a != b:
                parent[b] = a
        find(node)
    groups: dict[Hashable, list[Hashable]] = {}
    for query in links:
        groups.setdefault(find(("q", query)), []).append(query)
    return list(groups.values())
