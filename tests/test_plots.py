"""plots.show: every figure reaches the notebook, whatever the matplotlib backend."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from IPython.display import Image

from course_utils import plots


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
