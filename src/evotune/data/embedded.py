"""The embedded, offline transfer task.

* **Source**: printed characters (``0-9A-Z`` by default) rendered procedurally with the
  fonts that ship with matplotlib, varied in font, stroke width, size, aspect, shear,
  rotation, position, colours (both polarities), blur, low-resolution degradation and
  noise. It stands in for ImageNet when nothing can be downloaded.
* **Target**: scikit-learn's bundled handwritten digits (1,797 images of 8x8 pixels).

Printed -> handwritten is a real transfer problem: the target classes are a subset of
the source's, but the target's style (handwriting, 8x8 pixels, upsampled) differs.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .errors import DataSourceError
from .split import Split

DEFAULT_CLASSES = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

#: The embedded task's few-label caps: what ``data.split.train_per_class`` /
#: ``val_per_class: auto`` (conf/base) mean for ``data.source.kind: embedded_digits``. A
#: user's own source (image_folder, csv, torchvision) has no caps under ``auto``: it uses every
#: image. Sized from a measurement of the search's fitness noise (README "How the default task
#: was sized", scripts/fitness_noise.py): with 10 / 10 per class the noise of one search
#: evaluation was larger than the spread between genomes (reliability 0.22); with 20 / 30 it is 0.66.
FEW_LABEL_CAPS: dict[str, int] = {"train_per_class": 20, "val_per_class": 30}

# matplotlib fonts whose ASCII code points hold other glyphs (math delimiters and
# symbols) or one placeholder box for every character: glyph checks cannot tell.
_EXCLUDED_FONTS = {"cmex10", "cmsy10", "LastResortHE-Regular"}
_REF_FONT_SIZE = 96  # glyphs are rendered once at this size and cached
# stroke variants at the reference size: -1 thins (erosion), k > 0 thickens by k px
_STROKES = (-1, 0, 0, 1, 2, 3, 4)


def matplotlib_font_files() -> list[Path]:
    import matplotlib

    return sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("*.ttf"))


def _render_glyph(font: ImageFont.FreeTypeFont, text: str, stroke: int = 0) -> Image.Image:
    """The glyph as an 'L' mask (ink = 255), cropped to its ink; empty image when no ink."""
    pad = 8 + max(stroke, 0)
    left, top, right, bottom = font.getbbox(text, stroke_width=max(stroke, 0))
    w, h = max(right - left, 1) + 2 * pad, max(bottom - top, 1) + 2 * pad
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).text(
        (pad - left, pad - top), text, font=font, fill=255,
        stroke_width=max(stroke, 0), stroke_fill=255,
    )
    if stroke < 0:
        img = img.filter(ImageFilter.MinFilter(3))
    box = img.getbbox()
    return img.crop(box) if box else Image.new("L", (0, 0))


@functools.lru_cache(maxsize=8)
def usable_fonts(classes: tuple[str, ...]) -> tuple[Path, ...]:
    """The matplotlib fonts that draw every class: a non-empty glyph, not the font's
    'missing glyph' box, and a different glyph for each class."""
    out = []
    for path in matplotlib_font_files():
        if path.stem in _EXCLUDED_FONTS:
            continue
        try:
            font = ImageFont.truetype(str(path), 32)
        except OSError:
            continue
        missing = _render_glyph(font, "\ufffe")  # a non-character: renders as .notdef (or nothing)
        missing_bytes = missing.tobytes() if missing.size[0] else None
        seen, ok = set(), True
        for text in classes:
            g = _render_glyph(font, text)
            if g.size[0] == 0 or g.size[1] == 0:
                ok = False
                break
            key = (g.size, g.tobytes())
            if key in seen or (missing_bytes is not None and g.tobytes() == missing_bytes):
                ok = False
                break
            seen.add(key)
        if ok:
            out.append(path)
    return tuple(out)


class _GlyphCache:
    def __init__(self, fonts: tuple[Path, ...]) -> None:
        self.fonts = fonts
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}
        self._glyphs: dict[tuple[int, str, int], Image.Image] = {}

    def get(self, font_idx: int, text: str, stroke: int) -> Image.Image:
        key = (font_idx, text, stroke)
        g = self._glyphs.get(key)
        if g is None:
            font = self._fonts.get(font_idx)
            if font is None:
                font = self._fonts[font_idx] = ImageFont.truetype(str(self.fonts[font_idx]), _REF_FONT_SIZE)
            g = _render_glyph(font, text, stroke)
            if g.size[0] == 0:  # thinning erased a hairline font: fall back to the plain glyph
                g = _render_glyph(font, text, 0)
            self._glyphs[key] = g
        return g


def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and ink colours with a luma difference of at least 90 (both polarities)."""
    grey = rng.random() < 0.35
    while True:
        if grey:
            bg = np.full(3, rng.uniform(0, 255))
            fg = np.full(3, rng.uniform(0, 255))
        else:
            bg = rng.uniform(0, 255, 3)
            fg = rng.uniform(0, 255, 3)
        if abs(_luma(bg) - _luma(fg)) >= 90:
            return bg, fg


def _render_one(rng: np.random.Generator, glyphs: _GlyphCache, n_fonts: int, text: str, size: int) -> np.ndarray:
    canvas = 2 * size
    g = glyphs.get(int(rng.integers(n_fonts)), text, int(_STROKES[rng.integers(len(_STROKES))]))
    w0, h0 = g.size

    # geometry: glyph -> canvas affine map (scale, aspect, shear, rotation, translation)
    theta = math.radians(rng.uniform(-20.0, 20.0))
    shear = rng.uniform(-0.25, 0.25) if rng.random() < 0.5 else 0.0
    aspect = math.exp(rng.uniform(-0.25, 0.25))
    lin = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    lin = lin @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([aspect, 1.0])
    corners = np.array([[-w0, -h0], [w0, -h0], [w0, h0], [-w0, h0]], dtype=float) / 2.0
    ext = np.abs(corners @ lin.T).max(axis=0) * 2.0  # width, height of the transformed box at scale 1
    target_h = rng.uniform(0.45, 1.0) * canvas
    scale = min(target_h / ext[1], 0.97 * canvas / ext[0])
    a = lin * scale
    bw, bh = ext * scale
    free_x, free_y = max(canvas - bw, 0.0) / 2.0, max(canvas - bh, 0.0) / 2.0
    tx = canvas / 2.0 + rng.uniform(-1, 1) * (0.85 * free_x + 0.04 * canvas)
    ty = canvas / 2.0 + rng.uniform(-1, 1) * (0.85 * free_y + 0.04 * canvas)
    inv = np.linalg.inv(a)
    off = np.array([w0 / 2.0, h0 / 2.0]) - inv @ np.array([tx, ty])
    mask = g.transform(
        (canvas, canvas), Image.Transform.AFFINE,
        (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1]),
        resample=Image.Resampling.BILINEAR,
    )

    # photometry: blur, 2x box downsample, optional low-resolution degradation
    radius = rng.uniform(0.0, 1.5)
    if radius > 0.05:
        mask = mask.filter(ImageFilter.GaussianBlur(radius * 2.0))
    mask = mask.reduce(2)
    if rng.random() < 0.3:
        low = int(rng.integers(7, max(size // 2, 8) + 1))
        mask = mask.resize((low, low), Image.Resampling.BILINEAR).resize((size, size), Image.Resampling.BILINEAR)
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0

    bg, fg = _colours(rng)
    if rng.random() < 0.3:  # a soft background gradient
        bg2 = np.clip(bg + rng.normal(0.0, 35.0, 3), 0, 255)
        phi = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
        t = ((xx - 0.5) * math.cos(phi) + (yy - 0.5) * math.sin(phi) + 0.5).clip(0, 1)[..., None]
        background = bg * (1 - t) + bg2 * t
    else:
        background = bg[None, None, :]
    img = background * (1.0 - m) + fg[None, None, :] * m
    sigma = rng.uniform(0.0, 12.0)
    if sigma > 0.5:
        img = img + rng.normal(0.0, sigma, img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def render_printed_characters(
    n_per_class: int,
    image_size: int = 32,
    seed: int = 0,
    classes: str | list[str] = DEFAULT_CLASSES,
) -> Split:
    """The source task: ``n_per_class`` rendered images per character, as one :class:`Split`.

    ``classes`` is a string (one class per character) or a list of strings. Image ``i``
    shows class ``i % len(classes)``; the result is a deterministic function of the
    arguments, and a smaller ``n_per_class`` gives a prefix of a larger one.
    """
    names = [str(c) for c in classes]
    if len(names) < 2 or len(set(names)) != len(names):
        raise DataSourceError(f"source_pretraining.data.classes must hold 2 or more distinct characters; got {classes!r}.")
    if int(n_per_class) < 1:
        raise DataSourceError(f"source_pretraining.data.n_per_class must be >= 1; got {n_per_class}.")
    if int(image_size) < 8:
        raise DataSourceError(f"source_pretraining.data.image_size must be >= 8; got {image_size}.")
    fonts = usable_fonts(tuple(names))
    if not fonts:
        raise DataSourceError(
            f"No matplotlib font draws all of the classes {names}: choose characters from "
            "0-9, A-Z, a-z (source_pretraining.data.classes)."
        )
    rng = np.random.default_rng(int(seed))
    glyphs = _GlyphCache(fonts)
    k = len(names)
    n = int(n_per_class) * k
    images = np.empty((n, 3, int(image_size), int(image_size)), dtype=np.uint8)
    for i in range(n):
        images[i] = _render_one(rng, glyphs, len(fonts), names[i % k], int(image_size))
    return Split(
        images=torch.from_numpy(images),
        labels=torch.arange(k, dtype=torch.int64).repeat(int(n_per_class)),
        classes=names,
        items=[f"printed:{i}" for i in range(n)],
    )


def load_handwritten_digits(polarity: str = "dark_on_light") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """scikit-learn's bundled handwritten digits as uint8 RGB ``[1797, 3, 8, 8]``.

    The 0..16 ink values are scaled to 0..255. ``polarity``: ``dark_on_light`` (ink on
    paper, the default) or ``light_on_dark``; the source renders both.
    """
    from sklearn.datasets import load_digits

    if polarity not in ("dark_on_light", "light_on_dark"):
        raise DataSourceError(
            f"data.source.polarity must be 'dark_on_light' or 'light_on_dark'; got {polarity!r}."
        )
    digits = load_digits()
    ink = np.rint(digits.images.astype(np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    gray = 255 - ink if polarity == "dark_on_light" else ink
    images = torch.from_numpy(np.ascontiguousarray(np.repeat(gray[:, None, :, :], 3, axis=1)))
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return images, labels, [str(d) for d in range(10)]
