"""The field-standard registration baseline: ``elastix`` (itk-elastix), affine then cubic B-spline.

Same convention as :mod:`lesiontrack.track.registration`: fixed = the source scan, moving = the
target scan; elastix's transform maps fixed physical points to moving ones, so a lesion at ``p`` in
the source is predicted at ``T(p)`` in the target.

The parameter maps are elastix's own defaults (``ParameterObject.GetDefaultParameterMap``:
adaptive stochastic gradient descent, advanced Mattes mutual information, random-coordinate
sampling, smoothing pyramids) with the settings of :class:`ElastixSettings` laid over them: the
affine map starts from elastix's automatic initialisation (centre of gravity of the intensities,
which are clipped to ``clip_hu`` and shifted so that air weighs nothing), and the B-spline map's
final grid spacing, resolutions, iterations and bending-energy weight were chosen on the synthetic
training subjects (docs/experiments.md). Where elastix raises (a slab too thin to sample, no
overlap), its affine stage stands, else the centre-of-gravity translation
(the fallbacks of ``affine`` and ``deformable``).

itk is imported on first use: loading its wrappers takes seconds, which a run without this
tracker should not pay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from lesiontrack.config import settings_from
from lesiontrack.track.registration import initial_transform, registration_candidates
from lesiontrack.track.tracker import Context, Needs

INITIALISATIONS = ("CenterOfGravity", "GeometricalCenter", "none")
STAGES = ("affine", "bspline")


@dataclass(frozen=True)
class ElastixSettings:
    """Settings laid over elastix's default affine and B-spline parameter maps (``track.elastix``)."""

    clip_hu: tuple[float, float] = (-1000.0, 1000.0)  # HU window; shifted so that its low end is 0
    initialisation: str = "CenterOfGravity"  # elastix's AutomaticTransformInitializationMethod, or none
    resolutions: int = 3  # pyramid levels of each stage
    iterations: int = 256  # per level and stage
    spatial_samples: int = 2048  # random samples per iteration
    grid_spacing_mm: float = 40.0  # final B-spline control-point spacing
    bending_weight: float = 0.0  # weight of the bending-energy penalty (0: mutual information alone)
    stages: tuple[str, ...] = STAGES  # affine, then B-spline; ("affine",) for the affine stage alone
    seed: int = 20240601  # random sampling seed (deterministic results for a number of threads)

    def __post_init__(self) -> None:
        if self.initialisation not in INITIALISATIONS:
            raise ValueError(f"initialisation = {self.initialisation!r}: not one of {INITIALISATIONS}")
        if not self.stages or self.stages[0] != "affine" or not set(self.stages) <= set(STAGES):
            raise ValueError(f"stages = {list(self.stages)}: affine first, then optionally bspline")
        for key, minimum in (("resolutions", 1), ("iterations", 1), ("spatial_samples", 64)):
            if getattr(self, key) < minimum:
                raise ValueError(f"{key} = {getattr(self, key)}: must be >= {minimum}")
        if self.grid_spacing_mm <= 0:
            raise ValueError(f"grid_spacing_mm = {self.grid_spacing_mm}: must be > 0")
        if self.bending_weight < 0:
            raise ValueError(f"bending_weight = {self.bending_weight}: must be >= 0")
        if len(self.clip_hu) != 2 or not self.clip_hu[0] < self.clip_hu[1]:
            raise ValueError(f"clip_hu = {list(self.clip_hu)}: must be [low, high] with low < high")


def elastix_settings(track: dict[str, Any] | None) -> ElastixSettings:
    return settings_from((track or {}).get("elastix"), ElastixSettings, "track.elastix")


def _to_itk(image: sitk.Image, clip_hu: tuple[float, float]):
    """A float32 itk image of ``image`` clipped to ``clip_hu`` and shifted to start at 0, same geometry."""
    import itk

    low, high = float(clip_hu[0]), float(clip_hu[1])
    voxels = np.clip(sitk.GetArrayViewFromImage(image).astype(np.float32), low, high) - np.float32(low)
    out = itk.GetImageFromArray(np.ascontiguousarray(voxels))
    out.SetOrigin(tuple(float(v) for v in image.GetOrigin()))
    out.SetSpacing(tuple(float(v) for v in image.GetSpacing()))
    out.SetDirection(itk.matrix_from_array(np.array(image.GetDirection(), float).reshape(3, 3)))
    return out


def parameter_maps(settings: ElastixSettings, stages: tuple[str, ...]) -> list[dict[str, list[str]]]:
    """elastix parameter maps (name -> values) of ``stages``: the defaults with ``settings`` laid over."""
    import itk

    defaults = itk.ParameterObject.New()
    maps = []
    for stage in stages:
        if stage == "affine":
            values = dict(defaults.GetDefaultParameterMap("affine", settings.resolutions))
            if settings.initialisation != "none":
                values["AutomaticTransformInitialization"] = ("true",)
                values["AutomaticTransformInitializationMethod"] = (settings.initialisation,)
        else:
            values = dict(defaults.GetDefaultParameterMap("bspline", settings.resolutions, settings.grid_spacing_mm))
            if settings.bending_weight == 0:
                values["Metric"] = ("AdvancedMattesMutualInformation",)
                values["Registration"] = ("MultiResolutionRegistration",)
                values.pop("Metric0Weight", None), values.pop("Metric1Weight", None)
            else:
                values["Metric1Weight"] = (str(settings.bending_weight),)
        values.update(MaximumNumberOfIterations=(str(settings.iterations),),
                      NumberOfSpatialSamples=(str(settings.spatial_samples),),
                      RandomSeed=(str(settings.seed),), WriteResultImage=("false",))
        maps.append({k: list(v) for k, v in values.items()})
    return maps


class _PointTransform:
    """An itk transform seen as a SimpleITK-like one (``TransformPoint`` in world mm)."""

    def __init__(self, transform) -> None:
        self._transform = transform

    def TransformPoint(self, point: tuple[float, ...]) -> tuple[float, ...]:  # noqa: N802 (SimpleITK's name)
        return tuple(float(v) for v in self._transform.TransformPoint([float(v) for v in point]))


def register_elastix(fixed: sitk.Image, moving: sitk.Image, settings: ElastixSettings | None = None,
                     threads: int | None = None, stages: tuple[str, ...] | None = None) -> _PointTransform:
    """elastix's transform (fixed -> moving world mm) of ``stages`` (default ``settings.stages``).
    Raises ``RuntimeError`` where elastix fails."""
    import itk

    settings = settings or ElastixSettings()
    parameters = itk.ParameterObject.New()
    for values in parameter_maps(settings, stages or settings.stages):
        parameters.AddParameterMap(values)
    method = itk.ElastixRegistrationMethod.New(_to_itk(fixed, settings.clip_hu), _to_itk(moving, settings.clip_hu))
    method.SetParameterObject(parameters)
    method.SetLogToConsole(False)
    method.SetLogToFile(False)
    if threads is not None:
        method.SetNumberOfThreads(int(threads))
    method.Update()
    return _PointTransform(method.GetCombinationTransform())


def elastix_pair(fixed: sitk.Image, moving: sitk.Image, settings: ElastixSettings, threads: int | None = None
                 ) -> tuple[Any, str]:
    """(transform, stage) for one image pair: all stages, else the affine stage where the B-spline
    fails, else the centre-of-gravity translation (stage ``initialisation``)."""
    for stages in dict.fromkeys((settings.stages, ("affine",))):
        try:
            return register_elastix(fixed, moving, settings, threads, stages), stages[-1]
        except RuntimeError:  # elastix: "Too many samples map outside moving image buffer", ...
            continue
    centred = {"clip_hu": settings.clip_hu, "initialiser": "none" if settings.initialisation == "none" else
               "moments" if settings.initialisation == "CenterOfGravity" else "geometry"}
    return initial_transform(fixed, moving, "affine", centred), "initialisation"


NEEDS = Needs(volumes=True)


@dataclass(frozen=True)
class ElastixTracker:
    """``elastix``: one elastix registration per (source, target) image pair of the resampled
    volumes; its transform maps the source points."""

    name: str = "elastix"
    needs: Needs = NEEDS
    decides_presence: bool = True

    def candidates(self, queries: pd.DataFrame, context: Context) -> pd.DataFrame:
        if context.scans.image is None:
            raise ValueError(f"method {self.name}: needs the resampled volumes")
        settings = self.settings(context.track)

        def register_pair(source_id: str, target_id: str) -> tuple[Any, str, float]:
            fixed, moving = context.scans.image(source_id), context.scans.image(target_id)
            start = time.perf_counter()
            transform, stage = elastix_pair(fixed, moving, settings)
            return transform, stage, time.perf_counter() - start

        return registration_candidates(queries, self.name, register_pair, context.progress,
                                       full_stage=settings.stages[-1])

    def settings(self, track: dict[str, Any] | None) -> ElastixSettings:
        return elastix_settings(track)

    def registrations(self, track: dict[str, Any] | None) -> tuple[str, ...]:
        return ()


TRACKERS = (ElastixTracker(),)
