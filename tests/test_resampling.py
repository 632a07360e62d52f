"""The resamplings of the data split for the comparison (evotune.data.resampling)."""

import dataclasses
from collections import Counter

import pandas as pd
import pytest
import torch

from evotune.data.resampling import SplitResamplings, has_official_test, make_resamplings, resample, resample_split


@pytest.fixture
def splits(make_split):
    """A run's split: 3 classes, train capped at 4 and val at 2 per class, the rest (unequal) in test."""
    def named(split, part):
        return dataclasses.replace(split, items=[f"{part}{i}" for i in range(len(split.items))])

    train, val = named(make_split(4, 3, seed=0), "tr"), named(make_split(2, 3, seed=1), "va")
    test = named(make_split(5, 3, seed=2), "te")
    keep = torch.tensor([True] * 5 + [True] * 3 + [False] * 2 + [True] * 1 + [False] * 4)  # 5, 3, 1 test images
    return train, val, test.subset(keep)


def _per_class(split):
    return Counter(split.labels.tolist())


def _items(*parts):
    return [it for p in parts for it in p.items]


def test_resampling_zero_is_the_runs_split(splits):
    out = resample_split(*splits, 0, split_seed=42, fixed_test=False)
    assert all(a is b for a, b in zip(out, splits))
    assert resample(*splits, 0, split_seed=42, fixed_test=False).dataset == splits[0].dataset


@pytest.mark.parametrize("fixed_test", [False, True])
def test_a_resampling_is_stratified_disjoint_and_keeps_the_class_sizes(splits, fixed_test):
    for r in (1, 2):
        new = resample_split(*splits, r, split_seed=42, fixed_test=fixed_test)
        for old, part in zip(splits, new):
            assert _per_class(part) == _per_class(old)  # the caps (4 train, 2 val per class) hold
            assert {part.dataset} == {new[0].dataset} and part.dataset_name == old.dataset_name
            assert part.classes == old.classes
            for item, y, img in zip(part.items, part.labels.tolist(), part.images):  # image and label travel together
                src = next(s for s in splits if item in s.items)
                k = src.items.index(item)
                assert src.labels[k] == y and torch.equal(src.images[k], img)
        assert sorted(_items(*new)) == sorted(_items(*splits))  # disjoint, nothing lost
        assert new[0].dataset not in (splits[0].dataset, None)
        if fixed_test:
            assert new[2].items == splits[2].items
        assert set(new[0].items) != set(splits[0].items)


def test_resamplings_are_deterministic_per_seed_and_independent_of_order(splits):
    a = resample(*splits, 1, split_seed=42, fixed_test=False)
    assert a == resample(*splits, 1, split_seed=42, fixed_test=False)
    assert a.train != resample(*splits, 1, split_seed=43, fixed_test=False).train
    b = resample(*splits, 2, split_seed=42, fixed_test=False)
    assert a.train != b.train and a.dataset != b.dataset
    train, val, test = splits
    perm = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(3))
    shuffled = dataclasses.replace(train, images=train.images[perm], labels=train.labels[perm],
                                   items=[train.items[i] for i in perm.tolist()])
    x = resample_split(*splits, 1, split_seed=42, fixed_test=False)
    y = resample_split(shuffled, val, test, 1, split_seed=42, fixed_test=False)
    assert [sorted(p.items) for p in x] == [sorted(p.items) for p in y] and x[0].dataset == y[0].dataset


def test_the_artifact_holds_all_resamplings_and_round_trips(splits, tmp_path):
    from evotune.io import TypedJSONDataset

    rs = make_resamplings(*splits, 3, split_seed=42, fixed_test=False, created="now")
    assert len(rs) == 3 and rs.dataset == splits[0].dataset
    assert [r for r, *_ in rs.each(*splits)] == [0, 1, 2]
    assert len({r.dataset for r in rs.resamplings}) == 3
    ds = TypedJSONDataset(artifact="evotune.data.resampling.SplitResamplings", filepath=str(tmp_path / "r.json"))
    ds.save(rs)
    assert ds.load() == rs and isinstance(ds.load(), SplitResamplings)


def test_the_official_test_split_is_known_from_the_index():
    index = pd.DataFrame({"item": ["a", "b", "c"], "label": [0, 0, 1], "official_split": ["train", "test", "train"]})
    assert has_official_test(index, True)
    assert not has_official_test(index, False)
    assert not has_official_test(index.assign(official_split=["", "", ""]), True)
    assert not has_official_test(index.drop(columns="official_split"), True)
