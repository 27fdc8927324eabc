"""Safe image loading: any common file becomes an RGB PIL image, or a short reason why not."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 32  # pixels: a shorter side below this is too small to classify
MAX_PIXELS = 40_000_000  # width * height above this is refused (read from the header)
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif"}
)
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class SkippedImage:
    """A file that was left out, and why (e.g. ``"truncated or corrupt"``)."""

    path: Path
    reason: str


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0  # 16-bit range to 8-bit
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB, upright (EXIF orientation applied), fully read into memory.

    Handles CMYK, greyscale (``L``, ``I;16``, ``1``), palette and alpha images; transparent
    areas become white.
    """
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)  # a loaded copy, rotated if EXIF says so
    return _to_rgb(upright)


def check_image(path: str | Path) -> str | None:
    """``None`` if ``path`` is a usable image, else a short reason.

    The reasons: ``"not an image"``, ``"too large (...)"`` (more than :data:`MAX_PIXELS`,
    read from the header before decoding), ``"too small (...)"`` (shorter side below
    :data:`MIN_SIDE`), ``"truncated or corrupt (...)"``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    return (
                        f"too large ({width}x{height} = {width * height:,} pixels > {MAX_PIXELS:,})"
                    )
                if min(width, height) < MIN_SIDE:
                    return f"too small ({width}x{height}; shorter side < {MIN_SIDE} px)"
                image.load()
    except Image.DecompressionBombError as err:
        return f"too large ({err})"
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, SyntaxError, ValueError) as err:
        return f"truncated or corrupt ({err})"
    return None


def validate_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[SkippedImage]]:
    """Split ``paths`` into usable images and :class:`SkippedImage` entries (with reasons)."""
    usable: list[Path] = []
    skipped: list[SkippedImage] = []
    for path in map(Path, paths):
        reason = check_image(path)
        if reason is None:
            usable.append(path)
        else:
            skipped.append(SkippedImage(path, reason))
    return usable, skipped


def format_skipped(skipped: Iterable[SkippedImage]) -> str:
    """One line per skipped file (``path: reason``), or a line saying nothing was skipped."""
    lines = [f"  {item.path}: {item.reason}" for item in skipped]
    if not lines:
        return "No images skipped."
    return "\n".join([f"Skipped {len(lines)} file(s):", *lines])
