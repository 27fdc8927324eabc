"""Safe image loading: any common file becomes an RGB PIL image, or a one-line reason why not.

Images come from users, so Pillow is kept on a short leash: only the decoders of
:data:`ACCEPTED_FORMATS` are tried (a file named ``.jpg`` holding another format is "not an
image", its exotic decoder never runs), Pillow's decompression-bomb warning is an error, and the
header's size is checked against :data:`MAX_PIXELS` before any pixel is decoded. Animated images
(GIF, WebP) give their first frame; later frames are never decoded.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 32  # pixels: a shorter side below this is too small to classify
MAX_PIXELS = 40_000_000  # width * height above this is refused (read from the header)
MAX_ASPECT_RATIO = 10  # longer side / shorter side above this is refused (a strip, not a photo)
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif"}
)
# The Pillow decoders of IMAGE_EXTENSIONS (JPEG includes phones' multi-picture MPO files).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_ACCEPTED_NAMES = "JPEG, PNG, WebP, BMP, GIF or TIFF"
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
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


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open`` with :data:`ACCEPTED_FORMATS` only and decompression-bomb warnings as errors.

    Raises ``UnidentifiedImageError`` for any other format and ``Image.DecompressionBombWarning``
    (or ``Image.DecompressionBombError``) above ``Image.MAX_IMAGE_PIXELS``, inside the block too.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path, formats=ACCEPTED_FORMATS) as image:
            yield image


def _upright_rgb(image: Image.Image) -> Image.Image:
    """A loaded RGB copy of ``image``'s first frame, rotated as its EXIF orientation says."""
    return _to_rgb(ImageOps.exif_transpose(image))


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB, upright (EXIF orientation applied), fully read into memory.

    Handles CMYK, greyscale (``L``, ``I;16``, ``1``), palette and alpha images; transparent
    areas become white. Only :data:`ACCEPTED_FORMATS` are decoded (see :func:`open_image`);
    call :func:`check_image` first on files from users.
    """
    with open_image(path) as image:
        return _upright_rgb(image)


def _file_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable regular file (asked before Pillow opens it), or ``None``."""
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
    try:
        info = path.stat()
    except FileNotFoundError:
        return "no such file"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if stat.S_ISDIR(info.st_mode):
        return "a folder, not an image file"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a pipe, socket or device)"  # opening a pipe could hang
    if info.st_size == 0:
        return "empty file (0 bytes)"
    return None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def check_image(path: str | Path) -> str | None:
    """``None`` if ``path`` is a usable image, else a one-line reason.

    The reasons: ``"no such file"``, ``"broken symbolic link (...)"``, ``"a folder, ..."``,
    ``"not a regular file (...)"``, ``"empty file (0 bytes)"``, ``"cannot be read (...)"``,
    ``"not an image (...)"`` (not one of :data:`ACCEPTED_FORMATS`), ``"too large (...)"`` (more
    than :data:`MAX_PIXELS`, or Pillow's decompression-bomb limit, read from the header before
    decoding), ``"too small (...)"`` (shorter side below :data:`MIN_SIDE`: a centre crop would
    blow a few pixels up into a blur), ``"too elongated (...)"`` (sides more than
    :data:`MAX_ASPECT_RATIO` to 1: resizing the shorter side would blow the longer one up),
    ``"truncated or corrupt (...)"``. A file that passes was decoded just as :func:`load_rgb`
    decodes it.
    """
    path = Path(path)
    problem = _file_problem(path)
    if problem is not None:
        return problem
    try:
        with open_image(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                return f"too large ({width}x{height} = {width * height:,} pixels > {MAX_PIXELS:,})"
            if min(width, height) < MIN_SIDE:
                return f"too small ({width}x{height}; shorter side < {MIN_SIDE} px)"
            if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
                return f"too elongated ({width}x{height}; sides more than {MAX_ASPECT_RATIO}:1)"
            _upright_rgb(image)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return (
            "too large (the header declares more pixels than Pillow's decompression-bomb limit, "
            f"{Image.MAX_IMAGE_PIXELS:,}: a decompression bomb?)"
        )
    except UnidentifiedImageError:
        return f"not an image (the course reads {_ACCEPTED_NAMES})"
    except PermissionError as err:
        return f"cannot be read ({err.strerror})"
    except _DECODE_ERRORS as err:
        return f"truncated or corrupt ({_one_line(err)})"
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
