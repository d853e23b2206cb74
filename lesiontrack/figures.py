"""Figures: matplotlib panels of the data and results (one palette for all of them)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import SimpleITK as sitk

from lesiontrack.io import Geometry, atomic_path, read_image, read_table
from lesiontrack.preprocess import window

# Okabe-Ito colour-blind-safe palette: the only colours figures draw with.
PALETTE = {
    "truth": "#009E73",  # bluish green
    "prediction": "#D55E00",  # vermillion
    "landmark": "#56B4E9",  # sky blue
    "accent": "#E69F00",  # orange
    "neutral": "#000000",
}

# Display window for soft tissue and lesions (level 0, width 500 HU); lungs show black with vessels.
DISPLAY_WINDOW_HU = (-250.0, 250.0)

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
    lesions = read_table(dataset_dir / "lesions.csv", required=["lesion_id", "image_id", "x", "y", "z", "radius_mm"])
    pairs = read_table(dataset_dir / "pairs.csv", required=["lesion_id", "source_image", "target_image"])
    test = images[images["split"] == "test"].sort_values(["subject_id", "timepoint"])
    subject = test["subject_id"].iloc[0]
    scans = test[test["subject_id"] == subject].iloc[:2]
    baseline, followup = scans["image_id"].tolist()
    tracked = pairs[(pairs["source_image"] == baseline) & (pairs["target_image"] == followup)]
    if tracked.empty:
        raise ValueError(f"{dataset_dir / 'pairs.csv'}: no lesion pair from {baseline} to {followup}")
    tracked_id = tracked.sort_values("target_radius_mm", ascending=False)["lesion_id"].iloc[0]

    fig, axes = plt.subplots(2, 3, figsize=(13, 9), constrained_layout=True)
    for row, image_id in enumerate((baseline, followup)):
        path = scans.set_index("image_id").loc[image_id, "path"]
        image = read_image(path)
        geometry = Geometry.of(image)
        volume = window(sitk.GetArrayViewFromImage(image), window_hu)
        here = lesions[lesions["image_id"] == image_id]
        focus = here[here["lesion_id"] == tracked_id][["x", "y", "z"]].to_numpy(float)[0]
        truth_path = dataset_dir / "truth" / f"{image_id}.csv"
        landmarks = read_table(truth_path, required=["name", "x", "y", "z"]) if truth_path.exists() else pd.DataFrame()
        for col, (view, fixed) in enumerate(_VIEWS):
            ax = axes[row, col]
            plane, extent, (r_axis, c_axis) = _plane(volume, geometry, focus, fixed)
            ax.imshow(plane, cmap="gray", vmin=0, vmax=1, extent=extent, origin="upper" if fixed == 2 else "lower",
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
            ax.set_title(f"{image_id} ({'baseline' if row == 0 else 'follow-up'}), {view}", fontsize=10)
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
            plane, extent, (r_axis, c_axis) = _plane(volume, geometry, point, fixed)
            ax.imshow(plane, cmap="gray", vmin=0, vmax=1, extent=extent, origin="upper" if fixed == 2 else "lower",
                      interpolation="bilinear")
            ax.add_patch(plt.Circle((point[c_axis], point[r_axis]), marker, fill=False, ec=colour, lw=1.4))
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
