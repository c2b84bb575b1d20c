"""Real-format loaders (fitzpatrick17k, isic2019, csv) on small fixtures written by the tests."""

from __future__ import annotations

import csv
import os
import pickle
import random
import warnings

import numpy as np
import pytest
from PIL import Image

from fqopt.data import SPLITS, load
from fqopt.data._files import DataWarning, FileDataset, read_image
from fqopt.errors import UserError

try:  # tests/ on sys.path (pytest's default rootdir-less import mode)
    from fixtures import (CONDITIONS, ISIC_CLASSES, make_fitzpatrick17k, make_image_csv,
                          make_isic2019, write_rows)
except ImportError:  # tests/ imported as a package
    from tests.fixtures import (CONDITIONS, ISIC_CLASSES, make_fitzpatrick17k, make_image_csv,
                                make_isic2019, write_rows)


def quiet_load(name, **options):
    """``load`` with the expected DataWarnings silenced (tests that check them use warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load(name, **options)


def user_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, "UserError messages are one line"
    return msg


def warned(record, text: str) -> str:
    """The one warning of ``record`` that contains ``text`` (a one-line message)."""
    hits = [str(w.message) for w in record if text in str(w.message)]
    assert len(hits) == 1, [str(w.message) for w in record]
    assert "\n" not in hits[0]
    return hits[0]


def assert_partition(ds):
    """Splits are disjoint and cover every sample exactly once."""
    allidx = np.concatenate([ds.splits[s] for s in SPLITS])
    assert sorted(allidx.tolist()) == list(range(len(ds)))


def rows_csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


# =============================================================================== Fitzpatrick
@pytest.fixture(scope="module")
def fitz(tmp_path_factory):
    return make_fitzpatrick17k(tmp_path_factory.mktemp("fitz"), n=72, seed=1)


def test_fitzpatrick_both_schemas_load_the_same_rows(tmp_path):
    cur = make_fitzpatrick17k(tmp_path / "cur", schema="current", seed=3)
    old = make_fitzpatrick17k(tmp_path / "old", schema="older", seed=3)
    # the older file really has the unnamed index column and no fitzpatrick_scale
    assert rows_csv(old.csv)[0][:3] == ["", "md5hash", "fitzpatrick"]
    assert rows_csv(old.csv)[1][0] == "0"
    a = quiet_load("fitzpatrick17k", root=cur.root, image_size=16)
    b = quiet_load("fitzpatrick17k", root=old.root, image_size=16)
    assert (a.info["schema"], b.info["schema"]) == ("current", "older")
    assert b.info["skin_type_column"] == "fitzpatrick"
    expected = cur.kept_rows()
    assert a.ids == b.ids == [r["md5hash"] for r in expected]
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.groups, b.groups)
    # independent expectation: classes sorted alphabetically, group = type - 1
    names = sorted({c[2] for c in CONDITIONS})
    assert a.class_names == names
    assert a.labels.tolist() == [names.index(r["three_partition_label"]) for r in expected]
    assert a.groups.tolist() == [r["skin"] - 1 for r in expected]
    assert a.group_names == ["I", "II", "III", "IV", "V", "VI"]
    for s in SPLITS:
        np.testing.assert_array_equal(a.splits[s], b.splits[s])
    assert_partition(a)


def test_fitzpatrick_unknown_skin_type_dropped_counted_and_warned(fitz):
    with pytest.warns(DataWarning) as rec:
        ds = load("fitzpatrick17k", root=fitz.root, image_size=16)
    msg = warned(rec, "left out 4 rows of unknown skin type")
    assert "\n" not in msg and fitz.unknown[0] in msg and "keep_unknown" in msg
    d = ds.info["dropped"]["unknown_skin_type"]
    assert d["count"] == 4 and d["examples"] == fitz.unknown
    assert not set(fitz.unknown) & set(ds.ids)
    assert ds.info["rows"] == {"csv": 72, "kept": 72 - 4 - 3, "left_out": 7}

    kept = quiet_load("fitzpatrick17k", root=fitz.root, image_size=16, keep_unknown=True)
    assert kept.group_names[-1] == "unknown"
    unknown_group = [kept.ids[i] for i in np.flatnonzero(kept.groups == 6)]
    assert unknown_group == fitz.unknown  # disjoint from the missing images by construction
    assert len(kept) == 72 - 3


def test_missing_images_counted_named_and_warned(tmp_path):
    f = make_fitzpatrick17k(tmp_path, n=40, n_unknown=0, n_missing=7, seed=5)
    with pytest.warns(DataWarning) as rec:
        ds = load("fitzpatrick17k", root=tmp_path, image_size=16)
    msg = warned(rec, "left out 7 rows whose image file is missing")
    assert str(f.images) in msg and "(and 2 more)" in msg
    assert all(h in msg for h in f.missing[:5]) and f.missing[5] not in msg
    assert ds.info["missing_images"] == {"count": 7, "examples": f.missing[:5],
                                         "folder": str(f.images)}
    assert len(ds) == 33 and not set(f.missing) & set(ds.ids)


@pytest.mark.parametrize("grouping,names,of_type", [
    ("type6", ["I", "II", "III", "IV", "V", "VI"], [0, 1, 2, 3, 4, 5]),
    ("light_dark", ["light(I-III)", "dark(IV-VI)"], [0, 0, 0, 1, 1, 1]),
    ("pairs", ["I-II", "III-IV", "V-VI"], [0, 0, 1, 1, 2, 2]),
])
def test_fitzpatrick_groupings(fitz, grouping, names, of_type):
    ds = quiet_load("fitzpatrick17k", root=fitz.root, image_size=16, grouping=grouping)
    assert ds.group_names == names
    skin = {r["md5hash"]: r["skin"] for r in fitz.rows}
    assert ds.groups.tolist() == [of_type[skin[i] - 1] for i in ds.ids]
    # every split holds each label x group stratum in proportion (+-1 per stratum)
    for s, share in zip(SPLITS, (0.6, 0.2, 0.2)):
        assert np.all(np.abs(ds.counts(ds.splits[s]) - share * ds.counts()) < 1 + 1e-9)


@pytest.mark.parametrize("target", ["label", "nine_partition_label", "three_partition_label"])
def test_fitzpatrick_targets_sorted_alphabetically(fitz, target):
    ds = quiet_load("fitzpatrick17k", root=fitz.root, image_size=16, target=target)
    assert ds.class_names == sorted({r[target] for r in fitz.rows})
    by_id = {r["md5hash"]: r[target] for r in fitz.rows}
    assert [ds.class_names[k] for k in ds.labels] == [by_id[i] for i in ds.ids]
    assert ds.info["target"] == target and ds.info["empty_classes"] == []


def test_fitzpatrick_paths_root_data_folder_and_explicit_csv(tmp_path):
    f = make_fitzpatrick17k(tmp_path / "r", images_dir="data", n=30, seed=2)
    ds = quiet_load("fitzpatrick17k", root=f.root, image_size=16)
    assert ds.info["images"] == str(f.images) and len(ds) == len(f.kept_rows())
    moved = tmp_path / "elsewhere.csv"
    moved.write_bytes(f.csv.read_bytes())
    ds2 = quiet_load("fitzpatrick17k", csv=moved, images=f.images, image_size=16)
    assert ds2.ids == ds.ids
    x, y, g = ds2.get_batch(ds2.splits["test"][:4])
    assert x.shape == (4, 3, 16, 16) and x.dtype.is_floating_point
    assert y.tolist() == ds2.labels[ds2.splits["test"][:4]].tolist()


def test_fitzpatrick_repeated_md5hash_stays_in_one_split(tmp_path):
    f = make_fitzpatrick17k(tmp_path, n=40, n_unknown=0, n_missing=0, seed=4)
    rows = rows_csv(f.csv)
    for k in range(1, 9):  # rows 2..9 repeat the hash (and skin type) of row 1
        rows[k + 1][0], rows[k + 1][1], rows[k + 1][5] = rows[1][0], rows[1][1], rows[1][5]
    write_rows(f.csv, rows[0], rows[1:])
    ds = quiet_load("fitzpatrick17k", root=tmp_path, image_size=16)
    assert ds.info["repeated_md5hash"] == 8
    holder = [s for s in SPLITS if rows[1][0] in {ds.ids[i] for i in ds.splits[s]}]
    assert len(holder) == 1


# =============================================================================== images
def test_read_image_crops_centre_square_then_resizes(tmp_path):
    wide = np.zeros((24, 48, 3), np.uint8)
    wide[:, :12] = (255, 0, 0)
    wide[:, 12:36] = (0, 0, 255)  # the centre 24x24 square
    wide[:, 36:] = (255, 0, 0)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    out = read_image(tmp_path / "wide.png", 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.all(out == (0, 0, 255))  # no red bleeds in from outside the crop
    tall = np.transpose(wide, (1, 0, 2)).copy()
    Image.fromarray(tall).save(tmp_path / "tall.png")
    assert np.all(read_image(tmp_path / "tall.png", 10) == (0, 0, 255))
    # grey and RGBA files come back as 3-channel RGB
    Image.fromarray(np.full((8, 8), 77, np.uint8), "L").save(tmp_path / "grey.png")
    assert np.all(read_image(tmp_path / "grey.png", 8) == 77)
    Image.fromarray(np.full((8, 8, 4), 200, np.uint8), "RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png", 4).shape == (4, 4, 3)
    # a big JPEG (draft-mode decoding) keeps the colour of a uniform image
    Image.fromarray(np.full((300, 200, 3), (10, 200, 30), np.uint8)).save(tmp_path / "b.jpg")
    big = read_image(tmp_path / "b.jpg", 32).astype(int)
    assert big.shape == (32, 32, 3) and np.abs(big - (10, 200, 30)).max() <= 6
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image .*bad.jpg"):
        read_image(tmp_path / "bad.jpg", 8)


def test_cache_serves_images_after_files_are_gone(tmp_path):
    f = make_image_csv(tmp_path, n=12, n_missing=0)
    cached = load("csv", csv=f.csv, image_size=12, cache=True)
    uncached = load("csv", csv=f.csv, image_size=12, cache=False)
    small = load("csv", csv=f.csv, image_size=12, cache=3 * 12 * 12 * 3)
    assert (cached.cache_capacity, uncached.cache_capacity, small.cache_capacity) == (12, 0, 3)
    idx = np.arange(len(cached))
    first = cached.load_images(idx)
    np.testing.assert_array_equal(first, uncached.load_images(idx))
    small.load_images(idx)
    for r in f.rows:
        (tmp_path / r["path"]).unlink()
    np.testing.assert_array_equal(cached.load_images(idx[::-1]), first[::-1])
    np.testing.assert_array_equal(small.load_images(idx[:3]), first[:3])  # the first 3 stayed
    with pytest.raises(UserError, match=r"image file .*img_0000\.jpg does not exist"):
        uncached.load_images([0])


def test_thread_pool_matches_serial_decoding_and_pickles(tmp_path):
    f = make_image_csv(tmp_path, n=24, n_missing=0)
    threaded = load("csv", csv=f.csv, image_size=14, cache=False, workers=4)
    serial = load("csv", csv=f.csv, image_size=14, cache=False, workers=0)
    idx = np.random.default_rng(0).permutation(24)
    np.testing.assert_array_equal(threaded.load_images(idx), serial.load_images(idx))
    clone = pickle.loads(pickle.dumps(threaded))  # the pool is not pickled; a new one is made
    np.testing.assert_array_equal(clone.load_images(idx[:5]), serial.load_images(idx[:5]))
    threaded.close()
    assert isinstance(clone, FileDataset) and clone.ids == threaded.ids


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_dataloader_worker_decodes_with_its_own_threads(tmp_path):
    import torch

    f = make_image_csv(tmp_path, n=12, n_missing=0)
    ds = load("csv", csv=f.csv, image_size=8, cache=False, workers=2)
    want = ds.load_images(np.arange(12))  # the parent's pool now exists

    class Quads(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.from_numpy(ds.load_images(np.arange(4 * i, 4 * i + 4)))

    # with the parent's (thread-less) pool the worker would block until the timeout
    loader = torch.utils.data.DataLoader(Quads(), batch_size=None, num_workers=1,
                                         multiprocessing_context="fork", timeout=15)
    got = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(got, want)
    ds.close()


# =============================================================================== ISIC 2019
@pytest.fixture(scope="module")
def isic(tmp_path_factory):
    return make_isic2019(tmp_path_factory.mktemp("isic"), n=90, seed=7)


def lesion_sets(ds, f):
    lesion = {r["image"]: r["lesion_id"] for r in f.rows}
    return {s: {lesion[ds.ids[i]] for i in ds.splits[s]} - {""} for s in SPLITS}


def test_isic_join_sex_groups_and_downsampled_ids(isic):
    with pytest.warns(DataWarning) as rec:
        ds = load("isic2019", root=isic.root, image_size=16)
    no_sex = [r["image"] for r in isic.rows if not r["sex"]]
    assert ", ".join(no_sex) in warned(rec, "left out 4 rows with an empty sex")
    expected = [r for r in isic.rows if r["sex"] and r["image"] not in isic.missing]
    assert ds.ids == [r["image"] for r in expected]  # ground-truth order, metadata shuffled
    assert ds.class_names == list(ISIC_CLASSES)
    assert ds.labels.tolist() == [r["label"] for r in expected]
    assert ds.group_names == ["female", "male"]
    assert ds.groups.tolist() == [("female", "male").index(r["sex"]) for r in expected]
    d = ds.info["dropped"]["unknown_sex"]
    assert d["count"] == 4
    assert d["examples"] == [r["image"] for r in isic.rows if not r["sex"]]
    assert ds.info["missing_images"]["count"] == 3
    down = [i for i, name in enumerate(ds.ids) if name.endswith("_downsampled")]
    assert down and ds.paths[down[0]].endswith(f"{ds.ids[down[0]]}.jpg")
    assert ds.load_images(down).shape == (len(down), 16, 16, 3)


@pytest.mark.parametrize("rule,names,sixty", [("le", ["<=60", ">60"], 0),
                                              ("gt", ["<=60", ">60"], 0),
                                              ("lt", ["<60", ">=60"], 1),
                                              ("ge", ["<60", ">=60"], 1)])
def test_isic_age_groups_follow_the_recorded_rule(isic, rule, names, sixty):
    with pytest.warns(DataWarning) as rec:
        ds = load("isic2019", root=isic.root, image_size=16, attribute="age", age_rule=rule)
    warned(rec, "left out 3 rows with an empty age_approx")
    assert ds.group_names == names and ds.attribute == "age"
    age = {r["image"]: r["age"] for r in isic.rows}
    assert all(age[i] is not None for i in ds.ids)
    assert ds.info["dropped"]["unknown_age"]["count"] == 3
    young = [(age[i] <= 60) if rule in ("le", "gt") else (age[i] < 60) for i in ds.ids]
    assert ds.groups.tolist() == [0 if y else 1 for y in young]
    at60 = [g for i, g in zip(ds.ids, ds.groups) if age[i] == 60.0]
    assert at60 and set(at60) == {sixty}
    assert ds.info["grouping"]["threshold"] == 60 and ds.info["grouping"]["rule"] == rule


def test_isic_lesion_split_has_no_leakage(isic):
    ds = quiet_load("isic2019", root=isic.root, image_size=16)
    assert_partition(ds)
    sets = lesion_sets(ds, isic)
    for a, b in [("train", "search"), ("train", "test"), ("search", "test")]:
        assert not sets[a] & sets[b], f"lesion in {a} and {b}"
    assert ds.info["split"]["by"] == "lesion_id"
    assert ds.info["split"]["lesions_in_several_splits"] == 0
    # a different seed gives a different split (the seed is used)
    other = quiet_load("isic2019", root=isic.root, image_size=16, seed=7)
    assert any(not np.array_equal(ds.splits[s], other.splits[s]) for s in SPLITS)


def test_isic_image_split_is_fairquants(isic):
    ds = quiet_load("isic2019", root=isic.root, image_size=16, split="image")
    # independent recomputation: shuffle every row with an image, cut at int(0.6n), int(0.8n)
    present = [r["image"] for r in isic.rows if r["image"] not in isic.missing]
    order = list(range(len(present)))
    random.Random(42).shuffle(order)
    n = len(present)
    blocks = {"train": order[:int(0.6 * n)], "test": order[int(0.6 * n):int(0.8 * n)],
              "search": order[int(0.8 * n):]}
    for s in SPLITS:
        want = {present[k] for k in blocks[s]} & set(ds.ids)  # empty-sex rows are left out
        assert {ds.ids[i] for i in ds.splits[s]} == want
    assert_partition(ds)
    sets = lesion_sets(ds, isic)
    leaked = len((sets["train"] & sets["test"]) | (sets["train"] & sets["search"])
                 | (sets["search"] & sets["test"]))
    assert ds.info["split"]["lesions_in_several_splits"] == leaked > 0


def test_isic_unk_rows_and_rows_without_metadata_are_counted(tmp_path):
    f = make_isic2019(tmp_path, n=40, n_missing=0, n_empty_sex=0, seed=2)
    gt = rows_csv(f.ground_truth)
    gt[1][1:] = ["0.0"] * 8 + ["1.0"]  # first image: UNK
    write_rows(f.ground_truth, gt[0], gt[1:])
    meta = rows_csv(f.metadata)
    gone = f.rows[1]["image"]
    write_rows(f.metadata, meta[0], [m for m in meta[1:] if m[0] != gone])
    with pytest.warns(DataWarning) as rec:
        ds = load("isic2019", root=tmp_path, image_size=16)
    text = " ".join(str(w.message) for w in rec)
    assert "whose diagnosis is UNK" in text and "without a metadata row" in text
    assert ds.info["dropped"]["unknown_diagnosis"]["examples"] == [f.rows[0]["image"]]
    assert ds.info["dropped"]["no_metadata"]["examples"] == [gone]
    assert len(ds) == 38


# =============================================================================== csv
def test_csv_loader_string_labels_sorted_and_missing_counted(tmp_path):
    f = make_image_csv(tmp_path, n=30, labels=("dog", "cat", "bird"), groups=("b", "a"),
                       n_missing=2)
    with pytest.warns(DataWarning) as rec:
        ds = load("csv", csv=f.csv, image_size=12, attribute="site")
    assert f.missing[0] in warned(rec, "left out 2 rows whose image file is missing")
    assert ds.class_names == ["bird", "cat", "dog"] and ds.group_names == ["a", "b"]
    expected = [r for r in f.rows if r["path"] not in f.missing]
    assert ds.ids == [r["path"] for r in expected]
    assert [ds.class_names[k] for k in ds.labels] == [r["label"] for r in expected]
    assert [ds.group_names[k] for k in ds.groups] == [r["group"] for r in expected]
    assert ds.info["missing_images"]["examples"] == f.missing and ds.attribute == "site"
    assert ds.load_images([0]).shape == (1, 12, 12, 3)
    assert_partition(ds)


def test_csv_loader_integer_labels_sort_numerically_and_split_column(tmp_path):
    f = make_image_csv(tmp_path, n=18, labels=(10, 2, 1), groups=(0, 1), n_missing=0)
    ds = load("csv", csv=f.csv, image_size=8)
    assert ds.class_names == ["1", "2", "10"] and ds.group_names == ["0", "1"]
    rows = rows_csv(f.csv)
    names = ["train", "search", "test"]
    write_rows(f.csv, rows[0] + ["fold"], [r + [names[i % 3]] for i, r in enumerate(rows[1:])])
    ds = load("csv", csv=f.csv, image_size=8, split_column="fold")
    assert ds.splits["search"].tolist() == list(range(1, 18, 3))
    rows = rows_csv(f.csv)
    rows[3][3] = "val"
    write_rows(f.csv, rows[0], rows[1:])
    with pytest.raises(UserError) as e:
        load("csv", csv=f.csv, image_size=8, split_column="fold")
    assert "'fold' line 4: 'val' is not one of train, search, test" in user_error(e)


# =============================================================================== errors
def test_missing_csv_file_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(UserError) as e:
        load("fitzpatrick17k", root=tmp_path)
    assert f"{tmp_path / 'fitzpatrick17k.csv'} does not exist" in user_error(e)
    with pytest.raises(UserError) as e:
        load("isic2019", root=tmp_path)
    assert "ISIC_2019_Training_GroundTruth.csv does not exist" in user_error(e)
    with pytest.raises(UserError, match="needs csv="):
        load("csv")


def test_missing_column_names_column_file_and_expected(tmp_path):
    f = make_fitzpatrick17k(tmp_path / "a", n=12, seed=0)
    rows = rows_csv(f.csv)
    write_rows(f.csv, ["md5"] + rows[0][1:], rows[1:])
    with pytest.raises(UserError) as e:
        load("fitzpatrick17k", root=f.root)
    msg = user_error(e)
    assert "'md5hash'" in msg and str(f.csv) in msg and "expected columns md5hash" in msg

    write_rows(f.csv, ["md5hash", "skin"] + rows[0][2:], rows[1:])
    with pytest.raises(UserError) as e:
        load("fitzpatrick17k", root=f.root)
    assert "no column 'fitzpatrick_scale'" in user_error(e) and "'fitzpatrick'" in str(e.value)

    write_rows(f.csv, rows[0][:5] + rows[0][6:], [r[:5] + r[6:] for r in rows[1:]])
    with pytest.raises(UserError) as e:
        load("fitzpatrick17k", root=f.root)
    assert "no column 'three_partition_label' (the target)" in user_error(e)

    i = make_isic2019(tmp_path / "isic", n=10, seed=0)
    meta = rows_csv(i.metadata)
    write_rows(i.metadata, meta[0][:4], [m[:4] for m in meta[1:]])  # drop "sex"
    with pytest.raises(UserError) as e:
        load("isic2019", root=i.root)
    msg = user_error(e)
    assert "no column 'sex'" in msg and str(i.metadata) in msg and "lesion_id" in msg
    quiet_load("isic2019", root=i.root, attribute="age", image_size=8)  # sex not needed

    c = make_image_csv(tmp_path / "c", n=6, n_missing=0)
    with pytest.raises(UserError) as e:
        load("csv", csv=c.csv, label_column="diagnosis")
    assert "no column 'diagnosis'" in user_error(e) and str(c.csv) in str(e.value)


def test_wrong_value_types_name_column_and_line(tmp_path):
    f = make_fitzpatrick17k(tmp_path / "f", n=12, seed=0)
    rows = rows_csv(f.csv)
    rows[3][1] = "V"
    write_rows(f.csv, rows[0], rows[1:])
    with pytest.raises(UserError) as e:
        load("fitzpatrick17k", root=f.root)
    assert "column 'fitzpatrick_scale' line 4: 'V' is not a Fitzpatrick type" in user_error(e)
    rows[3][1] = "7"
    write_rows(f.csv, rows[0], rows[1:])
    with pytest.raises(UserError, match="line 4: '7' is not a Fitzpatrick type"):
        load("fitzpatrick17k", root=f.root)

    i = make_isic2019(tmp_path / "i", n=10, seed=0)
    gt = rows_csv(i.ground_truth)
    gt[2][3] = "yes"
    write_rows(i.ground_truth, gt[0], gt[1:])
    with pytest.raises(UserError) as e:
        load("isic2019", root=i.root)
    assert "column 'BCC' line 3: 'yes' is not 0.0 or 1.0" in user_error(e)
    gt[2][1:] = ["1.0", "1.0"] + ["0.0"] * 7  # two diagnoses
    write_rows(i.ground_truth, gt[0], gt[1:])
    with pytest.raises(UserError) as e:
        load("isic2019", root=i.root)
    assert f"line 3 (image {i.rows[1]['image']}): expected exactly one 1.0" in user_error(e)
    gt[2][1:] = ["0.0"] * 9
    write_rows(i.ground_truth, gt[0], gt[1:])
    with pytest.raises(UserError, match="found 0"):
        load("isic2019", root=i.root)

    j = make_isic2019(tmp_path / "j", n=10, seed=0, shuffle_metadata=False)
    meta = rows_csv(j.metadata)
    meta[1][1] = "old"
    meta[2][4] = "M"
    write_rows(j.metadata, meta[0], meta[1:])
    with pytest.raises(UserError, match="'age_approx' line 2: 'old' is not an age"):
        load("isic2019", root=j.root, attribute="age")
    with pytest.raises(UserError, match="'sex' line 3: 'M' is not female, male or empty"):
        load("isic2019", root=j.root)


@pytest.mark.parametrize("name,option,value,valid", [
    ("fitzpatrick17k", "target", "diagnosis", "three_partition_label, nine_partition_label"),
    ("fitzpatrick17k", "grouping", "binary", "type6, light_dark, pairs"),
    ("isic2019", "attribute", "site", "sex, age"),
    ("isic2019", "split", "patient", "lesion, image"),
    ("isic2019", "age_rule", "eq", "le, lt, gt, ge"),
])
def test_unknown_options_list_the_valid_ones(tmp_path, name, option, value, valid):
    with pytest.raises(UserError) as e:
        load(name, root=tmp_path, **{option: value})
    assert f"unknown {option} {value!r}; valid: {valid}" in user_error(e)


def test_missing_image_folder_and_nothing_left(tmp_path):
    f = make_fitzpatrick17k(tmp_path, n=12, write_images=False)
    with pytest.raises(UserError) as e:
        load("fitzpatrick17k", root=tmp_path, images=tmp_path / "pics")
    assert f"image folder {tmp_path / 'pics'} does not exist" in user_error(e)
    with pytest.raises(UserError) as e:  # the folder exists but is empty
        quiet_load("fitzpatrick17k", root=tmp_path)
    msg = user_error(e)
    assert "no rows left after filtering 12 rows" in msg and "missing_image: 12" in msg
    assert "unknown_skin_type: 4" in msg and f.images.is_dir()
    with pytest.raises(UserError, match="split fractions must be three"):
        load("fitzpatrick17k", root=tmp_path, fractions=(0.5, 0.5))
    with pytest.raises(UserError, match="image_size must be a positive"):
        load("fitzpatrick17k", root=tmp_path, image_size=0)
