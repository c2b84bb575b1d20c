"""synthderm: the embedded, generated dermatology-like dataset (docs/design.md §5).

Each image is a patch of skin at one of six Fitzpatrick-like tones with one lesion of one of four
classes. Classes differ in shape (round / irregular / oval), border (sharp, ragged, rolled),
colour (brown, variegated dark, pink with a pearly rim, tan) and texture (flat, blotchy, rim,
warty). Darker tones lower the lesion's contrast against the skin, so the same lesion is harder
to read on darker skin: the FP model's darkest group is its worst, and coarse quantization, which
erodes small margins first, widens the gap. Tones follow Fitzpatrick17k's prevalence
(about 18/30/21/17/10/4 % for types I-VI).

Everything is drawn from one ``numpy`` generator seeded by ``seed``: the same ``(n, image_size,
seed)`` always gives the same images, labels, groups and splits. Images are rendered on a
continuous canvas, so any resolution works.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fqopt.data._base import DEFAULT_FRACTIONS, FairDataset, stratified_split
from fqopt.errors import UserError

CLASS_NAMES = ("nevus", "melanoma", "basal_cell_carcinoma", "seborrheic_keratosis")
GROUP_NAMES = ("I", "II", "III", "IV", "V", "VI")
# Fitzpatrick17k skin-type counts (I..VI), docs/reference.md
TONE_COUNTS = np.array([2947, 4808, 3308, 2781, 1533, 635], dtype=float)
TONE_PREVALENCE = TONE_COUNTS / TONE_COUNTS.sum()
CLASS_PREVALENCE = np.array([0.35, 0.25, 0.2, 0.2])
# sRGB skin tones, light to dark
SKIN_RGB = np.array([[236, 206, 186], [222, 182, 150], [196, 150, 112],
                     [160, 112, 76], [114, 78, 52], [74, 50, 36]], dtype=float) / 255.0
# how much of a lesion's colour difference survives on each tone (darker: less contrast).
# Calibrated with benchmarks/phenomenon.py --fresh 30000 on the default trained model: I-III get
# wide margins (FP ~0.99), IV-VI fall off (~0.93 / 0.85 / 0.77). VI stays the worst group but
# keeps many correctly read, small-margin lesions, so uniform 3- and 4-bit quantization costs it
# the most points. With a steeper dark end (VI 0.27) most VI melanomas were already misread and
# coarse quantization fell back to nevus, VI's majority class: VI lost no more than light tones.
TONE_CONTRAST = np.array([1.1, 1.0, 0.85, 0.62, 0.5, 0.42])
CONTRAST_JITTER = (0.85, 1.1)  # per-image factor on the tone's contrast
STRENGTH_RANGE = (0.25, 1.0)  # how marked a class's pattern is (uniform)
SENSOR_NOISE = 0.05  # std of per-pixel Gaussian noise

DEFAULT_SAMPLES = 8000
DEFAULT_IMAGE_SIZE = 40
_CHUNK = 512


class SynthDerm(FairDataset):
    """In-memory synthderm images (uint8 ``[n, H, W, 3]``)."""

    def __init__(self, images: np.ndarray, **kw):
        super().__init__(**kw)
        self.images = images

    def load_images(self, indices):
        return self.images[np.asarray(indices, dtype=np.int64)]


def _smooth_noise(rng, b, cells, size):
    """``[b, size, size]`` smooth random field in about [-1, 1] (bicubic upsampled grid)."""
    grid = torch.from_numpy(rng.standard_normal((b, 1, cells, cells)).astype(np.float32))
    up = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False)
    return up[:, 0].numpy()


def _render(rng, labels, tones, size):
    """Render one chunk. ``labels``/``tones`` are ``[b]`` ints; returns float ``[b, H, W, 3]``."""
    b = len(labels)
    lin = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    xx = xx[None]
    yy = yy[None]

    is_nev, is_mel = labels == 0, labels == 1
    is_bcc, is_sk = labels == 2, labels == 3

    # geometry: centre, size, aspect, rotation
    cx = rng.normal(0, 0.12, b)[:, None, None]
    cy = rng.normal(0, 0.12, b)[:, None, None]
    r0 = np.select([is_nev, is_mel, is_bcc, is_sk],
                   [rng.uniform(0.28, 0.46, b), rng.uniform(0.36, 0.58, b),
                    rng.uniform(0.30, 0.50, b), rng.uniform(0.32, 0.52, b)])[:, None, None]
    aspect = np.select([is_sk], [rng.uniform(1.25, 1.6, b)],
                       rng.uniform(1.0, 1.2, b))[:, None, None]
    theta = rng.uniform(0, np.pi, b)[:, None, None]
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    rho = np.sqrt((u / aspect) ** 2 + v ** 2)
    phi = np.arctan2(v, u)

    # border: harmonics of the radius; melanoma ragged and asymmetric, others near-regular
    amp = np.select([is_mel, is_bcc, is_sk],
                    [rng.uniform(0.03, 0.12, b), rng.uniform(0.0, 0.05, b),
                     rng.uniform(0.0, 0.05, b)], rng.uniform(0.0, 0.05, b))[:, None, None]
    radius = np.ones_like(phi) * r0
    for k in range(2, 8):
        a = rng.uniform(0.3, 1.0, b)[:, None, None] * amp / np.sqrt(k - 1)
        p = rng.uniform(0, 2 * np.pi, b)[:, None, None]
        radius = radius * (1 + a * np.cos(k * phi + p))
    soft = np.select([is_mel, is_bcc], [0.05, 0.03], 0.018)[:, None, None]
    mask = 1.0 / (1.0 + np.exp(-(radius - rho) / soft))
    rel = np.clip(rho / np.maximum(radius, 1e-3), 0, 2)  # 0 centre .. 1 border

    # lesion colour (target RGB before blending) and texture per class
    base = np.zeros((b, 3))
    base[is_nev] = [0.42, 0.27, 0.17]
    base[is_mel] = [0.35, 0.21, 0.14]
    base[is_bcc] = [0.76, 0.50, 0.48]
    base[is_sk] = [0.56, 0.42, 0.29]
    base = base + rng.normal(0, 0.06, (b, 3))
    strength = rng.uniform(*STRENGTH_RANGE, b)[:, None, None, None]
    col = np.broadcast_to(base[:, None, None, :], (b, size, size, 3)).copy()

    # melanoma: variegated blotches of near-black and blue-grey
    blot = _smooth_noise(rng, b, 5, size)
    dark = np.clip(blot, 0, None)[..., None] * np.array([-0.22, -0.14, -0.08])
    grey = np.clip(-blot, 0, None)[..., None] * np.array([-0.02, 0.06, 0.14])
    col += np.where(is_mel[:, None, None, None], strength * (dark + grey), 0.0)
    # basal cell: pearly bright rim and a darker ulcerated centre
    rim = np.exp(-((rel - 0.85) / 0.12) ** 2)[..., None] * np.array([0.12, 0.16, 0.16])
    centre = np.exp(-(rel / 0.35) ** 2)[..., None] * np.array([-0.25, -0.28, -0.25])
    col += np.where(is_bcc[:, None, None, None], strength * (rim + centre), 0.0)
    # seborrheic keratosis: warty, high-frequency texture
    wart = _smooth_noise(rng, b, max(6, size // 3), size)[..., None] * 0.11
    col += np.where(is_sk[:, None, None, None], strength * wart, 0.0)
    # nevus: faintly darker centre, otherwise uniform
    col += np.where(is_nev[:, None, None, None],
                    np.exp(-(rel / 0.6) ** 2)[..., None] * -0.04, 0.0)

    # skin: tone with lighting and mottling; lesion blended at the tone's contrast
    skin = SKIN_RGB[tones] + rng.normal(0, 0.02, (b, 3))
    light = 1 + 0.10 * _smooth_noise(rng, b, 3, size)[..., None]
    mottle = 0.02 * _smooth_noise(rng, b, 8, size)[..., None]
    skin_img = skin[:, None, None, :] * light + mottle
    jitter = rng.uniform(*CONTRAST_JITTER, b)
    contrast = (TONE_CONTRAST[tones] * jitter)[:, None, None, None]
    lesion_img = skin_img + contrast * (col * light - skin_img)
    img = skin_img * (1 - mask[..., None]) + lesion_img * mask[..., None]

    # a few hairs (distractors), then sensor noise
    for _ in range(2):
        has = rng.random(b) < 0.35
        ang = rng.uniform(0, np.pi, b)[:, None, None]
        off = rng.uniform(-0.8, 0.8, b)[:, None, None]
        d = np.abs(xx * np.sin(ang) - yy * np.cos(ang) - off)
        hair = np.exp(-(d / 0.02) ** 2) * has[:, None, None]
        img = img * (1 - 0.6 * hair[..., None]) + 0.6 * hair[..., None] * 0.08
    img = img + rng.normal(0, SENSOR_NOISE, img.shape)
    return np.clip(img, 0, 1)


def generate(n: int = DEFAULT_SAMPLES, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0,
             stream: int = 0):
    """``(images uint8 [n, H, W, 3], labels [n], groups [n])``, deterministic from ``seed``;
    ``stream`` > 0 draws an independent sample from the same distribution (held-out images)."""
    if n < 12:
        raise UserError(f"synthderm needs at least 12 samples, got n={n}")
    if not 8 <= image_size <= 512:
        raise UserError(f"synthderm image_size must be in 8-512 px, got {image_size}")
    rng = np.random.default_rng(seed if stream == 0 else [seed, stream])
    labels = rng.choice(len(CLASS_NAMES), size=n, p=CLASS_PREVALENCE)
    groups = rng.choice(len(GROUP_NAMES), size=n, p=TONE_PREVALENCE)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(n, start + _CHUNK))
        img = _render(rng, labels[sl], groups[sl], image_size)
        images[sl] = np.round(img * 255).astype(np.uint8)
    return images, labels.astype(np.int64), groups.astype(np.int64)


def _whole(name: str, value) -> int:
    """An integer option (the CLI passes ``--data-option`` values as text)."""
    try:
        out = int(value)
    except (TypeError, ValueError):
        out = None
    if out is None or (isinstance(value, float) and value != out):
        raise UserError(f"synthderm option {name} must be a whole number, got {value!r}")
    return out


def load_synthderm(n: int = DEFAULT_SAMPLES, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0,
                   fractions=DEFAULT_FRACTIONS, split_seed: int | None = None,
                   grouping: str = "type6", holdout: int | None = None) -> SynthDerm:
    """Generate synthderm. ``grouping``: ``type6`` (I..VI) or ``light_dark`` (I-III vs IV-VI).

    The ``n`` images are split train/search/test by ``fractions`` (stratified by label x
    group). ``holdout`` more images (default: ``n``), drawn independently from the same
    generator, are added half to the search and half to the test split, never to training:
    synthetic images cost nothing, and with Fitzpatrick17k's prevalence the darkest group would
    otherwise be judged on ~65 search and ~65 test images (one image = 1.5 points of accuracy)
    when the search picks plans and when its front is tested. The first ``n`` images and their
    splits do not depend on ``holdout``.
    """
    n, image_size, seed = (_whole("n", n), _whole("image_size", image_size),
                           _whole("seed", seed))
    holdout = n if holdout is None else _whole("holdout", holdout)
    if holdout < 0:
        raise UserError(f"synthderm holdout must be a non-negative number of images, got "
                        f"{holdout}")
    images, labels, groups = generate(n, image_size, seed)
    if holdout:
        h_images, h_labels, h_groups = generate(max(holdout, 12), image_size, seed, stream=1)
        images = np.concatenate([images, h_images[:holdout]])
        labels = np.concatenate([labels, h_labels[:holdout]])
        groups = np.concatenate([groups, h_groups[:holdout]])
    if grouping == "type6":
        group_names = list(GROUP_NAMES)
    elif grouping == "light_dark":
        groups = (groups >= 3).astype(np.int64)
        group_names = ["light(I-III)", "dark(IV-VI)"]
    else:
        raise UserError(f"unknown synthderm grouping {grouping!r}; expected type6 or light_dark")
    split_seed = seed if split_seed is None else int(split_seed)
    splits = stratified_split(labels[:n], groups[:n], fractions=fractions, seed=split_seed)
    if holdout:
        extra = n + np.arange(holdout)
        half = holdout // 2
        splits = dict(splits, search=np.concatenate([splits["search"], extra[:half]]),
                      test=np.concatenate([splits["test"], extra[half:]]))
    return SynthDerm(images, name="synthderm", class_names=CLASS_NAMES, group_names=group_names,
                     labels=labels, groups=groups, image_size=image_size, attribute="skin_type",
                     splits=splits,
                     info={"generator": "synthderm", "n": n, "holdout": holdout, "seed": seed,
                           "grouping": grouping, "split": {"rule": "stratified label x group",
                                                           "fractions": list(fractions),
                                                           "seed": split_seed}})
