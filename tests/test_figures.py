"""Figures: the checks every figure passes, every figure of the smoke run, the HTML report in Chromium."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from lesiontrack import figures
from lesiontrack.figures import DATASET_FIGURES, PALETTE, figure_problems, save


def test_checks_catch_overlapping_text_and_foreign_colours(tmp_path):
    """The checks that guard every saved figure do fail: overlapping labels, a colour outside the
    palette, a colormap outside the palette's; a figure that fails is not written."""
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "lung_base_left")
    ax.text(0.52, 0.5, "lung_base_right")
    assert any("overlaps" in p for p in figure_problems(fig))
    plt.close(fig)

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], color="#123456")
    assert any("#123456" in p for p in figure_problems(fig))
    with pytest.raises(ValueError, match="not in PALETTE"):
        save(fig, tmp_path / "bad")
    assert not list(tmp_path.iterdir())

    fig, ax = plt.subplots()
    ax.imshow(np.random.default_rng(0).random((4, 4)), cmap="viridis")
    assert any("viridis" in p for p in figure_problems(fig))
    plt.close(fig)

    with plt.rc_context(figures.STYLE):  # and a figure drawn the package's way passes
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1], color=PALETTE["prediction"], label="multiscale")
        ax.imshow(np.zeros((4, 4)), cmap=figures.SIMILARITY_CMAP)
        ax.legend()
        ax.set(xlabel="error (mm)", title="a title")
        assert figure_problems(fig) == []
        assert [p.suffix for p in save(fig, tmp_path / "good")] == [".png", ".pdf"]


def test_label_heights_keep_their_order_and_spacing():
    heights = figures._spread(np.array([0.99, 0.985, 0.5, 0.49, 0.01]), gap=0.04)
    assert (np.diff(heights) <= -0.04 + 1e-9).all()
    assert heights.max() <= 0.98 + 1e-9 and heights.min() >= 0.02 - 1e-9
    assert abs(heights[2] - 0.5) < 0.05  # a label with room stays beside its point


def test_every_figure_renders_on_the_smoke_run(smoke_run):
    """The default run's figures (each already checked for overlapping text and palette colours when
    saved): per dataset, the training curves and the landmark overlay, PNG and PDF, non-blank."""
    folder = smoke_run / "results" / "figures"
    expected = [folder / "synthetic" / f"{name}.{fmt}" for name in (*DATASET_FIGURES, "landmarks")
                for fmt in ("png", "pdf")]
    expected += [folder / f"training_default.{fmt}" for fmt in ("png", "pdf")]
    for path in expected:
        assert path.is_file() and path.stat().st_size > 5_000, path
        if path.suffix == ".png":
            pixels = np.asarray(Image.open(path).convert("L"), float)
            assert pixels.std() > 10.0, f"{path} looks blank"


def test_figures_command_redraws_a_dataset(smoke_run, tmp_path):
    """``lesiontrack figures`` finds a dataset's files by the Contracts' layout."""
    from lesiontrack.cli import main

    cwd = os.getcwd()
    try:
        os.chdir(smoke_run)  # paths in the tables are relative to the run's folder
        assert main(["figures", "dataset", "--dataset-dir", "results/synthetic", "--out", str(tmp_path),
                     "--methods", "identity", "affine", "multiscale"]) == 0
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"{n}.png" for n in DATASET_FIGURES)


# Clicks the "Tracking" category of the report's menu (as a reader would), then records the file
# names the page lists in <body data-listed="...">, for the DOM dump to show what was rendered.
SHOW_TRACKING = """<script>
window.addEventListener("load", function () {
  function leaves(test) {
    return Array.from(document.querySelectorAll("body *")).filter(
      (n) => n.children.length === 0 && test(n.textContent.trim()));
  }
  setTimeout(function () {
    const menu = leaves((t) => t === "Tracking");
    if (menu.length) { menu[0].click(); }
    setTimeout(function () {
      document.body.dataset.listed = leaves((t) => t.endsWith(".png")).map((n) => n.textContent.trim()).join(",");
    }, 1000);
  }, 1000);
});
</script>"""


def test_report_builds_and_opens_in_chromium(smoke_run, tmp_path, chromium):
    """``snakemake --report`` on the smoke run; headless Chromium loads it, the Tracking category
    lists its three figures once clicked, the landing page names the four categories, and the
    screenshot of the listing is not blank (kept as results/report_screenshot.png to look at)."""
    report = smoke_run / "results" / "report.html"
    built = subprocess.run([sys.executable, "-m", "snakemake", "--report", str(report), "--configfile",
                            "configs/smoke.yaml"], cwd=smoke_run, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    assert report.stat().st_size > 100_000
    html = report.read_text()
    end = html.rfind("</body>")
    view = tmp_path / "report_view.html"
    view.write_text(html[:end] + SHOW_TRACKING + html[end:])
    common = chromium
    dom = subprocess.run([*common, "--dump-dom", view.as_uri()], capture_output=True, text=True, timeout=300)
    assert dom.returncode == 0, dom.stderr[-2000:]
    listed = re.search(r'<body[^>]*data-listed="([^"]*)"', dom.stdout)
    assert listed, "the page did not render (no listing recorded)"
    assert sorted(listed.group(1).split(",")) == [f"results/figures/synthetic/{name}.png" for name in
                                                  ("lesion_over_time", "qualitative", "similarity_scales")]
    landing = subprocess.run([*common, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=300)
    menu = re.sub(r"<script.*?</script>", "", landing.stdout, flags=re.S)  # rendered text, not the data
    for category in ("Data", "Training", "Tracking", "Evaluation"):
        assert f">{category}<" in menu, f"category {category} not on the page"
    screenshot = smoke_run / "results" / "report_screenshot.png"
    shot = subprocess.run([*common, "--window-size=1400,1000", f"--screenshot={screenshot}", view.as_uri()],
                          capture_output=True, text=True, timeout=300)
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    pixels = np.asarray(Image.open(screenshot).convert("L"), float)
    assert pixels.std() > 5.0, "the screenshot is blank"
