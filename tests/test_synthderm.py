import numpy as np
import pytest

from fqopt import data
from fqopt.data._synthderm import TONE_PREVALENCE
from fqopt.errors import UserError


def test_deterministic_and_seed_dependent():
    a = data.load("synthderm", n=120, image_size=16, seed=3)
    b = data.load("synthderm", n=120, image_size=16, seed=3)
    c = data.load("synthderm", n=120, image_size=16, seed=4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.groups, b.groups)
    for k in a.splits:
        assert np.array_equal(a.splits[k], b.splits[k])
    assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize("size", [8, 24, 97])
def test_any_resolution(size):
    ds = data.load("synthderm", n=20, image_size=size)
    x, y, g = ds.get_batch(np.arange(5))
    assert x.shape == (5, 3, size, size) and x.dtype.is_floating_point
    assert y.shape == g.shape == (5,)


def test_prevalence_follows_fitzpatrick17k():
    ds = data.load("synthderm", n=6000, image_size=8)
    share = np.bincount(ds.groups, minlength=6) / len(ds)
    assert np.allclose(share, TONE_PREVALENCE, atol=0.015)
    assert ds.group_names == ["I", "II", "III", "IV", "V", "VI"]


def test_darker_tones_have_lower_lesion_contrast():
    ds = data.load("synthderm", n=1200, image_size=24)
    img = ds.images.astype(float).mean(axis=3)
    centre = img[:, 9:15, 9:15].mean(axis=(1, 2))
    border = np.concatenate([img[:, :3].reshape(len(img), -1), img[:, -3:].reshape(len(img), -1)],
                            axis=1).mean(axis=1)
    contrast = np.abs(border - centre)
    per_group = [contrast[ds.groups == g].mean() for g in range(6)]
    assert per_group[0] > per_group[2] > per_group[5]


def test_splits_partition_and_stratify():
    ds = data.load("synthderm", n=2000, image_size=8, holdout=0)
    idx = np.concatenate([ds.split(s) for s in data.SPLITS])
    assert sorted(idx.tolist()) == list(range(len(ds)))
    total = ds.counts()
    test = ds.counts(ds.split("test"))
    # every label x group stratum with enough samples is split about 60/20/20
    big = total >= 20
    assert np.all(np.abs(test[big] / total[big] - 0.2) < 0.06)


def test_holdout_images_go_to_search_and_test_only():
    """The default adds n held-out images (half to search, half to test); the first n images
    and the training split are those of holdout=0, and the held-out ones are new draws."""
    base = data.load("synthderm", n=300, image_size=8, holdout=0)
    ds = data.load("synthderm", n=300, image_size=8)
    assert len(ds) == 600 and ds.info["holdout"] == 300
    assert np.array_equal(ds.images[:300], base.images)
    assert np.array_equal(ds.split("train"), base.split("train"))
    idx = np.concatenate([ds.split(s) for s in data.SPLITS])
    assert sorted(idx.tolist()) == list(range(600))
    for name in ("search", "test"):
        new = ds.split(name)[ds.split(name) >= 300]
        assert len(new) == 150
        assert np.array_equal(ds.split(name)[ds.split(name) < 300], base.split(name))
    # independent draws, not copies, with every tone present
    assert not any(np.array_equal(ds.images[300 + i], base.images[i]) for i in range(20))
    assert len(np.unique(ds.groups[300:])) == 6
    with pytest.raises(UserError, match="holdout"):
        data.load("synthderm", n=300, image_size=8, holdout=-1)
    for key, value in (("holdout", "abc"), ("n", "1e3x"), ("seed", 1.5)):
        with pytest.raises(UserError, match=f"option {key} must be a whole number"):
            data.load("synthderm", image_size=8, **{key: value})


def test_light_dark_grouping_and_errors():
    ds = data.load("synthderm", n=200, image_size=8, grouping="light_dark")
    assert ds.group_names == ["light(I-III)", "dark(IV-VI)"]
    with pytest.raises(UserError, match="grouping"):
        data.load("synthderm", n=200, image_size=8, grouping="nope")
    with pytest.raises(UserError, match="unknown dataset 'nope'.*synthderm"):
        data.load("nope")
