"""Stratified, seeded splits and the search's chunks."""

import logging

import pandas as pd
import pytest

from evotune.data import DataSourceError, assign_splits, chunk_ids


def make_index(counts, official=None):
    rows = []
    for y, n in enumerate(counts):
        for i in range(n):
            rows.append({"item": f"c{y}/{i}", "label": y, "class_name": f"c{y}",
                         "official_split": "" if official is None else official(y, i)})
    return pd.DataFrame(rows)


def split_sets(df):
    return {s: set(df.loc[df["split"] == s, "item"]) for s in ("train", "val", "test")}


def test_fraction_split_is_stratified_reproducible_and_disjoint():
    idx = make_index([100, 50, 30])
    a = assign_splits(idx, seed=1, val_fraction=0.2, test_fraction=0.1)
    b = assign_splits(idx.sample(frac=1.0, random_state=3), seed=1, val_fraction=0.2, test_fraction=0.1)
    c = assign_splits(idx, seed=2, val_fraction=0.2, test_fraction=0.1)
    sa = split_sets(a)
    assert sa == split_sets(b)  # same seed -> same split, whatever the row order
    assert sa != split_sets(c)
    assert len(a) == len(idx) and set().union(*sa.values()) == set(idx["item"])
    assert not (sa["train"] & sa["val"] or sa["train"] & sa["test"] or sa["val"] & sa["test"])
    per = a.groupby(["label", "split"]).size().unstack()
    assert per.loc[0].tolist() == [10, 70, 20]  # test, train, val (columns sorted)
    assert per.loc[1].tolist() == [5, 35, 10]
    assert per.loc[2].tolist() == [3, 21, 6]


def test_per_class_caps_send_the_rest_to_test():
    idx = make_index([40, 60, 25])
    df = assign_splits(idx, seed=0, val_fraction=0.2, test_fraction=0.2, train_per_class=5, val_per_class=3)
    per = df.groupby(["label", "split"]).size().unstack()
    assert per["train"].tolist() == [5, 5, 5] and per["val"].tolist() == [3, 3, 3]
    assert per["test"].tolist() == [32, 52, 17]
    assert len(df) == len(idx)


def test_official_splits_are_kept_and_val_is_carved_from_train():
    idx = make_index([30, 30], official=lambda y, i: "test" if i < 10 else "train")
    df = assign_splits(idx, seed=0, val_fraction=0.25, test_fraction=0.5)
    assert (df.loc[df["official_split"] == "test", "split"] == "test").all()
    train_pool = df[df["official_split"] == "train"]
    assert train_pool.groupby(["label", "split"]).size().to_dict() == {
        (0, "train"): 15, (0, "val"): 5, (1, "train"): 15, (1, "val"): 5}
    # caps with an official test split: the rest of the pool is dropped, the official test kept whole
    capped = assign_splits(idx, seed=0, val_fraction=0.25, test_fraction=0.5, train_per_class=4, val_per_class=2)
    assert capped.groupby("split").size().to_dict() == {"test": 20, "train": 8, "val": 4}
    # ignoring the official splits
    fresh = assign_splits(idx, seed=0, val_fraction=0.25, test_fraction=0.25, respect_official_splits=False)
    assert fresh.groupby("split").size().to_dict() == {"test": 16, "train": 28, "val": 16}


def test_official_train_val_test_used_as_is():
    names = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    idx = make_index([10, 10], official=lambda y, i: names[i])
    df = assign_splits(idx, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert (df["split"] == df["official_split"]).all()


@pytest.mark.parametrize(
    "kwargs, counts, param",
    [
        ({"val_fraction": 0.0, "test_fraction": 0.2}, [20, 20], "data.split.val_fraction"),
        ({"val_fraction": 0.2, "test_fraction": 0.0}, [20, 20], "data.split.test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.4}, [2, 20], "data.split.val_fraction"),  # class 0 has no train
        ({"val_fraction": 0.6, "test_fraction": 0.6}, [20, 20], "data.split.val_fraction + data.split.test_fraction"),
        ({"val_fraction": 0.2, "test_fraction": 0.2, "train_per_class": 0}, [20, 20], "data.split.train_per_class"),
    ],
)
def test_bad_split_parameters_are_named(kwargs, counts, param):
    with pytest.raises(DataSourceError) as e:
        assign_splits(make_index(counts), seed=0, **kwargs)
    assert param in str(e.value)


def test_class_missing_from_official_val_is_reported():
    idx = make_index([10, 10], official=lambda y, i: "val" if (y == 0 and i < 2) else ("test" if i < 4 else "train"))
    with pytest.raises(DataSourceError, match="'c1'.*has 0 val image"):
        assign_splits(idx, seed=0, val_fraction=0.2, test_fraction=0.2)


def chunks_of(df, name, n_chunks, seed=0):
    part = df[df["split"] == name]
    return part, chunk_ids(part["item"], part["label"], split=name, n_chunks=n_chunks, seed=seed)


def test_chunks_are_disjoint_stratified_and_cover_train_and_val():
    idx = make_index([41, 30, 17])
    df = assign_splits(idx, seed=0, val_fraction=0.25, test_fraction=0.2)
    for name in ("train", "val"):
        part, ids = chunks_of(df, name, 4)
        part = part.assign(chunk=ids)
        assert sorted(part["chunk"].unique()) == [0, 1, 2, 3]
        per = part.groupby(["label", "chunk"]).size().unstack()
        assert (per.max(axis=1) - per.min(axis=1) <= 1).all()  # each class spread evenly
        sizes = part.groupby("chunk").size()
        assert sizes.max() - sizes.min() <= 1
        assert chunks_of(df, name, 4)[1].tolist() == ids.tolist()
        assert chunks_of(df, name, 4, seed=5)[1].tolist() != ids.tolist()
        # the order of the images does not matter
        shuffled = part.sample(frac=1.0, random_state=1)
        again = chunk_ids(shuffled["item"], shuffled["label"], split=name, n_chunks=4, seed=0)
        assert dict(zip(shuffled["item"], again)) == dict(zip(part["item"], ids))


def test_one_chunk_and_exact_fractions():
    df = assign_splits(make_index([10, 10]), seed=0, val_fraction=0.2, test_fraction=0.2)
    assert set(chunks_of(df, "train", 1)[1]) == {0}
    assert set(chunks_of(df, "val", 2)[1]) == {0, 1}


def test_too_many_chunks_names_train_split_pct():
    df = assign_splits(make_index([20, 20]), seed=0, val_fraction=0.1, test_fraction=0.2)  # 2 val per class
    with pytest.raises(DataSourceError, match=r"(?s)2 val image\(s\); the 4 search chunks need 4.*search\.train_split_pct"):
        chunks_of(df, "val", 4)


#: the search chunks of the embedded digits with conf/base's data parameters of that time (10 training
#: and 10 validation images per class), as the data stage cut them before the search cut them itself:
#: (train + val images, sha1 of the sorted (split, item, chunk) rows) (conf/base's data.split.seed is 42)
CHUNKS_BEFORE = {(0.5, 42): (200, "b8daddc4ee33ddea"), (0.3, 42): (200, "bacf28f4e6462e33"),
                 (0.5, 7): (200, "50f27b2ce84a4ad2")}


@pytest.mark.parametrize(("pct", "seed"), list(CHUNKS_BEFORE))
def test_the_search_cuts_the_same_chunks_as_the_data_stage_did(pct, seed, base_parameters):
    import hashlib

    from evotune.pipelines.data_processing.nodes import ingest_index, split_dataset
    from evotune.search.config import SearchConfig

    params = base_parameters()
    params["data"]["split"]["seed"] = seed
    # the sizes the reference was recorded with (the default is 20 / 30 since issue 11)
    params["data"]["split"].update(train_per_class=10, val_per_class=10)
    assert params["search"]["chunk_seed"] == 42  # ${data.split.seed}
    cfg = SearchConfig.from_params({**params["search"], "train_split_pct": pct, "chunk_seed": seed})
    df = split_dataset(ingest_index(params["data"]), params["data"])
    rows = []
    for name in ("train", "val"):
        part, ids = chunks_of(df, name, cfg.n_chunks, seed=cfg.chunk_seed)
        rows += [(name, item, int(c)) for item, c in zip(part["item"], ids)]
    rows.sort()
    assert (len(rows), hashlib.sha1(repr(rows).encode()).hexdigest()[:16]) == CHUNKS_BEFORE[(pct, seed)]


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_caps_and_fractions_that_move_images_warn_once_per_split(caplog):
    idx = make_index([40, 60, 25])
    with caplog.at_level(logging.WARNING):
        assign_splits(idx, seed=0, val_fraction=0.2, test_fraction=0.2)
    assert _warnings(caplog) == []  # fractions without official splits only define the split
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assign_splits(idx, seed=0, val_fraction=0.2, test_fraction=0.2, train_per_class=5, val_per_class=3)
    # train 24 + 36 + 15 -> 15 kept; val 8 + 12 + 5 -> 9 kept
    assert _warnings(caplog) == [
        "train split: 60 image(s) over data.split.train_per_class=5 moved to test (set it to null to use every image)",
        "val split: 16 image(s) over data.split.val_per_class=3 moved to test (set it to null to use every image)"]
    caplog.clear()
    official = make_index([30, 30], official=lambda y, i: "test" if i < 10 else "train")
    with caplog.at_level(logging.WARNING):
        assign_splits(official, seed=0, val_fraction=0.25, test_fraction=0.5, train_per_class=4)
    assert _warnings(caplog) == [
        "val split: 10 image(s) moved out of the official train split by data.split.val_fraction=0.25 (the source "
        "has no official val split)",
        "train split: 22 image(s) over data.split.train_per_class=4 dropped (the source has an official test split) "
        "(set it to null to use every image)"]


def test_auto_caps_are_the_embedded_tasks_and_a_users_source_keeps_every_image(root, tmp_path):
    """conf/base's caps are auto: the embedded task's few-label caps; a conf/local that sets only
    data.source (parameters merge key by key) gets every image, whatever conf/base's caps are."""
    import shutil

    from evotune.config import load_parameters
    from evotune.data.embedded import FEW_LABEL_CAPS
    from evotune.pipelines.data_processing.nodes import split_options

    conf = tmp_path / "conf"
    shutil.copytree(root / "conf" / "base", conf / "base")
    (conf / "local").mkdir()
    (conf / "local" / "parameters_data_processing.yml").write_text(
        "data:\n  source: {kind: image_folder, path: data/01_raw/my_images}\n")
    base = load_parameters(str(conf), env="base")["data"]
    opts = split_options(base)
    assert (opts["train_per_class"], opts["val_per_class"]) == (20, 30) == tuple(FEW_LABEL_CAPS.values())
    local = load_parameters(str(conf), env="local")["data"]
    assert local["source"] == {"kind": "image_folder", "path": "data/01_raw/my_images"}
    assert local["split"]["train_per_class"] == "auto"
    opts = split_options(local)
    assert (opts["train_per_class"], opts["val_per_class"]) == (None, None)
    # with a folder of 6 classes x 60 images (the case): 216 / 72 / 72, nothing moved
    idx = make_index([60] * 6)
    df = assign_splits(idx, **opts)
    assert df.groupby("split").size().to_dict() == {"test": 72, "train": 216, "val": 72}
