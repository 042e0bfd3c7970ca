"""The ``fixmatch_strong`` view (MLKD's strong view): each operation against PIL, Cutout, the draws, the options.

The reference for every operation is the PIL call of the authors' code
(``mdistiller/dataset/cifar100.py``), run on the same image: PIL is an independent
implementation, so agreement pins the arithmetic (rounding, luma weights, the
fixed-point affine coordinates), not just the shape of the result.
"""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from view_recipes import CRD_RECIPE, assert_each_refused, teacher_overrides

from distill.cli.main import main
from distill.data import strong_view
from distill.data.strong_view import STRONG_OPS, cutout, draw_ops, fixmatch_strong_view
from distill.data.views import VIEWS, draw_view, view_options
from distill.recipe.load import load_recipe
from distill.recipe.schema import ViewSpec

REPO = Path(__file__).resolve().parent.parent
OPS = {op.name: op for op in STRONG_OPS}

PIL_OPS = {
    "AutoContrast": lambda image, v: ImageOps.autocontrast(image),
    "Brightness": lambda image, v: ImageEnhance.Brightness(image).enhance(v),
    "Color": lambda image, v: ImageEnhance.Color(image).enhance(v),
    "Contrast": lambda image, v: ImageEnhance.Contrast(image).enhance(v),
    "Equalize": lambda image, v: ImageOps.equalize(image),
    "Identity": lambda image, v: image,
    "Posterize": lambda image, v: ImageOps.posterize(image, int(v)),
    "Rotate": lambda image, v: image.rotate(v),
    "Sharpness": lambda image, v: ImageEnhance.Sharpness(image).enhance(v),
    "ShearX": lambda image, v: image.transform(image.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda image, v: image.transform(image.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
    "Solarize": lambda image, v: ImageOps.solarize(image, v),
    "TranslateX": lambda image, v: image.transform(image.size, Image.AFFINE, (1, 0, v * image.size[0], 0, 1, 0)),
    "TranslateY": lambda image, v: image.transform(image.size, Image.AFFINE, (1, 0, 0, 0, 1, v * image.size[1])),
}


def to_pil(image: torch.Tensor) -> Image.Image:
    array = image.permute(1, 2, 0).numpy()
    return Image.fromarray(array[..., 0] if image.shape[0] == 1 else array)


def from_pil(image: Image.Image) -> torch.Tensor:
    array = np.array(image)
    return torch.from_numpy(array[..., None] if array.ndim == 2 else array).permute(2, 0, 1)


def sample_images(channels: int = 3) -> list[torch.Tensor]:
    """Full-range noise, mid-range noise (autocontrast/equalize have work to do), few-level images, a flat channel."""
    generator = torch.Generator().manual_seed(0)
    images = []
    for seed in range(4):
        images.append(torch.randint(0, 256, (channels, 32, 32), generator=generator, dtype=torch.uint8))
        images.append(torch.randint(60 + seed, 190, (channels, 32, 32), generator=generator, dtype=torch.uint8))
        levels = torch.randint(0, 6, (channels, 32, 32), generator=generator) * 37 + seed
        images.append(levels.to(torch.uint8))
    flat = torch.randint(0, 256, (channels, 32, 32), generator=generator, dtype=torch.uint8)
    flat[0] = 77  # one value: autocontrast and equalize keep the channel
    if channels > 1:
        flat[1] = torch.where(flat[1] > 127, 200, 3)  # two values
    images.append(flat)
    return images


def magnitudes(name: str) -> list[float]:
    """The range's ends and a few points drawn inside it (fixed seed)."""
    op = OPS[name]
    inside = np.random.default_rng(len(name)).uniform(op.low, op.high, 4).tolist()
    return [op.low, op.high, *inside]


def test_the_table_is_the_originals_augment_list():
    ranges = {op.name: (op.low, op.high) for op in STRONG_OPS}
    assert list(ranges) == list(PIL_OPS)  # the 14 operations, in augment_list's order
    assert ranges["Posterize"] == (4, 8) and ranges["Rotate"] == (-30, 30) and ranges["Solarize"] == (0, 256)
    assert all(ranges[n] == (0.05, 0.95) for n in ("Brightness", "Color", "Contrast", "Sharpness"))
    assert all(ranges[n] == (-0.3, 0.3) for n in ("ShearX", "ShearY", "TranslateX", "TranslateY"))


@pytest.mark.parametrize("name", list(PIL_OPS))
def test_each_operation_equals_pil_on_rgb_images(name):
    """Exact for all 14: the integer tables, PIL's float32 blends and its nearest affine coordinates."""
    for image in sample_images():
        for v in magnitudes(name):
            ours = OPS[name].apply(image, v)
            theirs = from_pil(PIL_OPS[name](to_pil(image), v))
            assert ours.dtype == torch.uint8 and ours.shape == image.shape
            differ = (ours != theirs).sum().item()
            assert differ == 0, f"{name}({v}): {differ} values differ from PIL, at most {(ours.int() - theirs.int()).abs().max()}"


@pytest.mark.parametrize("name", list(PIL_OPS))
def test_each_operation_equals_pil_on_grey_images(name):
    """A 1-channel image is PIL's mode 'L': Color is the identity there, Contrast uses the image's own mean."""
    for image in sample_images(channels=1)[:6]:
        for v in magnitudes(name)[:3]:
            assert torch.equal(OPS[name].apply(image, v), from_pil(PIL_OPS[name](to_pil(image), v))), (name, v)


def test_the_operations_change_the_image_where_they_should():
    """Guards against a PIL comparison that would pass on two identities."""
    image = sample_images()[1]
    for name in PIL_OPS:
        if name != "Identity":
            v = 0.5 if name in ("Brightness", "Color", "Contrast", "Sharpness") else OPS[name].low + 0.7 * (OPS[name].high - OPS[name].low)
            assert not torch.equal(OPS[name].apply(image, v), image), name
    assert torch.equal(OPS["Solarize"].apply(image, 256.0), image)  # a threshold of 256 inverts nothing
    assert torch.equal(OPS["Solarize"].apply(image, 0.0), 255 - image)
    assert torch.equal(OPS["Posterize"].apply(image, 4.99), image & 0xF0)  # bits = int(v)
    shifted = OPS["TranslateX"].apply(image, 0.25)  # 8 pixels: content moves left, black enters on the right
    assert torch.equal(shifted[:, :, :24], image[:, :, 8:]) and not shifted[:, :, 24:].any()
    sheared = OPS["ShearX"].apply(image, 0.3)  # about the top-left corner: the first row stays
    assert torch.equal(sheared[:, 0, :], image[:, 0, :])


def hand_cutout(image: torch.Tensor, rows: range, cols: range, fill: list[int]) -> torch.Tensor:
    out = image.clone()
    for c, value in enumerate(fill):
        for y in rows:
            for x in cols:
                out[c, y, x] = value
    return out


def test_cutout_paints_the_rectangle_computed_by_hand():
    image = sample_images()[0]
    fill = [125, 123, 114]
    # s = 10.4 at (5.3, 30.9): x0 = int(max(0, 0.1)) = 0, x1 = min(32, 10.4) -> columns 0..10 inclusive;
    # y0 = int(25.7) = 25, y1 = min(32, 35.4) = 32 -> rows 25..31 (clipped).
    assert torch.equal(cutout(image, 10.4, 5.3, 30.9, fill), hand_cutout(image, range(25, 32), range(0, 11), fill))
    # s = 3.0 at (20.0, 10.5): x0 = int(18.5) = 18, x1 = 21.0 -> 18..21; y0 = int(9.0) = 9, y1 = 12.0 -> 9..12.
    assert torch.equal(cutout(image, 3.0, 20.0, 10.5, fill), hand_cutout(image, range(9, 13), range(18, 22), fill))
    # s = 0.4 at (7.9, 7.9): one pixel, (7, 7).
    assert torch.equal(cutout(image, 0.4, 7.9, 7.9, fill), hand_cutout(image, range(7, 8), range(7, 8), fill))
    assert torch.equal(cutout(image, 0.0, 16.0, 16.0, fill), image)  # s = 0 leaves the image unchanged
    grey = image[:1]
    assert torch.equal(cutout(grey, 3.0, 20.0, 10.5, fill), hand_cutout(grey, range(9, 13), range(18, 22), [125]))
    assert torch.equal(cutout(image, 3.0, 20.0, 10.5, [7]), hand_cutout(image, range(9, 13), range(18, 22), [7, 7, 7]))
    with pytest.raises(ValueError, match="fill has 3 values but the image has 2 channels"):
        cutout(image[:2], 3.0, 20.0, 10.5, fill)


def test_cutout_agrees_with_the_originals_pil_rectangle():
    image = sample_images()[0]
    rng = np.random.RandomState(3)  # the original's legacy numpy calls
    for _ in range(200):
        side = rng.uniform(0, 0.5) * 32
        x, y = rng.uniform(32), rng.uniform(32)  # uniform(low=32, high=1.0): the original's centre, in (1, 32]
        x0, y0 = int(max(0, x - side / 2)), int(max(0, y - side / 2))
        reference = to_pil(image)
        ImageDraw.Draw(reference).rectangle((x0, y0, min(32, x0 + side), min(32, y0 + side)), (125, 123, 114))
        assert torch.equal(cutout(image, side, x, y, [125, 123, 114]), from_pil(reference))


def test_the_view_is_deterministic_per_seed_and_differs_between_seeds():
    transform = VIEWS.get("fixmatch_strong")(32)
    image = sample_images()[0]
    first = draw_view(transform, image, 11)
    assert torch.equal(first, draw_view(transform, image, 11))
    assert first.dtype == torch.uint8 and first.shape == (3, 32, 32)
    others = [draw_view(transform, image, seed) for seed in range(12, 20)]
    assert all(not torch.equal(first, other) for other in others)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 32, 32), (3, 40, 40)])
def test_uint8_in_uint8_out_of_the_image_size(shape):
    transform = fixmatch_strong_view(32)
    image = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    for seed in range(30):
        out = draw_view(transform, image, seed)
        assert out.dtype == torch.uint8 and out.shape == (shape[0], 32, 32)


def test_the_view_survives_pickling_for_loader_workers():
    transform = fixmatch_strong_view(32, ops=3, cutout=0.3, fill=[1, 2, 3])
    copy = pickle.loads(pickle.dumps(transform))
    image = sample_images()[0]
    assert all(torch.equal(draw_view(transform, image, seed), draw_view(copy, image, seed)) for seed in range(10))


def test_ops_are_drawn_uniformly_with_replacement_and_magnitudes_in_range():
    torch.manual_seed(0)
    counts: Counter[str] = Counter()
    repeats = 0
    for _ in range(2000):
        drawn = draw_ops(2)
        names = [op.name for op, _ in drawn]
        counts.update(names)
        repeats += names[0] == names[1]
        assert all(op.low <= v <= op.high for op, v in drawn)
    assert set(counts) == set(PIL_OPS)  # every one of the 14 is chosen
    assert all(230 <= n <= 345 for n in counts.values()), counts  # 4000 draws / 14 ≈ 286 each
    assert 90 <= repeats <= 200, repeats  # the same op twice: 2000 / 14 ≈ 143 times with replacement, 0 without


def test_the_view_applies_the_drawn_ops_in_order_then_cutout():
    """The transform applies exactly what draw_ops drew, in order; cutout=0 leaves only the ops, ops=0 nothing."""
    applied = []

    def spy(name):
        return lambda image, v: applied.append((name, v)) or image

    spies = tuple(op._replace(apply=spy(op.name)) for op in STRONG_OPS)
    image = sample_images()[0]
    torch.manual_seed(5)
    expected = [(op.name, v) for op, v in draw_ops(3, spies)]
    torch.manual_seed(5)
    assert torch.equal(strong_view.StrongAugment(ops=3, cutout=0.0, fill=[0], table=spies)(image), image)
    assert applied == expected and len(expected) == 3
    applied.clear()
    assert torch.equal(strong_view.StrongAugment(ops=0, cutout=0.0, fill=[0], table=spies)(image), image)
    assert applied == []


def test_cutout_always_runs_with_a_side_up_to_the_fraction():
    augment = strong_view.StrongAugment(ops=0, cutout=0.5, fill=[255, 0, 255])
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    sides = []
    for seed in range(300):
        torch.manual_seed(seed)
        painted = (augment(image) != 0).any(0)
        rows, cols = painted.any(1).nonzero().flatten(), painted.any(0).nonzero().flatten()
        sides.append(max(len(rows), len(cols)))
        assert len(rows) and len(cols) and rows.max() - rows.min() + 1 == len(rows)  # one solid block
        assert cols.min() >= 0 and rows.min() >= 0
    assert max(sides) == 16 and min(sides) == 1  # int(s) + 1 pixels a side, s = U(0, 0.5)·32 < 16


def test_cutouts_draws_are_the_originals_side_then_numpy_style_centre():
    """side = U(0, cutout)·W, then x and y as numpy's ``uniform(W)`` (low=W, high=1): a centre in (1, W]."""
    augment = strong_view.StrongAugment(ops=0, cutout=0.5, fill=[125, 123, 114])
    image = sample_images()[0]
    for seed in range(50):
        torch.manual_seed(seed)
        u = [torch.rand((), dtype=torch.float64).item() for _ in range(3)]
        side, x, y = u[0] * 0.5 * 32, 32 + (1.0 - 32) * u[1], 32 + (1.0 - 32) * u[2]
        torch.manual_seed(seed)
        assert torch.equal(augment(image), cutout(image, side, x, y, [125, 123, 114])), seed


def test_options_are_validated_with_their_range():
    cases = [
        ("ops", -1, r"ops must be an integer >= 0"),
        ("cutout", 1.5, r"cutout must be in \[0, 1\]"),
        ("cutout", -0.1, r"cutout must be in \[0, 1\]"),
        ("fill", [125, 300, 114], r"fill must be one or more values in 0\.\.255"),
        ("fill", [], r"fill must be one or more values in 0\.\.255"),
        ("padding", -2, r"padding must be an integer >= 0"),
    ]
    for option, value, message in cases:
        with pytest.raises(ValueError, match=message):
            fixmatch_strong_view(32, **{option: value})
    assert view_options("fixmatch_strong") == {
        "ops": (int, 2), "padding": (int, 4), "cutout": (float, 0.5), "fill": (list[int], [125, 123, 114])
    }


def test_the_view_loads_from_a_recipe_and_bad_options_name_the_key(fake_cifar100, tiny_teacher, capsys):
    base = teacher_overrides(fake_cifar100, tiny_teacher)
    recipe = load_recipe(CRD_RECIPE, [*base, "data.views={student: {name: fixmatch_strong, options: {cutout: 0.25}}}"])
    assert recipe.data.views.student == ViewSpec("fixmatch_strong", {"cutout": 0.25})
    cases = {
        "data.views={student: {name: fixmatch_strong, options: {ops: -1}}}": "data.views.student.options: ops must be an integer >= 0",
        "data.views={student: {name: fixmatch_strong, options: {cutout: 2.0}}}": "cutout must be in [0, 1]",
        "data.views={student: {name: fixmatch_strong, options: {fill: [1, 2, 256]}}}": "fill must be one or more values in 0..255",
        "data.views={student: {name: fixmatch_strong, options: {ops: two}}}": "expected int",
    }
    assert_each_refused(base, cases)
    code = main(["train", str(CRD_RECIPE), *base, "data.views={student: {name: fixmatch_strong, options: {cutout: 2.0}}}",
                 "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cutout must be in [0, 1]" in err[0] and "Traceback" not in err[0]


def test_every_constant_follows_the_images_device_and_every_draw_uses_the_cpu_generator():
    """Device-agnostic without a GPU: with factories defaulting to the 'meta' device, any tensor the ops made
    without ``device=image.device`` (or a draw without ``device='cpu'``) would meet the CPU image and fail.
    """
    images = sample_images()[:4]
    expected = [[op.apply(image, (op.low + op.high) / 3) for op in STRONG_OPS] for image in images]
    torch.manual_seed(5)
    augmented = [strong_view.StrongAugment(2, 0.5, [125, 123, 114])(image) for image in images]
    with torch.device("meta"):
        for image, outputs in zip(images, expected):
            for op, output in zip(STRONG_OPS, outputs):
                assert torch.equal(op.apply(image, (op.low + op.high) / 3), output), op.name
        torch.manual_seed(5)
        again = [strong_view.StrongAugment(2, 0.5, [125, 123, 114])(image) for image in images]
    assert all(torch.equal(a, b) for a, b in zip(augmented, again))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the same draw on the GPU")
def test_the_view_draws_the_same_image_on_the_gpu():
    view = fixmatch_strong_view(32)
    cuda_state = torch.cuda.get_rng_state()
    for seed, image in enumerate(sample_images()):
        on_cpu = draw_view(view, image, seed)
        on_gpu = draw_view(view, image.cuda(), seed)
        assert torch.equal(on_gpu.cpu(), on_cpu), seed
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state)  # drawing a view leaves the CUDA generator alone
