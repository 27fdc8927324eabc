"""Plot conventions shared by every notebook: one colour per network, titled, labeled figures.

Importing this module sets seaborn's ``notebook`` context with slightly larger fonts, so that
text stays readable when a wide figure is scaled down to the notebook's width; colours and
axes styles stay matplotlib's.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import Image, display

from course_utils.config import artifacts_dir, display_path
from course_utils.models import ARCHITECTURES

log = logging.getLogger(__name__)

# The same colour for the same class wherever cats and dogs are drawn apart.
CLASS_COLORS: dict[str, str] = {"cat": "#ff7f0e", "dog": "#2ca02c"}


def network_style(arch: str) -> dict[str, str]:
    """Keyword arguments (``color``, ``label``) that draw ``arch`` the same way in every figure.

    Both come from :data:`course_utils.models.ARCHITECTURES` (ResNet-50 blue, ResNet-101 red).
    """
    spec = ARCHITECTURES[arch]
    return {"color": spec.color, "label": spec.label}


DISPLAY_DPI = 100  # figures shown in the notebook
SAVE_DPI = 120  # the PNG files under figures_dir()
CAM_CMAP = "inferno"  # heatmaps: perceptually uniform, readable in grey (not "jet")
FONT_SCALE = 1.15  # on seaborn's "notebook" context (12 pt base)

sns.set_context("notebook", font_scale=FONT_SCALE)


def figures_dir() -> Path:
    """Folder that collects every figure the notebooks save (under the artifacts folder)."""
    path = artifacts_dir() / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: plt.Figure, name: str) -> Path:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` and return the path."""
    path = figures_dir() / f"{name}.png"
    fig.savefig(path, dpi=SAVE_DPI, bbox_inches="tight")
    return path


def show(fig: plt.Figure, name: str, *, photo: bool = False) -> None:
    """Save ``fig`` (see :func:`save_figure`), display it in the notebook and close it.

    The image is rendered here and handed to IPython, so it reaches the notebook whatever the
    matplotlib backend (``MPLBACKEND=agg`` included, where ``plt.show()`` shows nothing). Plots
    are shown as PNG; figures that are mostly photographs (``photo=True``) as JPEG, which keeps
    the committed notebooks small.
    """
    path = save_figure(fig, name)
    image_format = "jpeg" if photo else "png"
    extra = {"pil_kwargs": {"quality": 85}} if photo else {}
    buffer = io.BytesIO()
    fig.savefig(buffer, format=image_format, dpi=DISPLAY_DPI, bbox_inches="tight", **extra)
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format=image_format))
    log.info("saved: %s", display_path(path))
