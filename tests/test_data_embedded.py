"""The embedded offline task: rendered printed characters (source) and sklearn digits (target)."""

import torch

from evotune.data.embedded import (
    DEFAULT_CLASSES,
    load_handwritten_digits,
    render_printed_characters,
    usable_fonts,
)


def test_render_shape_dtype_counts_and_format():
    d = render_printed_characters(3, image_size=32, seed=0)
    k = len(DEFAULT_CLASSES)
    assert d.images.shape == (3 * k, 3, 32, 32) and d.images.dtype == torch.uint8
    assert d.labels.dtype == torch.int64
    assert d.classes == list(DEFAULT_CLASSES)
    assert torch.bincount(d.labels, minlength=k).tolist() == [3] * k
    assert d.items[:2] == ["printed:0", "printed:1"] and len(set(d.items)) == 3 * k
    # value range: every image has ink/background contrast, and the set spans dark and light
    imgs = d.images.float()
    spread = imgs.amax(dim=(1, 2, 3)) - imgs.amin(dim=(1, 2, 3))
    assert (spread > 40).all()
    assert imgs.min() < 30 and imgs.max() > 225


def test_render_is_deterministic_and_seeded():
    a = render_printed_characters(2, image_size=24, seed=7, classes="0123")
    b = render_printed_characters(2, image_size=24, seed=7, classes="0123")
    c = render_printed_characters(2, image_size=24, seed=8, classes="0123")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    # a smaller n_per_class is a prefix of a larger one
    big = render_printed_characters(3, image_size=24, seed=7, classes="0123")
    assert torch.equal(big.images[:8], a.images)


def test_render_varies_within_a_class():
    d = render_printed_characters(6, image_size=32, seed=1, classes="AB")
    a = d.images[d.labels == 0].float()
    assert (a[1:] - a[:1]).abs().mean(dim=(1, 2, 3)).min() > 5  # no two copies of one image
    # both polarities occur: mean brightness of the border vs centre differs in sign across samples
    border = torch.cat([d.images[:, :, 0, :], d.images[:, :, -1, :]], dim=2).float().mean(dim=(1, 2))
    assert border.min() < 110 and border.max() > 140


def test_usable_fonts_are_matplotlib_text_fonts():
    names = [p.stem for p in usable_fonts(tuple(DEFAULT_CLASSES))]
    assert len(names) >= 10
    assert "DejaVuSans" in names and "DejaVuSans-Bold" in names
    for bad in ("cmex10", "cmsy10", "LastResortHE-Regular", "STIXSizOneSymReg", "DejaVuSansDisplay"):
        assert bad not in names


def test_handwritten_digits():
    images, labels, classes = load_handwritten_digits()
    assert images.shape == (1797, 3, 8, 8) and images.dtype == torch.uint8
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert classes == [str(i) for i in range(10)]
    assert torch.bincount(labels).min() >= 170
    assert images.min() == 0 and images.max() == 255
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    # dark digits on light paper: the border is mostly background (255)
    assert images[:, 0, :, 0].float().mean() > 200
    inv, _, _ = load_handwritten_digits("light_on_dark")
    assert torch.equal(inv, 255 - images)
