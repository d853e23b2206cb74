"""Figures: matplotlib panels of the data and results, PNG and PDF, with one palette for all.

Every figure is drawn under :data:`STYLE` with colours from :data:`PALETTE` only (the Okabe-Ito
colour-blind-safe set, black and white, and a grey for grid lines) and images from the
colormaps built on it (:data:`CT_CMAP`, :data:`SIMILARITY_CMAP`); :func:`save` refuses a figure
whose text labels overlap or that draws any other colour (:func:`figure_problems`), so a figure
that reaches ``results/figures`` passed both checks.

Figures of a tracked dataset (:func:`dataset_figures`; file names in :data:`DATASET_FIGURES`):
qualitative panels in the style of the paper's Fig. 2 (best, median and worst case of the reference
method; ground truth a bluish-green circle, prediction a vermillion cross, the target lesion's box),
one lesion over three scans (as Fig. 3), the similarity maps of one lesion at the 5 scales and their
sum, the cumulative distribution of the error per method, CPM@Radius against lesion radius and the
error per axis; :func:`training_curves` (loss per scale per epoch) and :func:`landmark_overlay`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import SimpleITK as sitk
from matplotlib import colors as mcolors
from matplotlib.collections import Collection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.text import Text
from matplotlib.transforms import blended_transform_factory

from lesiontrack.evaluate import hits_radius
from lesiontrack.io import Geometry, atomic_path, named_path, read_image, read_table, volume_paths
from lesiontrack.landmarks import read_landmarks
from lesiontrack.preprocess import window
from lesiontrack.tables import (
    ID_COLUMNS,
    KEY,
    LESION_COLUMNS,
    PER_PAIR_COLUMNS,
    PRED_POINT,
    PREDICTED_COLUMNS,
    QUERY_COLUMNS,
    select_split,
)
from lesiontrack.track.embed import Embeddings
from lesiontrack.track.match import VolumeMaps, similarity_maps

# Okabe-Ito colour-blind-safe palette (+ white and a grid grey): the only colours figures draw with.
PALETTE = {
    "truth": "#009E73",  # bluish green: ground truth
    "prediction": "#D55E00",  # vermillion: predictions
    "landmark": "#56B4E9",  # sky blue
    "accent": "#E69F00",  # orange
    "blue": "#0072B2",
    "yellow": "#F0E442",
    "purple": "#CC79A7",  # reddish purple
    "neutral": "#000000",
    "background": "#FFFFFF",
    "grid": "#999999",
}
CT_CMAP = mcolors.LinearSegmentedColormap.from_list("lesiontrack-ct", [PALETTE["neutral"], PALETTE["background"]])
SIMILARITY_CMAP = mcolors.LinearSegmentedColormap.from_list(
    "lesiontrack-similarity", [PALETTE["neutral"], PALETTE["blue"], PALETTE["landmark"], PALETTE["yellow"]])
COLORMAPS = (CT_CMAP.name, SIMILARITY_CMAP.name)
SCALE_COLOURS = tuple(PALETTE[k] for k in ("blue", "landmark", "truth", "accent", "prediction"))  # scale 1..5
_METHOD_COLOURS = {"multiscale": PALETTE["prediction"], "identity": PALETTE["neutral"], "affine": PALETTE["blue"],
                   "deformable": PALETTE["truth"], "single-scale-fine": PALETTE["accent"],
                   "two-scale": PALETTE["purple"]}
_SPARE_COLOURS = (PALETTE["landmark"], PALETTE["yellow"], PALETTE["grid"])

STYLE = {
    "figure.facecolor": PALETTE["background"], "axes.facecolor": PALETTE["background"],
    "savefig.facecolor": PALETTE["background"], "axes.edgecolor": PALETTE["neutral"],
    "axes.labelcolor": PALETTE["neutral"], "text.color": PALETTE["neutral"], "xtick.color": PALETTE["neutral"],
    "ytick.color": PALETTE["neutral"], "grid.color": PALETTE["grid"], "legend.edgecolor": PALETTE["neutral"],
    "legend.facecolor": PALETTE["background"], "legend.framealpha": 1.0, "patch.edgecolor": PALETTE["neutral"],
    "axes.prop_cycle": matplotlib.cycler(color=[_METHOD_COLOURS[m] for m in _METHOD_COLOURS]),
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 8, "image.cmap": CT_CMAP.name,
}
for _cmap in (CT_CMAP, SIMILARITY_CMAP):
    if _cmap.name not in matplotlib.colormaps:
        matplotlib.colormaps.register(_cmap)

# Display window for soft tissue and lesions (level 0, width 500 HU); lungs show black with vessels.
DISPLAY_WINDOW_HU = (-250.0, 250.0)

DATASET_FIGURES = ("qualitative", "lesion_over_time", "similarity_scales", "error_cdf", "cpm_vs_radius",
                   "axis_errors")
"""The figures :func:`dataset_figures` writes for one dataset (``<name>.png`` and ``<name>.pdf``)."""



SHOWN_ID_CHARS = 24


def shown_id(image_id: object) -> str:
    """An image id as a figure title shows it: NLST's SeriesInstanceUIDs (60 characters) by their
    last characters, which tell the series of one study apart."""
    text = str(image_id)
    return text if len(text) <= SHOWN_ID_CHARS else "…" + text[-(SHOWN_ID_CHARS - 1):]

def method_colours(names: Iterable[str]) -> dict[str, str]:
    """A palette colour per method: fixed for the Contracts' methods, the spare ones for the rest."""
    spare = itertools.cycle(_SPARE_COLOURS)
    return {name: _METHOD_COLOURS.get(name) or next(spare) for name in names}


# --- the checks every saved figure passes ------------------------------------------------------

def _palette_rgb() -> set[tuple[float, float, float]]:
    return {tuple(np.round(mcolors.to_rgb(c), 3)) for c in PALETTE.values()}


def _colour_ok(colour, allowed) -> bool:
    if isinstance(colour, str) and colour.lower() == "none":
        return True
    rgba = mcolors.to_rgba(colour)
    return rgba[3] == 0.0 or tuple(np.round(rgba[:3], 3)) in allowed


def _drawn_texts(fig: Figure) -> list[Text]:
    """The text artists that are drawn: visible, non-empty, and for tick labels only those of ticks
    inside the axis' view."""
    tick_labels: set[int] = set()
    drawn: list[Text] = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            span = high - low
            for ticks in (axis.get_major_ticks(), axis.get_minor_ticks()):
                for tick in ticks:
                    for label in (tick.label1, tick.label2):
                        tick_labels.add(id(label))
                        loc = tick.get_loc()
                        inside = loc is not None and low - 1e-9 * span <= loc <= high + 1e-9 * span
                        if inside and tick.get_visible() and label.get_visible() and label.get_text():
                            drawn.append(label)
    for text in fig.findobj(Text):
        if id(text) in tick_labels or not text.get_visible() or not text.get_text().strip():
            continue
        drawn.append(text)
    return drawn


def figure_problems(fig: Figure) -> list[str]:
    """Why a figure may not be saved: pairs of text labels whose boxes overlap (more than one pixel
    each way), and colours or colormaps outside the palette. Empty when it is fine."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems: list[str] = []
    texts = _drawn_texts(fig)
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # an annotation without its arrow
    for (a, box_a), (b, box_b) in itertools.combinations(zip(texts, boxes, strict=True), 2):
        overlap_x = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        overlap_y = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if overlap_x > 1.0 and overlap_y > 1.0:
            problems.append(f"text {a.get_text()!r} overlaps {b.get_text()!r}")
    allowed = _palette_rgb()
    for artist in fig.findobj():
        colours = []
        if isinstance(artist, Line2D):
            colours = [artist.get_color(), artist.get_markerfacecolor(), artist.get_markeredgecolor()]
        elif isinstance(artist, Patch):
            colours = [artist.get_facecolor(), artist.get_edgecolor()]
        elif isinstance(artist, Collection) and artist.get_array() is not None:  # colour-mapped (a colorbar)
            if artist.get_cmap().name not in COLORMAPS:
                problems.append(f"{type(artist).__name__} with colormap {artist.get_cmap().name!r}, not one of "
                                f"{COLORMAPS}")
            colours = list(artist.get_edgecolors())
        elif isinstance(artist, Collection):
            colours = [*artist.get_facecolors(), *artist.get_edgecolors()]
        elif isinstance(artist, Text) and artist.get_visible() and artist.get_text():
            colours = [artist.get_color()]
        elif isinstance(artist, AxesImage) and artist.get_cmap().name not in COLORMAPS:
            problems.append(f"image with colormap {artist.get_cmap().name!r}, not one of {COLORMAPS}")
        for colour in colours:
            if not _colour_ok(colour, allowed):
                problems.append(f"{type(artist).__name__} colour {mcolors.to_hex(colour)} is not in PALETTE")
    return sorted(set(problems))


def save(fig: Figure, out_base: str | Path, formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 110) -> list[Path]:
    """Check ``fig`` (:func:`figure_problems`) and write ``<out_base>.<format>`` for each format,
    atomically; a figure with problems is not written (ValueError naming them)."""
    out_base = Path(out_base)
    problems = figure_problems(fig)
    if problems:
        plt.close(fig)
        raise ValueError(f"figure {out_base}: " + "; ".join(problems))
    written = []
    for fmt in formats:
        path = out_base.with_name(f"{out_base.name}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt)
        written.append(path)
    plt.close(fig)
    return written


_VIEWS = (("axial", 2), ("coronal", 1), ("sagittal", 0))  # view name, world axis held fixed


def _plane(volume_zyx: np.ndarray, geometry: Geometry, center_mm: np.ndarray, fixed_axis: int):
    """2D slice through ``center_mm`` perpendicular to world axis ``fixed_axis`` and its mm extent.

    Returns (image rows x cols, extent for imshow, (row axis, col axis)). Assumes an axis-aligned
    (identity) direction, which synthetic and resampled volumes have.
    """
    index = np.rint(geometry.world_to_index(center_mm)[0]).astype(int)
    index = np.clip(index, 0, np.asarray(geometry.size) - 1)
    origin, spacing, size = map(np.asarray, (geometry.origin, geometry.spacing, geometry.size))
    lo = origin - spacing / 2
    hi = origin + (size - 0.5) * spacing
    if fixed_axis == 2:  # axial: rows y (anterior up), cols x
        plane, rows, cols = volume_zyx[index[2]], 1, 0
        extent = (lo[0], hi[0], hi[1], lo[1])
    elif fixed_axis == 1:  # coronal: rows z (head up), cols x
        plane, rows, cols = volume_zyx[:, index[1], :], 2, 0
        extent = (lo[0], hi[0], lo[2], hi[2])
    else:  # sagittal: rows z, cols y
        plane, rows, cols = volume_zyx[:, :, index[0]], 2, 1
        extent = (lo[1], hi[1], lo[2], hi[2])
    return plane, extent, (rows, cols)


def synthetic_preview(dataset_dir: str | Path, out_png: str | Path,
                      window_hu: tuple[float, float] = DISPLAY_WINDOW_HU) -> Path:
    """Baseline and first follow-up of the first test subject in three orthogonal views through one
    tracked lesion, with ground-truth landmarks and lesions marked."""
    dataset_dir = Path(dataset_dir)
    images = read_table(dataset_dir / "images.csv", required=["image_id", "subject_id", "split", "timepoint", "path"])
    lesions = read_table(dataset_dir / "lesions.csv", required=LESION_COLUMNS)
    pairs = read_table(dataset_dir / "pairs.csv", required=QUERY_COLUMNS)
    test = images[images["split"] == "test"].sort_values(["subject_id", "timepoint"])
    subject = test["subject_id"].iloc[0]
    scans = test[test["subject_id"] == subject]
    timepoint = scans.set_index("image_id")["timepoint"]
    first, second = sorted(set(scans["timepoint"]))[:2]
    tracked = pairs[(pairs["source_image"].map(timepoint) == first) & (pairs["target_image"].map(timepoint) == second)]
    if tracked.empty:
        raise ValueError(f"{dataset_dir / 'pairs.csv'}: no lesion pair of {subject} from timepoint {first} to {second}")
    largest = tracked.sort_values("target_radius_mm", ascending=False).iloc[0]
    tracked_id, baseline, followup = largest["lesion_id"], largest["source_image"], largest["target_image"]

    fig, axes = plt.subplots(2, 3, figsize=(13, 9), constrained_layout=True)
    for row, image_id in enumerate((baseline, followup)):
        path = scans.set_index("image_id").loc[image_id, "path"]
        image = read_image(path)
        geometry = Geometry.of(image)
        volume = window(sitk.GetArrayViewFromImage(image), window_hu)
        here = lesions[lesions["image_id"] == image_id]
        focus = here[here["lesion_id"] == tracked_id][["x", "y", "z"]].to_numpy(float)[0]
        truth_path = named_path(dataset_dir / "truth", image_id, suffix=".csv")
        landmarks = read_table(truth_path, required=["name", "x", "y", "z"]) if truth_path.exists() else pd.DataFrame()
        for col, (view, fixed) in enumerate(_VIEWS):
            ax = axes[row, col]
            plane, extent, (r_axis, c_axis) = _plane(volume, geometry, focus, fixed)
            ax.imshow(plane, cmap=CT_CMAP, vmin=0, vmax=1, extent=extent, origin="upper" if fixed == 2 else "lower",
                      interpolation="bilinear")
            for _, lm in landmarks.iterrows():
                point = lm[["x", "y", "z"]].to_numpy(float)
                if abs(point[fixed] - focus[fixed]) <= 6.0:
                    ax.plot(point[c_axis], point[r_axis], "o", ms=4, mfc="none", mec=PALETTE["landmark"], mew=1.2)
            for _, lesion in here.iterrows():
                point = lesion[["x", "y", "z"]].to_numpy(float)
                radius = max(float(lesion["radius_mm"]), 3.0)
                if abs(point[fixed] - focus[fixed]) <= radius:
                    colour = PALETTE["truth"] if lesion["lesion_id"] == tracked_id else PALETTE["accent"]
                    ax.add_patch(plt.Circle((point[c_axis], point[r_axis]), radius + 3.0, fill=False,
                                            ec=colour, lw=1.4))
            ax.set_title(f"{shown_id(image_id)} ({'baseline' if row == 0 else 'follow-up'}), {view}", fontsize=10)
            ax.set_xlabel("xyz"[c_axis] + " (mm, LPS)", fontsize=8)
            ax.set_ylabel("xyz"[r_axis] + " (mm, LPS)", fontsize=8)
            ax.tick_params(labelsize=7)
    handles = [
        plt.Line2D([], [], ls="none", marker="o", mfc="none", mec=PALETTE["truth"], ms=10,
                   label=f"tracked lesion {tracked_id}"),
        plt.Line2D([], [], ls="none", marker="o", mfc="none", mec=PALETTE["accent"], ms=10, label="other lesions"),
        plt.Line2D([], [], ls="none", marker="o", mfc="none", mec=PALETTE["landmark"], ms=5,
                   label="ground-truth landmarks (within 6 mm of the plane)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.04))
    fig.suptitle(f"Synthetic subject {subject}: baseline and follow-up (world mm; window {window_hu[0]:.0f} to "
                 f"{window_hu[1]:.0f} HU)", fontsize=12)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return out_png


def _axis_aligned(image: sitk.Image) -> sitk.Image:
    """The image with an identity direction (reoriented to LPS; oblique scans resampled linearly)."""
    image = sitk.DICOMOrient(image, "LPS")
    if np.allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-4):
        return image
    corners = [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
               for corner in np.ndindex(2, 2, 2) for corner in [np.asarray(corner) * (np.asarray(image.GetSize()) - 1)]]
    lo, hi = np.min(corners, axis=0), np.max(corners, axis=0)
    spacing = float(min(image.GetSpacing()))
    size = [int(n) for n in np.ceil((hi - lo) / spacing) + 1]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, tuple(lo), (spacing,) * 3,
                         tuple(np.eye(3).ravel()), -1024.0, sitk.sitkFloat32)


def display_volume(image: sitk.Image, window_hu: tuple[float, float] = DISPLAY_WINDOW_HU
                   ) -> tuple[np.ndarray, Geometry]:
    """A scan ready for :func:`tracking_qa`: axis-aligned, windowed to [0, 1], and its grid."""
    image = _axis_aligned(image)
    return window(sitk.GetArrayViewFromImage(image), window_hu), Geometry.of(image)


def _show_view(ax, volume: np.ndarray, geometry: Geometry, point: np.ndarray, fixed_axis: int, circle_mm: float,
               colour: str) -> tuple[int, int]:
    """The plane of a display volume through ``point`` perpendicular to ``fixed_axis``, a circle of
    ``circle_mm`` around the point; returns the plane's (row, column) world axes."""
    plane, extent, (r_axis, c_axis) = _plane(volume, geometry, point, fixed_axis)
    ax.imshow(plane, cmap=CT_CMAP, vmin=0, vmax=1, extent=extent, origin="upper" if fixed_axis == 2 else "lower",
              interpolation="bilinear")
    ax.add_patch(plt.Circle((point[c_axis], point[r_axis]), circle_mm, fill=False, ec=colour, lw=1.4))
    return r_axis, c_axis


def tracking_qa_images(source_image: sitk.Image, target_image: sitk.Image, points: pd.DataFrame,
                       tracked: pd.DataFrame, qa_dir: str | Path, method: str) -> list[Path]:
    """One :func:`tracking_qa` picture per lesion of an own-data run into ``qa_dir``
    (``<id>.png``, the id written by :func:`lesiontrack.io.safe_name`):
    ``points`` (``lesion_id, x, y, z[, radius_mm]``) on the source scan, ``tracked`` (the same
    rows: ``x, y, z, confidence``) on the target scan."""
    radius = points["radius_mm"].to_numpy(float) if "radius_mm" in points else np.full(len(points), np.nan)
    shown = display_volume(source_image), display_volume(target_image)
    source_mm, predicted_mm = points[["x", "y", "z"]].to_numpy(float), tracked[["x", "y", "z"]].to_numpy(float)
    confidence = tracked["confidence"].to_numpy(float)
    return [tracking_qa(*shown, source_mm[k], predicted_mm[k], named_path(qa_dir, lesion_id, suffix=".png"),
                        title=f"{lesion_id} ({method}, confidence {confidence[k]:.3f})", radius_mm=radius[k])
            for k, lesion_id in enumerate(points["lesion_id"].astype(str))]


def tracking_qa(source: tuple[np.ndarray, Geometry], target: tuple[np.ndarray, Geometry], source_mm: np.ndarray,
                predicted_mm: np.ndarray, out_png: str | Path, title: str = "", radius_mm: float = float("nan")
                ) -> Path:
    """Source and target scans (from :func:`display_volume`, prepared once per scan) in three
    orthogonal views through the source point and the predicted target point (marked; circle of
    the lesion radius where known)."""
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.5), constrained_layout=True)
    marker = radius_mm + 3.0 if np.isfinite(radius_mm) else 8.0
    for row, ((volume, geometry), point, label, colour) in enumerate((
            (source, source_mm, "source", PALETTE["truth"]), (target, predicted_mm, "target", PALETTE["prediction"]))):
        point = np.asarray(point, float)
        for col, (view, fixed) in enumerate(_VIEWS):
            ax = axes[row, col]
            r_axis, c_axis = _show_view(ax, volume, geometry, point, fixed, marker, colour)
            ax.plot(point[c_axis], point[r_axis], "+", color=colour, ms=6)
            ax.set_title(f"{label}, {view}", fontsize=10)
            ax.set_xlabel("xyz"[c_axis] + " (mm, LPS)", fontsize=8)
            ax.set_ylabel("xyz"[r_axis] + " (mm, LPS)", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"{title}\nsource point {tuple(np.round(source_mm, 1))} mm -> predicted "
                 f"{tuple(np.round(predicted_mm, 1))} mm", fontsize=11)
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out_png


def history_picture(shown: list[tuple[np.ndarray, Geometry]], history: pd.DataFrame, lesion_id: str,
                    out_base: str | Path, method: str, radius_mm: float = float("nan"), half_mm: float = 40.0
                    ) -> list[Path]:
    """One followed lesion at every timepoint (as the paper's Fig. 3): a column per scan (from
    :func:`display_volume`, prepared once per scan), axial, coronal and sagittal views through its
    position there, each the same ``half_mm`` field and window; the titles give the status and the
    confidence. A scan before the lesion was first seen stays empty. ``history``: ``follow``'s;
    ``radius_mm``: the lesion's where it was first seen (the circle drawn around it)."""
    rows = history[history["lesion_id"].astype(str) == lesion_id].set_index("timepoint")
    marker = radius_mm + 3.0 if np.isfinite(radius_mm) else 8.0  # a circle around the lesion (mm)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(_VIEWS), len(shown), figsize=(2.6 * len(shown), 7.6), squeeze=False,
                                 constrained_layout=True)
        for k, (volume, geometry) in enumerate(shown):
            if k not in rows.index:
                for ax in axes[:, k]:
                    ax.set_axis_off()
                axes[0, k].set_title(f"t{k}: not yet seen")
                continue
            row = rows.loc[k]
            point = row[["x", "y", "z"]].to_numpy(float)
            colour = PALETTE["truth"] if k == rows.index.min() else PALETTE["prediction"]
            for r, (view, fixed) in enumerate(_VIEWS):
                ax = axes[r, k]
                r_axis, c_axis = _show_view(ax, volume, geometry, point, fixed, marker, colour)
                ax.set_xlim(point[c_axis] - half_mm, point[c_axis] + half_mm)
                low, high = point[r_axis] - half_mm, point[r_axis] + half_mm
                ax.set_ylim((high, low) if fixed == 2 else (low, high))
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    ax.set_ylabel(view)
            confidence = "" if not np.isfinite(row["confidence"]) else f", {row['confidence']:.2f}"
            axes[0, k].set_title(f"t{k}: {row['status']}{confidence}")
        handles = [Line2D([], [], ls="none", marker="o", mfc="none", mec=PALETTE[key], ms=10, label=label)
                   for key, label in (("truth", "where first seen"), ("prediction", "where tracked"))]
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
        fig.suptitle(f"{method}: lesion {lesion_id}")
        return save(fig, out_base, formats=("png",), dpi=80)


# --- figures of a tracked dataset ---------------------------------------------------------------

def _axial_crop(volume: np.ndarray, geometry: Geometry, centre_mm: np.ndarray, half_mm: float
                ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Axial slice of an axis-aligned (identity-direction) volume through ``centre_mm``, cropped to
    a square of ``half_mm`` around it (clipped at the volume's edge), and its imshow extent."""
    plane = _plane(volume, geometry, centre_mm, 2)[0]
    spacing = np.asarray(geometry.spacing, float)
    origin = np.asarray(geometry.origin, float)
    index = (np.asarray(centre_mm, float)[:2] - origin[:2]) / spacing[:2]
    half = np.ceil(half_mm / spacing[:2]).astype(int)
    lo = np.clip(np.floor(index).astype(int) - half, 0, np.asarray(plane.shape[::-1]) - 1)
    hi = np.clip(np.floor(index).astype(int) + half + 1, lo + 1, np.asarray(plane.shape[::-1]))
    crop = plane[lo[1]:hi[1], lo[0]:hi[0]]
    x0, y0 = origin[:2] + (lo - 0.5) * spacing[:2]
    x1, y1 = origin[:2] + (hi - 0.5) * spacing[:2]
    return crop, (x0, x1, y1, y0)


class _Volumes:
    """Display volumes (axis-aligned, windowed to [0, 1]) loaded once each."""

    def __init__(self, paths: dict[str, str | Path], window_hu: tuple[float, float]) -> None:
        self.paths, self.window_hu, self.cache = paths, window_hu, {}

    def __call__(self, image_id: str) -> tuple[np.ndarray, Geometry]:
        if image_id not in self.cache:
            if image_id not in self.paths:
                raise ValueError(f"no volume for image {image_id!r} in the resampled tables")
            self.cache[image_id] = display_volume(read_image(self.paths[image_id]), self.window_hu)
        return self.cache[image_id]


def _point(row: pd.Series, prefix: str) -> np.ndarray:
    return row[[f"{prefix}_x", f"{prefix}_y", f"{prefix}_z"]].to_numpy(float)


def _show_axial(ax, volumes: _Volumes, image_id: str, centre: np.ndarray, half_mm: float = 60.0) -> None:
    crop, extent = _axial_crop(*volumes(image_id), centre, half_mm)
    ax.imshow(crop, cmap=CT_CMAP, vmin=0, vmax=1, extent=extent, origin="upper", interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


def _mark_truth(ax, point: np.ndarray, radius_mm: float) -> None:
    ax.add_patch(plt.Circle((point[0], point[1]), max(radius_mm, 2.0) + 3.0, fill=False, ec=PALETTE["truth"], lw=1.5))


def _mark_prediction(ax, point: np.ndarray) -> None:
    ax.plot(point[0], point[1], "x", color=PALETTE["prediction"], ms=9, mew=2.0)


def _legend_handles(box: bool = True) -> list:
    handles = [
        Line2D([], [], ls="none", marker="o", mfc="none", mec=PALETTE["truth"], ms=10, label="ground truth"),
        Line2D([], [], ls="none", marker="x", color=PALETTE["prediction"], ms=9, mew=2.0, label="prediction"),
    ]
    if box:
        handles.append(Rectangle((0, 0), 1, 1, fill=False, ec=PALETTE["truth"], ls="--", label="target lesion box"))
    return handles


def _ranked(pairs: pd.DataFrame, predictions: pd.DataFrame, errors: pd.DataFrame) -> pd.DataFrame:
    """Pairs with their prediction and error, from the smallest error to the largest."""
    merged = errors[[*KEY, "distance_mm"]].merge(pairs, on=KEY).merge(predictions[[*KEY, *PRED_POINT]], on=KEY)
    return merged.sort_values(["distance_mm", *KEY]).reset_index(drop=True)


def qualitative(pairs: pd.DataFrame, predictions: pd.DataFrame, errors: pd.DataFrame, volumes: _Volumes,
                out_base: str | Path, method: str) -> list[Path]:
    """The paper's Fig. 2 style: for the best, median and worst pair of ``method`` (by error), the
    source scan's axial slice through the source lesion and the target's through the ground truth
    (circle), with the prediction (cross; its distance from the slice in the title) and the target
    lesion's box."""
    merged = _ranked(pairs, predictions, errors)
    cases = {"best": merged.iloc[0], "median": merged.iloc[len(merged) // 2], "worst": merged.iloc[-1]}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(3, 2, figsize=(7.2, 10.5), constrained_layout=True)
        for row, (case, pair) in enumerate(cases.items()):
            source, target, predicted = _point(pair, "source"), _point(pair, "target"), _point(pair, "pred")
            _show_axial(axes[row, 0], volumes, pair["source_image"], source)
            _mark_truth(axes[row, 0], source, float(pair.get("source_radius_mm", np.nan)))
            axes[row, 0].set_title(f"{case}: {shown_id(pair['source_image'])} (source)\n"
                                   f"{pair['lesion_id']}, {pair['direction']}")
            _show_axial(axes[row, 1], volumes, pair["target_image"], target)
            _mark_truth(axes[row, 1], target, float(pair["target_radius_mm"]))
            box = [f"target_box_{m}_{a}" for m in ("min", "max") for a in "xy"]
            if set(box) <= set(pair.index):
                (x0, y0), (x1, y1) = pair[box[:2]].to_numpy(float), pair[box[2:]].to_numpy(float)
                axes[row, 1].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=PALETTE["truth"],
                                                 ls="--", lw=1.0))
            _mark_prediction(axes[row, 1], predicted)
            axes[row, 1].set_xlim(axes[row, 1].get_xlim())
            axes[row, 1].set_title(f"{shown_id(pair['target_image'])} (target): error {pair['distance_mm']:.1f} mm\n"
                                   f"prediction {predicted[2] - target[2]:+.1f} mm from this slice along z")
        fig.legend(handles=_legend_handles(), loc="outside lower center", ncol=3, frameon=False)
        fig.suptitle(f"{method}: best, median and worst of {len(merged)} pairs (axial, 120 mm field)")
        return save(fig, out_base)


def lesion_over_time(pairs: pd.DataFrame, predictions: pd.DataFrame, volumes: _Volumes, out_base: str | Path,
                     method: str) -> list[Path]:
    """One lesion over three scans (as the paper's Fig. 3): the largest lesion with forward pairs
    from its first to its second and from its second to its third scan; each later scan shows the
    ground truth and the prediction from the scan before (tracked from that scan's ground truth).
    Where no lesion of the pairs has three scans, its largest lesion's one pair, and the title says so."""
    tracked = pairs.merge(predictions[[*KEY, *PRED_POINT]], on=KEY)
    forward = tracked[tracked["direction"] == "forward"] if (tracked["direction"] == "forward").any() else tracked
    radius = "source_radius_mm" if "source_radius_mm" in forward else "target_radius_mm"
    chains = []
    for first in forward.to_dict("records"):
        nxt = forward[(forward["lesion_id"] == first["lesion_id"]) & (forward["source_image"] == first["target_image"])]
        chains.append((0 if nxt.empty else 1, float(first[radius]), first["pair_id"], pd.Series(first),
                       None if nxt.empty else nxt.iloc[0]))
    if not chains:
        raise ValueError("no pair with a prediction to draw")
    three, _, _, one, two = max(chains, key=lambda c: c[:3])
    steps = [one] if two is None else [one, two]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(steps) + 1, figsize=(3.5 * (len(steps) + 1), 4.4), constrained_layout=True)
        _show_axial(axes[0], volumes, one["source_image"], _point(one, "source"))
        _mark_truth(axes[0], _point(one, "source"), float(one.get("source_radius_mm", np.nan)))
        axes[0].set_title(f"{shown_id(one['source_image'])}: lesion marked")
        for ax, pair in zip(axes[1:], steps, strict=True):
            target, predicted = _point(pair, "target"), _point(pair, "pred")
            _show_axial(ax, volumes, pair["target_image"], target)
            _mark_truth(ax, target, float(pair["target_radius_mm"]))
            _mark_prediction(ax, predicted)
            ax.set_xlim(ax.get_xlim())
            ax.set_title(f"{shown_id(pair['target_image'])}: error {np.linalg.norm(predicted - target):.1f} mm")
        fig.legend(handles=_legend_handles(box=False), loc="outside lower center", ncol=2, frameon=False)
        fig.suptitle(f"{method}: lesion {one['lesion_id']} over three scans" if three else
                     f"{method}: lesion {one['lesion_id']} (no lesion of these pairs has three scans)")
        return save(fig, out_base)


def similarity_scales(pair: pd.Series, maps: dict[int, np.ndarray], geometry: Geometry, out_base: str | Path
                      ) -> list[Path]:
    """The cosine-similarity map of one lesion at each scale and their sum (the tracker's score),
    on the target's axial slice through the ground truth; ground truth (circle) and the sum's
    maximum (cross)."""
    total = sum(maps.values())
    peak_zyx = np.unravel_index(int(np.argmax(total)), total.shape)
    peak = geometry.index_to_world(np.asarray(peak_zyx[::-1], float))[0]
    target = _point(pair, "target")
    total_plane, extent, _ = _plane(total, geometry, target, 2)  # axial slice through the ground truth
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, 3, figsize=(10.5, 7.6), constrained_layout=True)
        panels = [(f"scale {k}", _plane(maps[k], geometry, target, 2)[0], (-1.0, 1.0)) for k in sorted(maps)] + [
            ("sum of the scales", total_plane, (float(total_plane.min()), float(total.max())))]
        for ax, (title, plane, (low, high)) in zip(axes.ravel(), panels, strict=True):
            image = ax.imshow(plane, cmap=SIMILARITY_CMAP, vmin=low, vmax=high, extent=extent,
                              origin="upper", interpolation="nearest")
            _mark_truth(ax, target, float(pair["target_radius_mm"]))
            _mark_prediction(ax, peak)
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(image, ax=ax, shrink=0.8, label="cosine similarity" if title != panels[-1][0] else "sum")
        fig.legend(handles=[*_legend_handles(box=False)[:1],
                            Line2D([], [], ls="none", marker="x", color=PALETTE["prediction"], ms=9, mew=2.0,
                                   label="maximum of the sum (the prediction)")],
                   loc="outside lower center", ncol=2, frameon=False)
        fig.suptitle(f"{pair['pair_id']} ({pair['direction']}): similarity over {shown_id(pair['target_image'])}, "
                     f"axial slice through the ground truth")
        return save(fig, out_base)


def error_cdf(errors: dict[str, pd.DataFrame], out_base: str | Path) -> list[Path]:
    """Cumulative distribution of the error (mm) per method."""
    colours = method_colours(errors)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
        limit = 60.0
        for name, table in errors.items():
            distance = np.sort(table["distance_mm"].to_numpy(float))
            share = np.arange(1, len(distance) + 1) / len(distance)
            ax.step(np.r_[0.0, distance], np.r_[0.0, share], where="post", color=colours[name], lw=1.6,
                    label=f"{name} (median {np.median(distance):.1f} mm)")
        ax.axvline(10.0, color=PALETTE["grid"], ls=":", lw=1.0)
        ax.set(xlim=(0, limit), ylim=(0, 1.0), xlabel="error (mm)", ylabel="share of pairs with error below",
               title=f"Cumulative error distribution ({len(next(iter(errors.values())))} pairs; dotted: 10 mm)")
        ax.grid(True, lw=0.4)
        ax.legend(loc="lower right")
        return save(fig, out_base)


def cpm_vs_radius(errors: dict[str, pd.DataFrame], out_base: str | Path, bins: int = 4) -> list[Path]:
    """CPM@Radius (share of pairs whose error is within the lesion's radius) per method, in lesion
    radius quartiles (x: the median radius of each)."""
    colours = method_colours(errors)
    reference = next(iter(errors.values()))
    edges = np.unique(np.quantile(reference["target_radius_mm"].to_numpy(float), np.linspace(0, 1, bins + 1)))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
        for name, table in errors.items():
            radius = table["target_radius_mm"].to_numpy(float)
            hits = hits_radius(table["distance_mm"].to_numpy(float), radius)
            which = np.clip(np.searchsorted(edges, radius, side="right") - 1, 0, len(edges) - 2)
            xs = [float(np.median(radius[which == b])) for b in range(len(edges) - 1) if (which == b).any()]
            ys = [100.0 * float(hits[which == b].mean()) for b in range(len(edges) - 1) if (which == b).any()]
            ax.plot(xs, ys, "-o", color=colours[name], lw=1.4, ms=4, label=name)
        ax.set(ylim=(0, 102), xlabel="lesion radius (mm; median of each quartile)", ylabel="CPM@Radius (%)",
               title="CPM@Radius by lesion size")
        ax.grid(True, lw=0.4)
        ax.legend(loc="lower right")
        return save(fig, out_base)


def axis_errors(errors: dict[str, pd.DataFrame], out_base: str | Path) -> list[Path]:
    """Absolute error along x (left-right), y (antero-posterior) and z (cranio-caudal) per method."""
    names = list(errors)[::-1]  # first method on top
    colours = method_colours(errors)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(10.5, 0.5 * len(names) + 2.0), sharey=True, constrained_layout=True)
        for ax, axis in zip(axes, "xyz", strict=True):
            data = [np.maximum(errors[n][f"error_{axis}"].to_numpy(float), 0.05) for n in names]
            parts = ax.boxplot(data, orientation="horizontal", widths=0.6, patch_artist=True, whis=(5, 95),
                               showfliers=False, medianprops={"color": PALETTE["neutral"]},
                               whiskerprops={"color": PALETTE["neutral"]}, capprops={"color": PALETTE["neutral"]})
            for box, name in zip(parts["boxes"], names, strict=True):
                box.set(facecolor=colours[name], edgecolor=PALETTE["neutral"], alpha=0.8)
            ax.set_xscale("log")
            ax.set(xlabel=f"|error {axis}| (mm)", title={"x": "left-right (x)", "y": "antero-posterior (y)",
                                                        "z": "cranio-caudal (z)"}[axis])
            ax.grid(True, axis="x", lw=0.4)
        axes[0].set_yticks(range(1, len(names) + 1), names)
        fig.suptitle("Error per axis (box: quartiles, whiskers: 5th-95th percentile)")
        return save(fig, out_base)


def training_curves(log: pd.DataFrame, out_base: str | Path, formats: tuple[str, ...] = ("png", "pdf"),
                    title: str = "") -> list[Path]:
    """Training and validation loss per epoch (mean over scales) and the validation loss per scale."""
    with plt.rc_context(STYLE):
        fig, (ax_total, ax_scales) = plt.subplots(1, 2, figsize=(10.5, 4.0), constrained_layout=True)
        if not log.empty:
            ax_total.plot(log["epoch"], log["train_loss"], "-o", color=PALETTE["truth"], ms=3, label="training")
            ax_total.plot(log["epoch"], log["validation_loss"], "-s", color=PALETTE["prediction"], ms=3,
                          label="validation")
            for k, colour in enumerate(SCALE_COLOURS, start=1):
                if f"validation_loss_s{k}" in log:
                    ax_scales.plot(log["epoch"], log[f"validation_loss_s{k}"], "-", color=colour, label=f"scale {k}")
            ax_total.legend(loc="upper right")
            ax_scales.legend(loc="upper right", ncol=2)
        ax_total.set(xlabel="epoch", ylabel="InfoNCE loss (mean over scales)", title="loss")
        ax_scales.set(xlabel="epoch", ylabel="validation loss", title="validation loss per scale (1 = finest)")
        for ax in (ax_total, ax_scales):
            ax.grid(True, lw=0.4)
        if title:
            fig.suptitle(title)
        return save(fig, out_base, formats)


def _spread(heights: np.ndarray, gap: float) -> np.ndarray:
    """Label heights (axes fraction, in descending order) moved apart to at least ``gap`` (less
    where they do not fit) and kept within [gap / 2, 1 - gap / 2], each as near its point as that allows."""
    n = len(heights)
    if n == 0:
        return heights
    gap = min(gap, 1.0 / n)
    out = np.clip(np.asarray(heights, float), gap / 2, 1 - gap / 2)
    for i in range(1, n):  # downwards: each at least a gap below the one above
        out[i] = min(out[i], out[i - 1] - gap)
    out[-1] = max(out[-1], gap / 2)
    for i in range(n - 2, -1, -1):  # upwards: back inside, each at least a gap above the one below
        out[i] = max(out[i], out[i + 1] + gap)
    return out


def landmark_overlay(image: sitk.Image, landmarks: pd.DataFrame, out_base: str | Path, title: str = "") -> list[Path]:
    """Landmarks on one scan: a coronal and a sagittal mean-intensity projection (a radiograph-like
    view, so that every landmark shows wherever it lies in depth), each landmark a dot; in the
    coronal view its name in a column beside the image (the patient's right on the image's left,
    as radiologists read), ordered by height, with a leader line."""
    image = _axis_aligned(image)
    geometry = Geometry.of(image)
    hu = np.clip(sitk.GetArrayViewFromImage(image).astype(np.float32), -1000.0, 1500.0)
    origin, spacing, size = map(np.asarray, (geometry.origin, geometry.spacing, geometry.size))
    lo, hi = origin - spacing / 2, origin + (size - 0.5) * spacing
    points = landmarks.sort_values("z", ascending=False).reset_index(drop=True)
    with plt.rc_context(STYLE):
        # columns: names of the patient's right | coronal | names of the left | sagittal
        fig, (names_right, ax_cor, names_left, ax_sag) = plt.subplots(
            1, 4, figsize=(13.0, 6.8), width_ratios=[0.22 * size[0], size[0], 0.22 * size[0], size[1]],
            layout="constrained")
        for ax, axis, (c0, c1), column in ((ax_cor, 1, (lo[0], hi[0]), "x"), (ax_sag, 2, (lo[1], hi[1]), "y")):
            projection = hu.mean(axis=axis)  # (z, x) or (z, y)
            low, high = np.percentile(projection, [1, 99.5])
            ax.imshow(np.clip((projection - low) / max(high - low, 1e-6), 0, 1), cmap=CT_CMAP, vmin=0, vmax=1,
                      extent=(c0, c1, lo[2], hi[2]), origin="lower", aspect="equal")
            ax.plot(points[column], points["z"], "o", color=PALETTE["landmark"], mec=PALETTE["neutral"], ms=5, mew=0.6)
            ax.set_xlabel(f"{column} (mm, LPS)")
        ax_sag.set_ylabel("z (mm)")
        ax_sag.yaxis.set_label_position("right")
        ax_sag.yaxis.tick_right()
        ax_cor.set_yticks([])
        # radiological convention: the patient's right (LPS -x) on the viewer's left, as x grows
        ax_cor.set_title("coronal projection (patient's right on the left)")
        ax_sag.set_title("sagittal projection (anterior on the left)")
        midline = float(np.median(points["x"])) if len(points) else 0.0
        for names, side, anchor, align in ((names_right, "right", 1.0, "right"), (names_left, "left", 0.0, "left")):
            names.set_axis_off()
            names.set_zorder(ax_cor.get_zorder() + 1)  # leader lines over the image
            chosen = points[(points["x"] < midline) if side == "right" else (points["x"] >= midline)]
            heights = _spread((chosen["z"].to_numpy(float) - lo[2]) / (hi[2] - lo[2]), gap=0.04)
            beside = blended_transform_factory(names.transAxes, ax_cor.transAxes)  # x: column, y: image
            for y, lm in zip(heights, chosen.itertuples(index=False), strict=True):
                label = names.annotate(lm.name, xy=(lm.x, lm.z), xycoords=ax_cor.transData, xytext=(anchor, y),
                                       textcoords=beside, ha=align, va="center", fontsize=6.5,
                                       arrowprops={"arrowstyle": "-", "color": PALETTE["landmark"], "lw": 0.6,
                                                   "shrinkA": 1, "shrinkB": 3})
                label.set_in_layout(False)  # the leader line crosses the image: keep it out of the layout
        fig.suptitle(title or f"{len(points)} landmarks")
        return save(fig, out_base)


def dataset_figures(pairs_csv: str | Path, errors_csv: dict[str, str | Path], predictions_csv: str | Path,
                    resampled_tables: list[str | Path], embeddings_dir: str | Path | None, out_dir: str | Path,
                    split: str | None = "test", reference: str = "multiscale",
                    window_hu: tuple[float, float] = DISPLAY_WINDOW_HU) -> list[Path]:
    """All :data:`DATASET_FIGURES` of one tracked dataset into ``out_dir``.

    ``errors_csv``: method name -> per-pair metrics (``evaluate``'s ``<method>-pairs.csv``), in
    table order; ``predictions_csv``: the ``reference`` method's predictions; ``resampled_tables``:
    the volumes (``image_id, path``); ``embeddings_dir``: the reference model's embedding caches
    (``<image_id>/``) for the similarity maps.
    """
    out_dir = Path(out_dir)
    pairs = select_split(read_table(pairs_csv, required=ID_COLUMNS), split, str(pairs_csv))
    errors = {name: read_table(path, required=PER_PAIR_COLUMNS) for name, path in errors_csv.items()}
    if reference not in errors:
        raise ValueError(f"reference method {reference!r} is not among the methods {sorted(errors)}")
    predictions = read_table(predictions_csv, required=PREDICTED_COLUMNS)
    volumes = _Volumes(volume_paths(resampled_tables), window_hu)
    written = qualitative(pairs, predictions, errors[reference], volumes, out_dir / "qualitative", reference)
    written += lesion_over_time(pairs, predictions, volumes, out_dir / "lesion_over_time", reference)
    if embeddings_dir is not None:
        ranked = _ranked(pairs, predictions, errors[reference])
        pair = ranked.iloc[len(ranked) // 2]
        source, target = (VolumeMaps(Embeddings.load(named_path(embeddings_dir, pair[f"{end}_image"])))
                          for end in ("source", "target"))
        maps = {k: m.numpy() for k, m in similarity_maps(source, target, _point(pair, "source")).items()}
        written += similarity_scales(pair, maps, target.geometry, out_dir / "similarity_scales")
    written += error_cdf(errors, out_dir / "error_cdf")
    written += cpm_vs_radius(errors, out_dir / "cpm_vs_radius")
    written += axis_errors(errors, out_dir / "axis_errors")
    return written


def landmark_figure(volume_tables: list[str | Path], landmark_tables: list[str | Path] | None, out_base: str | Path,
                    split: str | None = "test", truth_dir: str | Path | None = None,
                    split_tables: list[str | Path] = ()) -> list[Path]:
    """:func:`landmark_overlay` of the first volume (``volume_tables``: ``image_id, path``) of
    ``split`` (known from ``split_tables``: ``image_id, split``; else the first volume) that has
    a landmark table: from the landmark shard tables (``image_id, landmarks``), or, for the
    synthetic oracle, ``truth_dir/<image_id>.csv``."""
    volumes = pd.concat([read_table(t, required=["image_id", "path"]) for t in volume_tables], ignore_index=True)
    if split_tables:
        splits = pd.concat([read_table(t, required=["image_id", "split"]) for t in split_tables], ignore_index=True)
        volumes = volumes.merge(splits[["image_id", "split"]], on="image_id", how="left")
    if truth_dir is not None:
        truth = {i: named_path(truth_dir, i, suffix=".csv") for i in volumes["image_id"]}
        tables = {i: path for i, path in truth.items() if path.exists()}
    else:
        shards = pd.concat([read_table(t, required=["image_id", "landmarks"]) for t in landmark_tables or []],
                           ignore_index=True)
        tables = dict(zip(shards["image_id"], shards["landmarks"], strict=True))
    candidates = volumes[volumes["image_id"].isin(list(tables))]
    if split is not None and "split" in candidates and (candidates["split"] == split).any():
        candidates = candidates[candidates["split"] == split]
    if candidates.empty:
        raise ValueError(f"no volume of {[str(t) for t in volume_tables]} has a landmark table")
    chosen = candidates.sort_values("image_id").iloc[0]
    landmarks = read_landmarks(tables[chosen["image_id"]])
    source = "the generator's ground truth" if truth_dir is not None else "the landmarks rule"
    return landmark_overlay(read_image(chosen["path"]), landmarks, out_base,
                            f"{chosen['image_id']}: {len(landmarks)} landmarks from {source}")
