"""Digits corruptions and generated shifts, registered here by name and looked up by :mod:`benchmark.data.shifts`.

Every generator is deterministic given the ``rng`` passed in (all randomness is drawn from it, in a
fixed order) and, for corruptions, severities 1..5 increase the damage monotonically.  The
per-severity constants were calibrated on the 16x16 digits so that severity 5 is hard but not pure
noise: a small CNN and an MLP trained on clean digits (98% clean accuracy) stay at 59-97% at
severity 3 and 19-94% at severity 5; look at ``docs/shifts-digits.png`` before changing one, and
bump the entry's ``version`` when you do (it is part of every result's hash).

Corruptions take images (N, H, W) or (N, C, H, W) in [0, 1] and act on each (H, W) plane; they
are vectorised over the batch (numpy / scipy.ndimage; JPEG codes the batch as one Pillow mosaic).
``fonts`` is a generated shift: digits typeset from the TTF fonts that ship with
matplotlib, pushed through the same preprocessing as the ID digits (32x32 bitmap, 4x4 block counts
to 8x8 with 17 grey levels, bilinear resize to 16x16).
"""
from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from PIL import Image, ImageFont

Array = np.ndarray

CORRUPTIONS: dict[str, Callable[..., np.ndarray]] = {}
GENERATED: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {}


def _registrar(table: dict, what: str):
    """A decorator factory that files a generator under its name in ``table``, once."""
    def register(name: str):
        def deco(fn):
            if name in table:
                raise ValueError(f"{what} '{name}' registered twice")
            table[name] = fn
            return fn

        return deco

    return register


corruption = _registrar(CORRUPTIONS, "corruption")
generated = _registrar(GENERATED, "generated shift")


# --------------------------------------------------------------------------- helpers
def _level(table: Sequence[float], severity: int, name: str) -> float:
    """The constant for a severity, with an error that says what is allowed."""
    if not isinstance(severity, (int, np.integer)) or not 1 <= severity <= len(table):
        raise ValueError(f"corruption '{name}': severity must be an integer 1..{len(table)}, got {severity!r}")
    return table[int(severity) - 1]


def _planewise(fn: Callable[..., Array]) -> Callable[..., Array]:
    """Run ``fn`` on a (M, H, W) float32 stack whatever the leading dims, and restore the shape."""

    @functools.wraps(fn)
    def wrapper(x: Array, severity: int, rng: np.random.Generator, **params) -> Array:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim < 3:
            raise ValueError(f"corruption '{fn.__name__}': expected images (N, H, W) or (N, C, H, W), got {x.shape}")
        planes = x.reshape(-1, *x.shape[-2:])
        out = fn(planes, severity, rng, **params)
        return np.clip(out, 0, 1).astype(np.float32).reshape(x.shape)

    return wrapper


def _convolve(x: Array, kernel: Array) -> Array:
    """2-D convolution of every plane with one kernel (zero padding: the background is black)."""
    kernel = (kernel / kernel.sum()).astype(np.float32)
    return ndimage.convolve(x, kernel[None], mode="constant", cval=0.0)


def _disk(radius: float, supersample: int = 8) -> Array:
    """An anti-aliased disk kernel (area coverage), for defocus blur and stroke dilation."""
    r = int(np.ceil(radius))
    k = 2 * r + 1
    s = (np.arange(k * supersample) + 0.5) / supersample - (r + 0.5)
    yy, xx = np.meshgrid(s, s, indexing="ij")
    inside = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float32)
    return inside.reshape(k, supersample, k, supersample).mean(axis=(1, 3))


def _warp(x: Array, mats: Array, shifts: Array, order: int = 1) -> Array:
    """Per-image affine warp about the image centre, in one ``map_coordinates`` call.

    ``mats`` (M, 2, 2) maps output (row, col) offsets from the centre to input offsets; ``shifts``
    (M, 2) is added to the input position.  Outside the image is black, like the background.
    """
    m, h, w = x.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    grid = np.stack([yy.ravel(), xx.ravel()])  # (2, H*W)
    src = np.einsum("mij,jp->mip", mats, grid) + shifts[:, :, None] + np.array([cy, cx])[None, :, None]
    idx = np.broadcast_to(np.arange(m)[:, None], (m, h * w))
    coords = np.stack([idx, src[:, 0], src[:, 1]])
    out = ndimage.map_coordinates(x, coords.reshape(3, -1), order=order, mode="constant", cval=0.0)
    return out.reshape(m, h, w)


def _rotation(theta: Array) -> Array:
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _signs(rng: np.random.Generator, m: int) -> Array:
    return rng.choice(np.array([-1.0, 1.0]), size=m)


# --------------------------------------------------------------------------- noise
@corruption("gaussian_noise")
@_planewise
def gaussian_noise(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Additive Gaussian pixel noise (sensor read noise)."""
    sigma = _level([0.08, 0.12, 0.18, 0.26, 0.38], severity, "gaussian_noise")
    return x + rng.normal(0, sigma, size=x.shape)


@corruption("shot_noise")
@_planewise
def shot_noise(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Poisson photon noise: brighter pixels are noisier, the black background stays black."""
    photons = _level([40, 20, 10, 5, 2.5], severity, "shot_noise")
    return rng.poisson(x * photons) / photons


@corruption("impulse_noise")
@_planewise
def impulse_noise(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Salt-and-pepper noise: a fraction of pixels set to 0 or 1."""
    amount = _level([0.03, 0.06, 0.1, 0.16, 0.24], severity, "impulse_noise")
    u = rng.random(x.shape)
    out = x.copy()
    out[u < amount / 2] = 0.0
    out[(u >= amount / 2) & (u < amount)] = 1.0
    return out


@corruption("speckle_noise")
@_planewise
def speckle_noise(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Multiplicative noise on the strokes plus a faint additive floor on the background."""
    sigma = _level([0.2, 0.35, 0.5, 0.7, 0.95], severity, "speckle_noise")
    return x * (1 + rng.normal(0, sigma, size=x.shape)) + np.abs(rng.normal(0, sigma / 6, size=x.shape))


# --------------------------------------------------------------------------- blur
@corruption("defocus_blur")
@_planewise
def defocus_blur(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Out-of-focus lens: convolution with an anti-aliased disk."""
    radius = _level([1.0, 1.5, 2.0, 2.5, 3.0], severity, "defocus_blur")
    return _convolve(x, _disk(radius))


@corruption("motion_blur")
@_planewise
def motion_blur(x: Array, severity: int, rng: np.random.Generator, n_angles: int = 12) -> Array:
    """Camera shake: a line kernel of growing length at a random angle per image.

    Angles are drawn from ``n_angles`` directions so the batch is convolved once per direction.
    """
    length = _level([3.0, 4.5, 6.0, 7.5, 9.0], severity, "motion_blur")
    which = rng.integers(0, n_angles, size=len(x))
    out = np.empty_like(x)
    for a in range(n_angles):
        sel = which == a
        if sel.any():
            out[sel] = _convolve(x[sel], _line_kernel(length, np.pi * a / n_angles))
    return out


@functools.lru_cache(maxsize=128)
def _line_kernel(length: float, angle: float, supersample: int = 8) -> Array:
    """A centred, anti-aliased line segment of the given length and direction."""
    r = int(np.ceil(length / 2))
    k = 2 * r + 1
    t = np.linspace(-length / 2, length / 2, int(length * supersample) + 1)
    ys, xs = t * np.sin(angle) + r + 0.5, t * np.cos(angle) + r + 0.5
    kernel, _, _ = np.histogram2d(ys, xs, bins=k, range=[[0, k], [0, k]])
    return kernel.astype(np.float32)


@corruption("gaussian_blur")
@_planewise
def gaussian_blur(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Isotropic Gaussian blur."""
    sigma = _level([0.6, 0.9, 1.2, 1.5, 1.9], severity, "gaussian_blur")
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma), mode="constant", cval=0.0, truncate=3.0)


# --------------------------------------------------------------------------- digital
@corruption("contrast")
@_planewise
def contrast(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Lower contrast: pull every pixel towards the image mean.

    Milder than ImageNet-C's factors on purpose: under the ID threat (Linf 0.1) a contrast factor
    c makes the budget worth 0.1 / c of the image's range, and at c <= 0.45 (version 1) every model
    of the zoo was at 0% robust accuracy (trend slope 0.002, R^2 0.02), so the shift said nothing.
    At 0.9..0.5 robust accuracy on 120 test images falls from 7..64% to 0..10% (standard CNN ..
    TRADES CNN), keeping the ranking readable at every severity."""
    c = _level([0.9, 0.8, 0.7, 0.6, 0.5], severity, "contrast")
    mean = x.mean(axis=(1, 2), keepdims=True)
    return (x - mean) * c + mean


@corruption("brightness")
@_planewise
def brightness(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Over-exposure: add a constant, so the background turns grey and strokes saturate."""
    c = _level([0.1, 0.2, 0.3, 0.4, 0.5], severity, "brightness")
    return x + c


@corruption("pixelate")
@_planewise
def pixelate(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Box-downsample to a coarse grid, then nearest-neighbour upsample back."""
    import torch

    size = int(_level([9, 7, 6, 5, 4], severity, "pixelate"))
    h, w = x.shape[-2:]
    t = torch.from_numpy(np.ascontiguousarray(x))[:, None]
    small = torch.nn.functional.adaptive_avg_pool2d(t, (size, size))
    big = torch.nn.functional.interpolate(small, size=(h, w), mode="nearest")
    return big[:, 0].numpy()


@corruption("jpeg_compression")
@_planewise
def jpeg_compression(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Lossy JPEG round trip through Pillow at falling quality (8x8 DCT blocks, coarse quantisation)."""
    quality = int(_level([10, 6, 4, 3, 1], severity, "jpeg_compression"))
    m, h, w = x.shape
    if h % 8 or w % 8:  # tiles must align with JPEG's 8x8 blocks to be coded independently
        tiles = [_jpeg_roundtrip(plane[None], quality) for plane in x]
        return np.concatenate(tiles) if tiles else x.copy()
    return _jpeg_roundtrip(x, quality)


def _jpeg_roundtrip(x: Array, quality: int, per_row: int = 64) -> Array:
    """JPEG-code a stack as one mosaic: with H, W multiples of 8 (and greyscale, so no chroma
    subsampling) every tile is coded exactly as it would be alone, in one Pillow call."""
    from PIL import Image

    m, h, w = x.shape
    cols = min(per_row, m)
    rows = -(-m // cols)
    pad = np.zeros((rows * cols, h, w), np.uint8)
    pad[:m] = np.round(x * 255).astype(np.uint8)
    mosaic = pad.reshape(rows, cols, h, w).transpose(0, 2, 1, 3).reshape(rows * h, cols * w)
    buf = io.BytesIO()
    Image.fromarray(mosaic, mode="L").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    back = np.asarray(Image.open(buf), dtype=np.float32) / 255.0
    return back.reshape(rows, h, cols, w).transpose(0, 2, 1, 3).reshape(rows * cols, h, w)[:m]


# --------------------------------------------------------------------------- geometric
@corruption("elastic_transform")
@_planewise
def elastic_transform(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Smooth random displacement field (rubber-sheet warping, as in Simard et al. 2003)."""
    amp, smooth = _level([(0.5, 2.0), (0.75, 2.0), (1.0, 2.0), (1.35, 2.0), (1.75, 2.0)], severity,
                         "elastic_transform")
    m, h, w = x.shape
    field = ndimage.gaussian_filter(rng.uniform(-1, 1, size=(2, m, h, w)), sigma=(0, 0, smooth, smooth))
    field *= amp / (field.reshape(2, m, -1).std(axis=(0, 2))[None, :, None, None] + 1e-8)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    idx = np.broadcast_to(np.arange(m)[:, None, None], (m, h, w))
    coords = np.stack([idx, yy + field[0], xx + field[1]])
    return ndimage.map_coordinates(x, coords, order=1, mode="constant", cval=0.0)


@corruption("rotation")
@_planewise
def rotation(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Rotation about the centre by a growing angle, clockwise or anticlockwise at random."""
    deg = _level([8, 15, 22, 30, 40], severity, "rotation")
    theta = np.deg2rad(deg + rng.uniform(-2.5, 2.5, size=len(x))) * _signs(rng, len(x))
    return _warp(x, _rotation(theta), np.zeros((len(x), 2)))


@corruption("translation")
@_planewise
def translation(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Shift by a growing distance (pixels) in a random direction; what leaves the frame is lost."""
    dist = _level([0.75, 1.25, 1.75, 2.25, 3.0], severity, "translation")
    phi = rng.uniform(0, 2 * np.pi, size=len(x))
    shifts = dist * np.stack([np.sin(phi), np.cos(phi)], -1)
    return _warp(x, np.broadcast_to(np.eye(2), (len(x), 2, 2)), shifts)


@corruption("scale")
@_planewise
def scale(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """Shrink the digit about the centre (anti-aliased), so it covers fewer pixels.

    The ID digits always fill the frame's height, so small models are brittle to this; the factor
    is jittered by +-0.03 per image so that accuracy falls smoothly rather than at one factor.
    """
    level = _level([0.94, 0.9, 0.87, 0.84, 0.79], severity, "scale")
    factor = level + rng.uniform(-0.03, 0.03, size=len(x))
    sigma = 0.45 * (1 / level - 1)  # pre-filter so the shrunk strokes do not alias away
    blurred = ndimage.gaussian_filter(x, sigma=(0, sigma, sigma), mode="constant", cval=0.0)
    mats = np.eye(2)[None] / factor[:, None, None]
    return _warp(blurred, mats, np.zeros((len(x), 2)))


@corruption("occlusion")
@_planewise
def occlusion(x: Array, severity: int, rng: np.random.Generator) -> Array:
    """A black square of growing size at a random place over the digit (sticker, finger)."""
    side = int(_level([3, 4, 5, 6, 7], severity, "occlusion"))
    m, h, w = x.shape
    top = rng.integers(2, h - side - 1, size=m)
    left = rng.integers(2, w - side - 1, size=m)
    rows, cols = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    inside = ((rows >= top[:, None, None]) & (rows < (top + side)[:, None, None])
              & (cols >= left[:, None, None]) & (cols < (left + side)[:, None, None]))
    return np.where(inside, 0.0, x)


# --------------------------------------------------------------------------- style
@corruption("stroke_width")
@_planewise
def stroke_width(x: Array, severity: int, rng: np.random.Generator, direction: str = "thicker") -> Array:
    """A different pen: grey dilation (``thicker``) or erosion (``thinner``) of the strokes.

    Dilation takes, per pixel, the max over a disk of neighbours weighted by the disk's
    (anti-aliased) coverage, so fractional radii give gradual growth.  Thinning blends the image
    with its grey erosion by a plus-shaped element, brightening the eroded core so that thin
    strokes stay ink-coloured instead of fading out.
    """
    if direction == "thicker":
        radius = _level([0.9, 1.2, 1.5, 1.8, 2.1], severity, "stroke_width")
        disk = _disk(radius)
        # weighted grey dilation: max over neighbours of (pixel * coverage of the disk)
        r = disk.shape[0] // 2
        pad = np.pad(x, ((0, 0), (r, r), (r, r)))
        h, w = x.shape[-2:]
        out = np.zeros_like(x)
        for dy in range(disk.shape[0]):
            for dx in range(disk.shape[1]):
                if disk[dy, dx] > 0:
                    np.maximum(out, pad[:, dy:dy + h, dx:dx + w] * min(1.0, disk[dy, dx] * 1.5), out=out)
        return out
    if direction == "thinner":
        strength = _level([0.3, 0.5, 0.7, 0.85, 1.0], severity, "stroke_width")
        plus = ndimage.generate_binary_structure(2, 1)[None]
        eroded = ndimage.grey_erosion(x, footprint=plus, mode="constant", cval=0.0)
        # soft erosion: the thinned strokes keep a dimmed rim that fades with severity
        return (1 - strength) * x + strength * eroded * (1 + 0.6 * strength)
    raise ValueError(f"corruption 'stroke_width': params.direction must be 'thicker' or 'thinner', got {direction!r}")


# --------------------------------------------------------------------------- generated: fonts
DEFAULT_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmtt10.ttf",
)
_RENDER_SIZE = 72  # glyph rendering size (px, em) before the ID-style downsampling
_STROKES = (0, 1, 3)  # extra outline (px at render size): pens of different widths


@functools.lru_cache(maxsize=1)
def _matplotlib_fonts() -> Path:
    """matplotlib's bundled TTF folder, found without importing matplotlib (which takes ~1 s)."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    for base in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(base) / "mpl-data" / "fonts" / "ttf"
        if folder.is_dir():
            return folder
    import matplotlib  # unusual layout: ask matplotlib itself

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _font_path(name: str) -> Path:
    """A TTF font that ships with matplotlib (or an absolute path)."""
    p = Path(name)
    if not p.is_absolute():
        p = _matplotlib_fonts() / name
    if not p.is_file():
        raise FileNotFoundError(
            f"generated shift 'fonts': font file {p} not found; list fonts from "
            f"{_matplotlib_fonts()} (or absolute paths) in the shift's params.fonts"
        )
    return p


@functools.lru_cache(maxsize=64)
def _truetype(font: str) -> ImageFont.FreeTypeFont:
    from PIL import ImageFont

    return ImageFont.truetype(str(_font_path(font)), _RENDER_SIZE)


@functools.lru_cache(maxsize=4096)
def _glyph(font: str, digit: int, stroke: int) -> Image.Image:
    """Digit ``digit`` typeset in ``font`` with an outline of ``stroke`` px, tight-cropped (a Pillow "L" image)."""
    from PIL import Image, ImageDraw

    f = _truetype(font)
    canvas = Image.new("L", (2 * _RENDER_SIZE, 2 * _RENDER_SIZE), 0)
    ImageDraw.Draw(canvas).text((_RENDER_SIZE // 2, _RENDER_SIZE // 4), str(digit), fill=255, font=f,
                                stroke_width=stroke, stroke_fill=255)
    a = np.asarray(canvas)
    rows, cols = np.flatnonzero(a.max(1) > 25), np.flatnonzero(a.max(0) > 25)
    if not len(rows):
        raise ValueError(f"generated shift 'fonts': font {font} has no glyph for '{digit}'")
    crop = canvas.crop((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    # keep ~1.5x the largest target height, so per-image rotation and resizing stay cheap
    h = 48
    return crop.resize((max(1, round(crop.width * h / crop.height)), h), Image.BOX)


def _typeset(glyph: Image.Image, height: float, aspect: float, angle: float, dy: float, dx: float,
             frame: int = 32) -> Array:
    """Place a glyph in a ``frame`` x ``frame`` bitmap: scaled to ``height``, rotated, shifted."""
    from PIL import Image

    g = glyph
    if angle:
        g = g.rotate(angle, resample=Image.BILINEAR, expand=True)
    gh, gw = g.height, g.width
    h = max(2, int(round(height)))
    w = max(1, min(frame, int(round(gw / gh * h * aspect))))
    small = np.asarray(g.resize((w, h), Image.BOX), dtype=np.float32) / 255.0
    out = np.zeros((frame, frame), np.float32)
    top = int(round((frame - h) / 2 + dy))
    left = int(round((frame - w) / 2 + dx))
    ys, xs = slice(max(top, 0), min(top + h, frame)), slice(max(left, 0), min(left + w, frame))
    out[ys, xs] = small[ys.start - top:ys.stop - top, xs.start - left:xs.stop - left]
    return out


@generated("fonts")
def fonts(severity: int | None, rng: np.random.Generator, n_per_class: int = 60,
          fonts: Sequence[str] = DEFAULT_FONTS, size_jitter: float = 0.08, shift_jitter: float = 1.5,
          angle_jitter: float = 4.0) -> tuple[Array, Array]:
    """Machine-typeset digits 0-9 from many fonts: same classes, a different "writer".

    Each image: a random font and pen width (outline), height ~29/32 of the frame with
    ``size_jitter`` relative spread, a small rotation and shift, then the ID preprocessing
    (32x32 -> 4x4 block counts, 17 levels -> bilinear 16x16).  Labels are balanced:
    ``n_per_class`` per digit, in a shuffled order.
    """
    from . import datasets

    if severity is not None:
        raise ValueError("generated shift 'fonts' has no severities; remove 'severities' from its entry")
    fonts = tuple(fonts)
    if not fonts or n_per_class <= 0:
        raise ValueError("generated shift 'fonts': params.fonts must be non-empty and n_per_class positive")
    labels = rng.permutation(np.repeat(np.arange(10, dtype=np.int64), n_per_class))
    n = len(labels)
    font_idx = rng.integers(0, len(fonts), size=n)
    stroke_idx = rng.integers(0, len(_STROKES), size=n)
    heights = 29.0 * (1 + size_jitter * rng.uniform(-1, 1, size=n))
    aspects = 1 + 0.1 * rng.uniform(-1, 1, size=n)
    angles = angle_jitter * rng.uniform(-1, 1, size=n)
    shifts = shift_jitter * rng.uniform(-1, 1, size=(n, 2))
    big = np.stack([
        _typeset(_glyph(fonts[f], int(d), _STROKES[s]), hgt, asp, ang, sy, sx)
        for d, f, s, hgt, asp, ang, (sy, sx) in zip(labels, font_idx, stroke_idx, heights, aspects, angles, shifts)
    ])
    blocks = big.reshape(n, 8, 4, 8, 4).mean(axis=(2, 4))  # the UCI optdigits 4x4 block counts
    eight = np.round(blocks * 16) / 16
    return datasets.resize(eight, datasets.DIGITS_SIZE), labels
