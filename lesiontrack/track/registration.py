"""Registration baselines: ``affine`` and ``deformable`` (SimpleITK ``ImageRegistrationMethod``, not elastix).

Convention: ``fixed`` = the source scan A, ``moving`` = the target scan B. The transform ``T`` found by
SimpleITK maps fixed physical points to moving physical points (world mm, LPS), so a lesion at ``p``
in A is predicted at ``T.TransformPoint(p)`` in B, with no inversion.

* ``affine``: a centred initialisation (``CenteredTransformInitializer`` with MOMENTS on a body
  mask, i.e. the translation between the centres of mass of the voxels above ``body_hu``; raw
  intensity moments or the image centres are options; where one field of view spans less than
  ``z_search_coverage`` of the other along z, the start is then searched along world z by the
  metric at the coarsest level, ``z_search_step_mm`` apart), then a 3D ``AffineTransform`` optimised
  with Mattes mutual information on a 3-level pyramid, coarse to fine (``shrink_factors``
  8, 4, 2 = 16, 8, 4 mm for the workflow's 2 mm volumes, optional Gaussian smoothing per level),
  random metric sampling with a fixed seed, and regular-step gradient descent with physical-shift
  scales (at most ``iterations`` = 200 per level; it usually converges earlier).
* ``deformable``: that affine result, kept fixed as the moving initial transform, followed by a
  SimpleITK cubic ``BSplineTransform`` (not elastix): ``BSplineTransformInitializer`` over the
  fixed body bounding box, 3 levels whose control-point spacing halves per level down to
  ``bspline_mesh_mm`` <= 40 mm (at most 160, 80, 40 mm; the mesh is refined exactly between
  levels by ``refine_bspline``) on images of 16, 4 and 2 mm (``bspline_shrink_factors``), each
  level optimised with Mattes mutual information and L-BFGS-B within a budget of metric
  evaluations. Samples are drawn only from fixed points that the affine maps at least
  ``bspline_fov_margin_mm`` inside the moving field of view (otherwise the B-spline can raise the
  metric by pushing samples out of it). The result is ``CompositeTransform([affine, bspline])``,
  which maps ``p`` to ``affine(bspline(p))``.

Each level is a separate single-level ``ImageRegistrationMethod.Execute`` on images block-averaged
here (``BinShrink``), rather than ITK's own pyramid, whose per-level set-up on the full image costs
more than the optimisation. Images are cast to float32 and clipped to the HU window ``clip_hu``
first. Random metric sampling uses the fixed ``seed``, but that alone does not make results
reproducible: with more than one thread ITK's Mattes metric adds the threads' partial sums in the
order the threads finish, so two runs differ in the last digits and, where the optimiser then
takes another path, by millimetres (``bench/registration_threads.py``, docs/benchmarks.md: of 100
two-thread runs on the smoke run's 10 image pairs at 4 mm, 15 put a lesion more than 1 mm from
the single-threaded result, up to 2.9 mm, on 2 of the pairs; on 6 image pairs of the default run
at 2 mm none moved one by more than 0.09 mm; elastix sums in a fixed order and repeats itself with
2 threads). Single-threaded, every registration is bit-reproducible; the workflow's rules run it
so, one job per core (:func:`use_threads`, ``register(threads=1)``, ``lesiontrack <command>
--threads 1``), at about 1.6 times the time of 2 threads (deformable at 2 mm: 5.5 against 3.3 s
per image pair), which is why the commands default to all cores.

Cost: ITK's B-spline metric derivative is dense, (samples x parameters) per evaluation, so the
number of samples is set per B-spline parameter (``bspline_samples_per_parameter``) and the 40 mm
level, with thousands of parameters, gets few samples and few evaluations; the fixed image is
cropped to its body bounding box and the moving one to its own (plus a margin), since ITK also
computes gradient images of both at every level.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from lesiontrack.config import settings_from
from lesiontrack.io import Geometry, InputError, read_table, staged_folder, write_table
from lesiontrack.tables import REGISTRATION_COLUMNS, SOURCE_POINT
from lesiontrack.track.tracker import Context, Needs, Registered, Scans, single_candidates

METHODS = ("affine", "deformable")
INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}
INITIALISERS = ("body", "moments", "geometry", "none")
OPTIMISERS = ("regular_step", "gradient_descent")


@dataclass(frozen=True)
class RegistrationSettings:
    """Every setting of the registration baselines (see the module docstring for the pipeline).

    Per-level tuples run coarsest first. Shrink factors are relative to the input voxel grid (the
    workflow's 2 mm volumes: 8, 4, 2 = 16, 8, 4 mm; an axis keeps at least 8 voxels); smoothing
    sigmas are in mm; affine sampling percentages are fractions of each level's voxels, B-spline
    sampling is in samples per B-spline parameter. The defaults were chosen on the synthetic
    training subjects (2 mm volumes) for accuracy within about 1.5 s (affine) and 10 s
    (deformable) of one CPU core per registration.
    """

    clip_hu: tuple[float, float] | None = (-1000.0, 1000.0)  # HU window applied before registration
    initialiser: str = "body"  # body (centre of mass of the voxels above body_hu) | moments | geometry | none
    body_hu: float = -500.0  # body threshold (initialisation and, if use_body_mask, the fixed sampling mask)
    use_body_mask: bool = False  # sample the metric only inside the fixed body mask
    histogram_bins: int = 32  # Mattes mutual information bins
    interpolator: str = "linear"  # linear | nearest | bspline
    seed: int = 20240601  # seed of the random metric sampling (deterministic results)
    z_search_step_mm: float = 8.0  # the start is searched along z in steps of this (0: never) ...
    z_search_coverage: float = 0.75  # ... where the shorter field of view spans less than this share of the longer
    # affine stage
    shrink_factors: tuple[int, ...] = (8, 4, 2)
    smoothing_sigmas_mm: tuple[float, ...] = (0.0, 0.0, 0.0)
    sampling_percentages: tuple[float, ...] = (0.5, 0.1, 0.02)
    optimiser: str = "regular_step"  # regular_step | gradient_descent
    iterations: int = 200  # per level; convergence may stop earlier
    learning_rate: float = 4.0  # initial step, in mm of physical shift (scales from physical shift)
    min_step: float = 0.01  # regular_step: stop when the step falls below this (mm)
    relaxation: float = 0.5  # regular_step: step reduction when the gradient changes direction
    # B-spline stage (deformable only)
    bspline_mesh_mm: float = 40.0  # finest control-point spacing, mm (at most 40); doubles per coarser level
    bspline_shrink_factors: tuple[int, ...] = (8, 2, 1)
    bspline_smoothing_sigmas_mm: tuple[float, ...] = (0.0, 0.0, 0.0)
    bspline_samples_per_parameter: tuple[float, ...] = (10.0, 4.0, 0.5)  # random samples / B-spline parameters
    bspline_evaluations: tuple[int, ...] = (40, 15, 3)  # L-BFGS-B metric evaluations per level, at most
    bspline_fov_margin_mm: float | None = 10.0  # sample fixed points mapped this far inside the moving FOV (None: all)
    bspline_crop_margin_mm: float | None = 0.0  # B-spline domain = fixed body bounding box + margin (None: all)
    bspline_moving_margin_mm: float | None = 20.0  # moving image cropped to its body bounding box + margin (None: all)

    def __post_init__(self) -> None:
        if len({len(self.shrink_factors), len(self.smoothing_sigmas_mm), len(self.sampling_percentages)}) != 1:
            raise ValueError(f"shrink_factors {list(self.shrink_factors)}, smoothing_sigmas_mm "
                             f"{list(self.smoothing_sigmas_mm)} and sampling_percentages "
                             f"{list(self.sampling_percentages)}: need one value per level each")
        if len({len(self.bspline_shrink_factors), len(self.bspline_smoothing_sigmas_mm),
                len(self.bspline_samples_per_parameter), len(self.bspline_evaluations)}) != 1:
            raise ValueError("bspline_shrink_factors, bspline_smoothing_sigmas_mm, bspline_samples_per_parameter and "
                             "bspline_evaluations: need one value per level each")
        if self.initialiser not in INITIALISERS:
            raise ValueError(f"initialiser = {self.initialiser!r}: not one of {INITIALISERS}")
        if self.optimiser not in OPTIMISERS:
            raise ValueError(f"optimiser = {self.optimiser!r}: not one of {OPTIMISERS}")
        if self.interpolator not in INTERPOLATORS:
            raise ValueError(f"interpolator = {self.interpolator!r}: not one of {sorted(INTERPOLATORS)}")
        if not self.z_search_step_mm >= 0:
            raise ValueError(f"z_search_step_mm = {self.z_search_step_mm}: must be >= 0")
        if not 0 <= self.z_search_coverage <= 1:
            raise ValueError(f"z_search_coverage = {self.z_search_coverage}: must lie in [0, 1] (a share)")
        if not 0 < self.bspline_mesh_mm <= 40:
            raise ValueError(f"bspline_mesh_mm = {self.bspline_mesh_mm}: must be in (0, 40]")
        for value in self.sampling_percentages:
            if not 0 < value <= 1:
                raise ValueError(f"sampling_percentages = {list(self.sampling_percentages)}: each must be in (0, 1]")
        if min(self.bspline_samples_per_parameter) <= 0:
            raise ValueError(f"bspline_samples_per_parameter = {list(self.bspline_samples_per_parameter)}: "
                             "each must be > 0")
        if min(self.shrink_factors + self.bspline_shrink_factors) < 1:
            raise ValueError(f"shrink_factors = {list(self.shrink_factors)}, bspline_shrink_factors = "
                             f"{list(self.bspline_shrink_factors)}: each must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (tuples as lists), e.g. for a config file or provenance."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, base: RegistrationSettings | None = None,
                  section: str = "track.registration") -> RegistrationSettings:
        """``base`` (default: the class defaults) with the fields in ``values`` replaced; a key that
        is not a setting, or a bad value, is an error naming it under ``section``."""
        return settings_from(values, cls, section, base=base)


DEFAULT_AFFINE = RegistrationSettings()
DEFAULT_DEFORMABLE = RegistrationSettings()


class _Pyramid:
    """Float32, HU-clipped copies of one image, block-averaged (``BinShrink``) and smoothed per level (cached)."""

    def __init__(self, image: sitk.Image, settings: RegistrationSettings):
        image = sitk.Cast(image, sitk.sitkFloat32)
        if settings.clip_hu is not None:
            image = sitk.Clamp(image, sitk.sitkFloat32, float(settings.clip_hu[0]), float(settings.clip_hu[1]))
        self.settings = settings
        self._levels: dict[tuple[int, float], sitk.Image] = {(1, 0.0): image}
        self._bodies: dict[tuple[int, float], sitk.Image] = {}

    def level(self, shrink: int, sigma_mm: float = 0.0) -> sitk.Image:
        """The image block-averaged by ``shrink`` voxels per axis and smoothed by ``sigma_mm``."""
        key = (int(shrink), float(sigma_mm))
        if key not in self._levels:
            if sigma_mm > 0:
                image = sitk.SmoothingRecursiveGaussian(self.level(shrink), float(sigma_mm))
            else:
                full = self._levels[(1, 0.0)]  # keep at least 8 voxels per axis (thin volumes)
                image = sitk.BinShrink(full, [max(1, min(int(shrink), size // 8)) for size in full.GetSize()])
            self._levels[key] = image
        return self._levels[key]

    def body(self, shrink: int, sigma_mm: float = 0.0) -> sitk.Image:
        """Binary (uint8) mask of the voxels above ``body_hu`` at that level."""
        key = (int(shrink), float(sigma_mm))
        if key not in self._bodies:
            self._bodies[key] = sitk.BinaryThreshold(self.level(*key), float(self.settings.body_hu), 1e9, 1, 0)
        return self._bodies[key]


def _initial_affine(fixed: _Pyramid, moving: _Pyramid, settings: RegistrationSettings) -> sitk.AffineTransform:
    """Centred affine initialisation (identity matrix, translation between the chosen centres), then
    searched along world z where the two fields of view differ in length (:func:`_search_z`)."""
    if settings.initialiser == "none":
        return sitk.AffineTransform(3)
    return _search_z(fixed, moving, _centred_affine(fixed, moving, settings), settings)


def _search_z(fixed: _Pyramid, moving: _Pyramid, transform: sitk.AffineTransform, settings: RegistrationSettings
              ) -> sitk.AffineTransform:
    """``transform`` shifted along world z to the offset whose metric is best at the coarsest affine
    level, among the multiples of ``z_search_step_mm`` within half the difference of the two fields
    of view's z extents, where the shorter spans less than ``z_search_coverage`` of the longer (an
    abdomen-only follow-up of a chest-abdomen baseline: the centres of mass put the middle of the one
    on the middle of the other, a quarter of the baseline away, too far for the affine to recover);
    otherwise (two scans of one protocol) unchanged."""
    step = settings.z_search_step_mm
    extents = sorted(Geometry.of(pyramid.level(1)).z_extent_mm() for pyramid in (fixed, moving))
    reach = (extents[1] - extents[0]) / 2
    if step <= 0 or reach < step or extents[0] >= settings.z_search_coverage * extents[1]:
        return transform
    shrink = max(settings.shrink_factors)
    method = _method(settings)
    method.SetMetricSamplingPercentage(float(settings.sampling_percentages[0]), settings.seed)
    start = np.asarray(transform.GetTranslation(), float)

    def shifted(offset: float) -> sitk.AffineTransform:
        moved = sitk.AffineTransform(transform)
        moved.SetTranslation(tuple(float(v) for v in start + np.array([0.0, 0.0, offset])))
        return moved

    best, best_value = 0.0, np.inf
    for offset in np.arange(-np.floor(reach / step), np.floor(reach / step) + 1) * step:
        method.SetInitialTransform(shifted(offset), inPlace=False)
        try:
            value = method.MetricEvaluate(fixed.level(shrink), moving.level(shrink))
        except RuntimeError:  # too few samples map inside the moving image at this offset
            continue
        if value < best_value - 1e-9 or (value <= best_value + 1e-9 and abs(offset) < abs(best)):
            best, best_value = float(offset), value
    return shifted(best)


def _centred_affine(fixed: _Pyramid, moving: _Pyramid, settings: RegistrationSettings) -> sitk.AffineTransform:
    """Identity matrix, translation between the centres that ``settings.initialiser`` names."""
    transform = sitk.AffineTransform(3)
    shrink = max(settings.shrink_factors)
    if settings.initialiser == "body":
        f = sitk.Cast(fixed.body(shrink), sitk.sitkFloat32)
        m = sitk.Cast(moving.body(shrink), sitk.sitkFloat32)
        mode = sitk.CenteredTransformInitializerFilter.MOMENTS
    else:
        low = settings.clip_hu[0] if settings.clip_hu is not None else -1024.0
        f, m = fixed.level(shrink) - low, moving.level(shrink) - low  # non-negative "mass" for the moments
        mode = (sitk.CenteredTransformInitializerFilter.MOMENTS if settings.initialiser == "moments"
                else sitk.CenteredTransformInitializerFilter.GEOMETRY)
    try:
        return sitk.AffineTransform(sitk.CenteredTransformInitializer(f, m, transform, mode))
    except RuntimeError:  # no mass (e.g. no voxel above body_hu): centre the image extents instead
        return sitk.AffineTransform(sitk.CenteredTransformInitializer(
            f, m, transform, sitk.CenteredTransformInitializerFilter.GEOMETRY))


def _method(settings: RegistrationSettings) -> sitk.ImageRegistrationMethod:
    """A registration method with the metric, random sampling seed and interpolator of ``settings``
    (its threads: ITK's global default, which :func:`register` sets)."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetInterpolator(INTERPOLATORS[settings.interpolator])
    return method


def _register_affine(fixed: _Pyramid, moving: _Pyramid, settings: RegistrationSettings,
                     initial: sitk.AffineTransform | None = None) -> sitk.AffineTransform:
    """Affine stage: one single-level registration per pyramid level, coarse to fine, updating one transform.

    The pyramid is built here (``BinShrink`` + recursive Gaussian) rather than by ITK, whose
    per-level set-up on the full-size image costs more than the optimisation itself.
    """
    transform = _initial_affine(fixed, moving, settings) if initial is None else sitk.AffineTransform(initial)
    for shrink, sigma, percentage in zip(settings.shrink_factors, settings.smoothing_sigmas_mm,
                                         settings.sampling_percentages, strict=True):
        method = _method(settings)
        method.SetMetricSamplingPercentage(float(percentage), settings.seed)
        if settings.use_body_mask:
            method.SetMetricFixedMask(fixed.body(shrink, sigma))
        if settings.optimiser == "regular_step":
            method.SetOptimizerAsRegularStepGradientDescent(
                learningRate=settings.learning_rate, minStep=settings.min_step,
                numberOfIterations=settings.iterations, relaxationFactor=settings.relaxation)
        else:
            method.SetOptimizerAsGradientDescent(
                learningRate=settings.learning_rate, numberOfIterations=settings.iterations,
                convergenceMinimumValue=1e-6, convergenceWindowSize=10,
                estimateLearningRate=method.EachIteration, maximumStepSizeInPhysicalUnits=settings.learning_rate)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(transform, inPlace=True)
        method.Execute(fixed.level(shrink, sigma), moving.level(shrink, sigma))
    return transform


_TWO_SCALE = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 8.0  # cubic B-spline: B(t) = sum_k w_k B(2t - k), k = -2..2


def _refine_axis(coefficients: np.ndarray, axis: int) -> np.ndarray:
    """Coefficients of the same cubic spline on a mesh twice as fine along ``axis`` (N + 3 -> 2N + 3)."""
    n = coefficients.shape[axis]
    m = 2 * (n - 3) + 3
    matrix = np.zeros((m, n))
    for i in range(n):
        for k in range(-2, 3):
            if 0 <= 2 * i - 1 + k < m:
                matrix[2 * i - 1 + k, i] = _TWO_SCALE[k + 2]
    return np.moveaxis(np.tensordot(matrix, np.moveaxis(coefficients, axis, 0), axes=1), 0, axis)


def refine_bspline(bspline: sitk.BSplineTransform) -> sitk.BSplineTransform:
    """The same cubic B-spline transform (exactly) on a control-point mesh twice as fine, same domain.

    Control point ``i`` of a mesh of spacing ``h`` sits at ``origin + (i - 1) h``; the two-scale
    relation of the cubic B-spline gives the fine coefficients (ITK's ``BSplineTransformParametersAdaptor``,
    which SimpleITK does not expose, does the same).
    """
    images = []
    for image in bspline.GetCoefficientImages():
        array = sitk.GetArrayFromImage(image)
        for axis in range(array.ndim):
            array = _refine_axis(array, axis)
        fine = sitk.GetImageFromArray(array)
        direction = np.array(image.GetDirection()).reshape(image.GetDimension(), -1)
        fine.SetSpacing([sp / 2 for sp in image.GetSpacing()])
        fine.SetDirection(image.GetDirection())
        fine.SetOrigin(tuple(np.array(image.GetOrigin()) + direction @ (np.array(image.GetSpacing()) / 2)))
        images.append(fine)
    return sitk.BSplineTransform(images, bspline.GetOrder())


def _body_box(image: sitk.Image, body: sitk.Image, margin_mm: float | None) -> sitk.Image:
    """``image`` cropped to the bounding box of ``body`` grown by ``margin_mm`` (all of it if None or empty)."""
    if margin_mm is None:
        return image
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(body)
    if not stats.HasLabel(1):
        return image
    box = stats.GetBoundingBox(1)
    dim = image.GetDimension()
    grow = [int(np.ceil(margin_mm / sp)) for sp in image.GetSpacing()]
    low = [max(0, box[i] - grow[i]) for i in range(dim)]
    high = [min(image.GetSize()[i], box[i] + box[dim + i] + grow[i]) for i in range(dim)]
    return sitk.RegionOfInterest(image, [h - lo for lo, h in zip(low, high, strict=True)], low)


def _inside_fov(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, margin_mm: float) -> sitk.Image:
    """Mask (uint8, fixed grid) of the fixed voxels that ``transform`` maps at least ``margin_mm`` inside ``moving``.

    Fixed points near or beyond the edge of the moving field of view would otherwise let the
    B-spline improve the metric by pushing samples out of it.
    """
    inside = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(moving)
    band = [min(int(np.ceil(margin_mm / sp)), (size - 1) // 2) for sp, size in zip(moving.GetSpacing(),
                                                                                   moving.GetSize(), strict=True)]
    if max(band) > 0:
        inside = sitk.ConstantPad(sitk.Crop(inside, band, band), band, band, 0)
    return sitk.Resample(inside, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _register_bspline(fixed: _Pyramid, moving: _Pyramid, affine: sitk.Transform, settings: RegistrationSettings
                      ) -> sitk.BSplineTransform:
    """B-spline stage on top of ``affine`` (the fixed moving initial transform); returns the B-spline alone.

    One single-level registration per level, coarse to fine: the control-point mesh halves its
    spacing per level (``refine_bspline``, exact) down to ``bspline_mesh_mm`` and each level has its
    own image level, sampling and L-BFGS-B evaluation budget. The B-spline domain is the fixed body
    bounding box plus a margin (at the finest level): ITK's B-spline metric derivative costs samples
    x parameters, so air outside the body is not paid for. Outside the domain the B-spline is zero.
    """
    levels = len(settings.bspline_shrink_factors)
    finest = settings.bspline_shrink_factors[-1]
    domain = _body_box(fixed.level(finest), fixed.body(finest), settings.bspline_crop_margin_mm)
    extent = [size * sp for size, sp in zip(domain.GetSize(), domain.GetSpacing(), strict=True)]
    coarsest_mm = settings.bspline_mesh_mm * 2 ** (levels - 1)
    mesh = [max(1, int(np.ceil(e / coarsest_mm - 1e-6))) for e in extent]  # finest spacing <= bspline_mesh_mm
    bspline = sitk.BSplineTransformInitializer(domain, mesh, order=3)
    for level, (shrink, sigma, ratio, evaluations) in enumerate(zip(
            settings.bspline_shrink_factors, settings.bspline_smoothing_sigmas_mm,
            settings.bspline_samples_per_parameter, settings.bspline_evaluations, strict=True)):
        if level:
            bspline = refine_bspline(bspline)
        f = _body_box(fixed.level(shrink, sigma), fixed.body(shrink, sigma), settings.bspline_crop_margin_mm)
        m = _body_box(moving.level(shrink, sigma), moving.body(shrink, sigma), settings.bspline_moving_margin_mm)
        method = _method(settings)
        percentage = min(1.0, ratio * bspline.GetNumberOfParameters() / f.GetNumberOfPixels())
        method.SetMetricSamplingPercentage(percentage, settings.seed)
        mask = None
        if settings.bspline_fov_margin_mm is not None:
            mask = _inside_fov(f, m, affine, settings.bspline_fov_margin_mm)
        if settings.use_body_mask:
            body = sitk.Resample(fixed.body(shrink, sigma), f, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            mask = body if mask is None else sitk.And(mask, body)
        if mask is not None:
            method.SetMetricFixedMask(mask)
        method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=int(evaluations),
                                    maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=int(evaluations),
                                    costFunctionConvergenceFactor=1e7)
        method.SetMovingInitialTransform(affine)
        method.SetInitialTransform(bspline, inPlace=True)
        method.Execute(f, m)
    return bspline


def resolve_settings(method: str, settings: RegistrationSettings | Mapping[str, Any] | None) -> RegistrationSettings:
    """``settings`` for ``method``: the method's default when None, a config dict laid over that default."""
    if method not in METHODS:
        raise ValueError(f"registration method {method!r}: not one of {METHODS}")
    default = DEFAULT_AFFINE if method == "affine" else DEFAULT_DEFORMABLE
    if settings is None:
        return default
    if isinstance(settings, RegistrationSettings):
        return settings
    return RegistrationSettings.from_dict(settings, base=default, section=f"track.registration.{method}")


def register(fixed: sitk.Image, moving: sitk.Image, method: str,
             settings: RegistrationSettings | Mapping[str, Any] | None = None,
             threads: int | None = None, initial: sitk.AffineTransform | None = None) -> sitk.Transform:
    """Register ``moving`` (target B) to ``fixed`` (source A); the result maps fixed points to moving points.

    ``method`` is ``affine`` (an ``AffineTransform``) or ``deformable`` (a ``CompositeTransform``
    applying the B-spline, then the affine). ``settings`` default to ``DEFAULT_AFFINE`` /
    ``DEFAULT_DEFORMABLE`` (a dict overrides fields of that default); ``threads`` (default:
    SimpleITK's global default) sets ITK's threads for this registration (1: bit-reproducible).
    ``initial`` (fixed -> moving) replaces the centred initialisation (the hybrid tracker starts
    from the embeddings' fit).
    """
    settings = resolve_settings(method, settings)
    with _threads(threads):
        fixed_pyramid, moving_pyramid = _Pyramid(fixed, settings), _Pyramid(moving, settings)
        affine = _register_affine(fixed_pyramid, moving_pyramid, settings, initial)
        if method == "affine":
            return affine
        bspline = _register_bspline(fixed_pyramid, moving_pyramid, affine, settings)
        return sitk.CompositeTransform([affine, bspline])


def use_threads(threads: int | None) -> None:
    """ITK's threads for every later registration and SimpleITK filter of this process (None: leave
    ITK's default, all cores); 1 makes every registration bit-reproducible (module docstring)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """ITK's global default threads set to ``threads`` for the block (the metric's threader reads
    the global default, not the method's ``SetNumberOfThreads``), then restored."""
    if threads is None:
        yield
        return
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    use_threads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def register_safely(fixed: sitk.Image, moving: sitk.Image, method: str,
                    settings: RegistrationSettings | Mapping[str, Any] | None = None, threads: int | None = None,
                    initial: sitk.AffineTransform | None = None) -> tuple[sitk.Transform | None, str]:
    """``register``, falling back to its affine stage where the B-spline cannot run (a slab too thin
    for its field-of-view mask) and to ``(None, "failed")`` where registration cannot start at all
    (ITK raises, e.g. "All samples map outside moving image buffer"). Returns the transform and the
    stage that produced it (``method``, ``"affine"`` or ``"failed"``)."""
    for attempt in dict.fromkeys((method, "affine")):
        try:
            return register(fixed, moving, attempt, settings, threads=threads, initial=initial), attempt
        except RuntimeError:  # ITK: "All samples map outside moving image buffer", no sampled points, ...
            continue
    return None, "failed"


def initial_transform(fixed: sitk.Image, moving: sitk.Image, method: str,
                      settings: RegistrationSettings | Mapping[str, Any] | None = None) -> sitk.AffineTransform:
    """The centred initialisation that registration starts from (what stands where it fails)."""
    settings = resolve_settings(method, settings)
    return _initial_affine(_Pyramid(fixed, settings), _Pyramid(moving, settings), settings)


def map_points(transform: sitk.Transform, points_mm: np.ndarray) -> np.ndarray:
    """Map (N, 3) world-mm points through ``transform`` (fixed -> moving); returns (N, 3) world mm."""
    points = np.asarray(points_mm, dtype=float).reshape(-1, 3)
    return np.array([transform.TransformPoint(tuple(map(float, p))) for p in points], dtype=float).reshape(-1, 3)


def pair_registration(scans: Scans, source_id: str, target_id: str, method: str,
                      settings: RegistrationSettings) -> Registered:
    """:func:`register_safely` of two scans of a run (fixed = source, moving = target), or the
    stored result of the same registration (same method and settings) where the run has one
    (``scans.stored_registration``: the workflow's ``register`` rule, :class:`RegistrationStore`)."""
    if scans.stored_registration is not None:
        stored = scans.stored_registration(source_id, target_id, method, settings)
        if stored is not None:
            return stored
    fixed, moving = scans.image(source_id), scans.image(target_id)
    start = time.perf_counter()
    transform, stage = register_safely(fixed, moving, method, settings)
    return transform, stage, time.perf_counter() - start


def registration_candidates(queries: pd.DataFrame, method: str,
                            register_pair: Callable[[str, str], tuple[Any, str, float]],
                            progress: bool = True, full_stage: str | None = None) -> pd.DataFrame:
    """Candidates (``tables.CANDIDATE_COLUMNS``, one per row) of a registration for ``queries``.

    The rows are grouped by (source_image, target_image); each group is registered once by
    ``register_pair(source_id, target_id)`` (fixed = source, moving = target; it returns a
    transform with ``TransformPoint``, the stage that made it and the registration's seconds) and
    its source points are mapped. Where the stage is not ``full_stage`` (default ``method``:
    registration failed and a fallback stands) a line on stderr says so. ``confidence`` is NaN and
    ``seconds`` is the group's registration (stored or run here) plus mapping time, not reading,
    divided by its number of rows. Rows keep the input order.
    """
    queries = queries.reset_index(drop=True)
    pred = np.full((len(queries), 3), np.nan)
    seconds = np.full(len(queries), np.nan)
    groups = queries.groupby(["source_image", "target_image"], sort=False).indices
    for (source, target), rows in tqdm(groups.items(), desc=f"register ({method})", disable=not progress):
        transform, stage, registering = register_pair(str(source), str(target))
        start = time.perf_counter()
        if stage != (full_stage or method):
            tqdm.write(f"{method}: {source} -> {target}: registration failed"
                       + ("; its affine stage stands" if stage == "affine" else "; the initialisation stands"),
                       file=sys.stderr)
        pred[rows] = map_points(transform, queries.loc[rows, SOURCE_POINT].to_numpy(float))
        seconds[rows] = (registering + time.perf_counter() - start) / len(rows)
    return single_candidates(pred, seconds=seconds)


# --------------------------------------------------------------------------- the workflow's stored registrations
def register_queries(queries: pd.DataFrame, image_of: Callable[[str], sitk.Image], method: str,
                     settings: RegistrationSettings, out_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Register every (source_image, target_image) pair of ``queries`` once with ``method`` and
    write the results to ``out_dir``: ``registrations.csv`` (``tables.REGISTRATION_COLUMNS``: the
    stage, the seconds and the transform's file, empty where registration could not start),
    ``NNNNN.h5`` transforms (exact) and ``settings.json``; all or nothing. Returns the table."""
    groups = list(queries.groupby(["source_image", "target_image"], sort=False).indices)
    rows = []
    with staged_folder(out_dir) as staged:
        for k, (source, target) in enumerate(tqdm(groups, desc=f"register ({method})", disable=not progress)):
            transform, stage, seconds = pair_registration(Scans(image=image_of), str(source), str(target), method,
                                                          settings)
            name = "" if transform is None else f"{k:05d}.h5"
            if transform is not None:
                sitk.WriteTransform(transform, str(staged / name))
            rows.append((str(source), str(target), stage, seconds, name))
        table = pd.DataFrame(rows, columns=list(REGISTRATION_COLUMNS))
        write_table(table, staged / REGISTRATIONS_TABLE)
        (staged / "settings.json").write_text(json.dumps({"method": method, "settings": settings.to_dict()},
                                                         indent=1) + "\n")
    return table


REGISTRATIONS_TABLE = "registrations.csv"


def check_stores(folders: list[str | Path]) -> None:
    """Stop, naming it, on a folder that :func:`register_queries` did not write (no ``settings.json``)."""
    for folder in map(Path, folders):
        if not (folder / "settings.json").is_file():
            raise InputError(f"{folder}: no settings.json (not a lesiontrack register folder)")


class RegistrationStore:
    """The registrations written by :func:`register_queries` into one folder per method, read as
    a run asks for them (:attr:`lesiontrack.track.tracker.Scans.stored_registration`). A request
    whose method or settings differ from the stored ones, or whose image pair was not
    registered, is not served (the tracker registers it itself)."""

    def __init__(self, folders: list[str | Path]):
        self._entries: dict[tuple[str, str, str], tuple[Path, pd.Series]] = {}
        self._settings: dict[str, dict[str, Any]] = {}
        check_stores(folders)
        for folder in map(Path, folders):
            stored = json.loads((folder / "settings.json").read_text())
            method = stored["method"]
            self._settings[method] = stored["settings"]
            table = read_table(folder / REGISTRATIONS_TABLE)
            for _, row in table.iterrows():
                self._entries[(str(row["source_image"]), str(row["target_image"]), method)] = (folder, row)

    def __call__(self, source_id: str, target_id: str, method: str, settings: RegistrationSettings
                 ) -> Registered | None:
        entry = self._entries.get((source_id, target_id, method))
        if entry is None or self._settings.get(method) != settings.to_dict():
            return None
        folder, row = entry
        name = row["file"] if isinstance(row["file"], str) else ""
        transform = sitk.ReadTransform(str(folder / name)) if name else None
        return transform, str(row["stage"]), float(row["seconds"])


def registration_settings(method: str, track: Mapping[str, Any] | None) -> RegistrationSettings:
    """The method's defaults with the overrides of ``track.registration.<method>``."""
    overrides = ((track or {}).get("registration") or {}).get(method)
    return resolve_settings(method, overrides or {})


NEEDS = Needs(volumes=True)


@dataclass(frozen=True)
class RegistrationTracker:
    """``affine`` or ``deformable``: one registration per (source, target) image pair of the
    resampled volumes, its transform maps the source points."""

    name: str
    needs: Needs = NEEDS
    decides_presence: bool = True

    def candidates(self, queries: pd.DataFrame, context: Context) -> pd.DataFrame:
        if context.scans.image is None:
            raise ValueError(f"method {self.name}: needs the resampled volumes")
        settings = self.settings(context.track)

        def register_pair(source_id: str, target_id: str) -> tuple[sitk.Transform, str, float]:
            transform, stage, seconds = pair_registration(context.scans, source_id, target_id, self.name, settings)
            if transform is None:  # registration could not start: the centred initialisation stands
                return (initial_transform(context.scans.image(source_id), context.scans.image(target_id),
                                          self.name, settings), "initialisation", seconds)
            return transform, stage, seconds

        return registration_candidates(queries, self.name, register_pair, context.progress)

    def settings(self, track: Mapping[str, Any] | None) -> RegistrationSettings:
        return registration_settings(self.name, track)

    def registrations(self, track: Mapping[str, Any] | None) -> tuple[str, ...]:
        """The registration methods whose results it reads (the workflow stores them): its own."""
        return (self.name,)


TRACKERS = tuple(RegistrationTracker(name) for name in METHODS)
