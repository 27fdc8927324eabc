"""plots: every figure reaches the notebook, whatever the backend; one style per network."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from IPython.display import Image
from matplotlib.colors import is_color_like, to_rgb

from course_utils import models, plots


@pytest.mark.parametrize(("photo", "magic"), [(False, b"\x89PNG"), (True, b"\xff\xd8")])
def test_show_displays_the_figure_under_the_agg_backend(
    photo: bool, magic: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COURSE_ARTIFACTS_DIR", str(tmp_path))
    shown = []
    monkeypatch.setattr(plots, "display", shown.append)
    plt.switch_backend("agg")  # where plt.show() displays nothing
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    plots.show(fig, "a_test_figure", photo=photo)
    assert len(shown) == 1 and isinstance(shown[0], Image)
    assert shown[0].data.startswith(magic)
    assert (tmp_path / "figures" / "a_test_figure.png").is_file()
    assert not plt.fignum_exists(fig.number)  # closed, so an inline backend cannot show it twice


def test_network_style_draws_resnet50_blue_and_resnet101_red() -> None:
    styles = {arch: plots.network_style(arch) for arch in models.ARCHITECTURES}
    assert set(styles["resnet50"]) == {"color", "label"}  # matplotlib keyword arguments
    colors = [style["color"] for style in styles.values()]
    assert len(set(colors)) == len(colors) and all(map(is_color_like, colors))
    red, green, blue = to_rgb(styles["resnet50"]["color"])
    assert blue > max(red, green)
    red, green, blue = to_rgb(styles["resnet101"]["color"])
    assert red > max(green, blue)
    with pytest.raises(KeyError):
        plots.network_style("resnet152")
