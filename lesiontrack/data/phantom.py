"""Analytic torso anatomy rasterised on a canonical grid in the subject's own anatomical frame.

The anatomical frame is LPS millimetres (x towards the patient's left, y posterior, z cranial)
attached to the subject, not to a scanner. :func:`draw_anatomy` paints tissue classes and
TotalSegmentator v2 labels for one subject; scans are later sampled from this grid through each
scan's pose and deformation (see :mod:`lesiontrack.data.synthetic`). Arrays are indexed
``[z, y, x]`` like SimpleITK's ``GetArrayFromImage``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from lesiontrack.vocabulary import TOTALSEG_V2, VERTEBRAE

# Tissue classes of the canonical grid; Hounsfield units are assigned per scan (contrast phase).
AIR, SKIN, FAT, MUSCLE, VISCERAL_FAT, LUNG, AIRWAY, AIRWAY_WALL = 0, 1, 2, 3, 4, 5, 6, 7
BLOOD, MYOCARDIUM, LIVER, SPLEEN, KIDNEY, CORTICAL_BONE, CANCELLOUS_BONE = 8, 9, 10, 11, 12, 13, 14
DISC, CORD, BOWEL_GAS, BOWEL, CARTILAGE, LUNG_VESSEL, STOMACH, MARKER = 15, 16, 17, 18, 19, 20, 21, 22
FIRST_LESION_TISSUE = 100
PROMONTORY_Z = -270.0  # height of the sacral promontory before scaling (mm)
N_TISSUES = 256

# tissue -> (HU without contrast, extra HU at full contrast enhancement, texture amplitude HU)
TISSUE_HU: dict[int, tuple[float, float, float]] = {
    AIR: (-1000.0, 0.0, 0.0),
    SKIN: (35.0, 0.0, 5.0),
    FAT: (-100.0, 0.0, 6.0),
    MUSCLE: (48.0, 6.0, 6.0),
    VISCERAL_FAT: (-95.0, 0.0, 8.0),
    LUNG: (-860.0, 0.0, 25.0),
    AIRWAY: (-1000.0, 0.0, 0.0),
    AIRWAY_WALL: (40.0, 0.0, 5.0),
    BLOOD: (40.0, 160.0, 4.0),
    MYOCARDIUM: (45.0, 35.0, 5.0),
    LIVER: (52.0, 22.0, 6.0),
    SPLEEN: (45.0, 28.0, 5.0),
    KIDNEY: (30.0, 40.0, 6.0),
    CORTICAL_BONE: (850.0, 0.0, 60.0),
    CANCELLOUS_BONE: (330.0, 0.0, 50.0),
    DISC: (85.0, 0.0, 6.0),
    CORD: (30.0, 0.0, 3.0),
    BOWEL_GAS: (-1000.0, 0.0, 0.0),
    BOWEL: (25.0, 25.0, 8.0),
    CARTILAGE: (140.0, 0.0, 20.0),
    LUNG_VESSEL: (40.0, 160.0, 4.0),
    STOMACH: (20.0, 10.0, 6.0),
    MARKER: (2500.0, 0.0, 0.0),
}


@dataclass
class Canvas:
    """A canonical grid: ``tissue`` and ``label`` arrays indexed ``[z, y, x]``."""

    origin: np.ndarray  # anatomical mm of voxel (0, 0, 0), (x, y, z)
    spacing: float
    shape_zyx: tuple[int, int, int]
    tissue: np.ndarray = field(init=False)
    label: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.origin = np.asarray(self.origin, dtype=float)
        self.tissue = np.zeros(self.shape_zyx, dtype=np.uint8)
        self.label = np.zeros(self.shape_zyx, dtype=np.uint8)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nz, ny, nx = self.shape_zyx
        s, o = self.spacing, self.origin
        return o[0] + s * np.arange(nx), o[1] + s * np.arange(ny), o[2] + s * np.arange(nz)

    def box(self, lo, hi):
        """Slices and broadcastable coordinates (x, y, z) of the voxels in the box [lo, hi] mm."""
        lo = np.floor((np.asarray(lo, float) - self.origin) / self.spacing).astype(int)
        hi = np.ceil((np.asarray(hi, float) - self.origin) / self.spacing).astype(int) + 1
        shape_xyz = self.shape_zyx[::-1]
        lo = np.clip(lo, 0, shape_xyz)
        hi = np.clip(hi, 0, shape_xyz)
        if np.any(hi <= lo):
            return None
        sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        x = self.origin[0] + self.spacing * np.arange(lo[0], hi[0])
        y = self.origin[1] + self.spacing * np.arange(lo[1], hi[1])
        z = self.origin[2] + self.spacing * np.arange(lo[2], hi[2])
        return sl, x[None, None, :], y[None, :, None], z[:, None, None]

    def paint(self, lo, hi, inside, tissue: int, label: int | None = None, within=None) -> None:
        """Set ``tissue`` (and ``label``) where ``inside(x, y, z)`` holds inside the box.

        ``within``: optional tissue ids; only voxels currently of those tissues are painted.
        """
        found = self.box(lo, hi)
        if found is None:
            return
        sl, x, y, z = found
        mask = np.broadcast_to(inside(x, y, z), self.tissue[sl].shape)
        if within is not None:
            mask = mask & np.isin(self.tissue[sl], within)
        self.tissue[sl][mask] = tissue
        if label is not None:
            self.label[sl][mask] = label

    def tube(self, points, radii, tissue: int, label: int | None = None, within=None) -> None:
        """Paint a tube: capsules along the polyline ``points`` (N, 3) with per-point ``radii``."""
        points = np.asarray(points, float)
        radii = np.broadcast_to(np.asarray(radii, float), (len(points),))
        for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:], strict=True):
            r = max(ra, rb)
            ab = b - a
            ab2 = max(float(ab @ ab), 1e-9)

            def inside(x, y, z, a=a, ab=ab, ab2=ab2, ra=ra, rb=rb):
                t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / ab2
                t = np.clip(t, 0.0, 1.0)
                d2 = (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2
                d2 = d2 + (z - a[2] - t * ab[2]) ** 2
                return d2 <= (ra + t * (rb - ra)) ** 2

            self.paint(np.minimum(a, b) - r, np.maximum(a, b) + r, inside, tissue, label, within)

    def ellipsoid(self, center, radii, tissue, label=None, rotation=None, within=None, clip=None):
        """Paint an ellipsoid (optionally rotated by the 3x3 ``rotation``; ``clip(x,y,z)`` masks)."""
        c = np.asarray(center, float)
        r = np.asarray(radii, float)
        rot = np.eye(3) if rotation is None else np.asarray(rotation, float)

        def inside(x, y, z):
            d = (x - c[0], y - c[1], z - c[2])
            u = [rot[0, i] * d[0] + rot[1, i] * d[1] + rot[2, i] * d[2] for i in range(3)]
            m = (u[0] / r[0]) ** 2 + (u[1] / r[1]) ** 2 + (u[2] / r[2]) ** 2 <= 1.0
            return m if clip is None else m & clip(x, y, z)

        ext = float(r.max())
        self.paint(c - ext, c + ext, inside, tissue, label, within)


def rotation_matrix(angles_deg) -> np.ndarray:
    """Rotation R = Rz @ Ry @ Rx for angles (about x, y, z) in degrees."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


# Trunk cross-section (inside the muscle wall) along z: (z, half-width, half-depth, centre y).
_TRUNK_PROFILE = np.array(
    [
        [-420.0, 150.0, 100.0, 0.0],
        [-300.0, 152.0, 102.0, 0.0],
        [-200.0, 138.0, 104.0, 0.0],
        [-80.0, 136.0, 106.0, 0.0],
        [20.0, 142.0, 104.0, 0.0],
        [140.0, 140.0, 100.0, 0.0],
        [215.0, 128.0, 88.0, 5.0],
        [255.0, 95.0, 68.0, 12.0],
        [285.0, 50.0, 45.0, 20.0],
        [340.0, 46.0, 42.0, 22.0],
    ]
)


@dataclass
class Anatomy:
    """Per-subject anatomical parameters (all in the anatomical frame, mm)."""

    width_scale: float
    depth_scale: float
    height_scale: float
    fat_mm: float
    muscle_mm: float
    outline_harmonics: np.ndarray  # (k, amplitude, phase) rows
    scoliosis_mm: float
    dome_right_z: float
    dome_left_z: float
    heart_center: np.ndarray
    heart_radii: np.ndarray
    heart_angles: np.ndarray
    liver_center: np.ndarray
    liver_radii: np.ndarray
    spleen_center: np.ndarray
    spleen_radii: np.ndarray
    kidney_drop_right_mm: float
    kidney_radii: np.ndarray
    carina_z_offset: float
    vessel_seed: int

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Anatomy:
        sw, sd, sh = rng.uniform(0.88, 1.12), rng.uniform(0.88, 1.12), rng.uniform(0.94, 1.06)
        harm = np.array([[k, rng.uniform(0.0, 0.035), rng.uniform(0, 2 * np.pi)] for k in (1, 2, 3)])
        dome_r = rng.uniform(-8, 12) * sh
        return cls(
            width_scale=sw,
            depth_scale=sd,
            height_scale=sh,
            fat_mm=rng.uniform(6, 28),
            muscle_mm=rng.uniform(8, 16),
            outline_harmonics=harm,
            scoliosis_mm=rng.uniform(-8, 8),
            dome_right_z=dome_r,
            dome_left_z=dome_r - rng.uniform(10, 22),
            heart_center=np.array([rng.uniform(38, 55) * sw, rng.uniform(-40, -25) * sd, 0.0]),
            heart_radii=np.array([rng.uniform(50, 62), rng.uniform(40, 50), rng.uniform(52, 65)]),
            heart_angles=np.array([rng.uniform(-25, -10), rng.uniform(20, 35), rng.uniform(-40, -20)]),
            liver_center=np.array([rng.uniform(-72, -55) * sw, rng.uniform(-10, 10) * sd, 0.0]),
            liver_radii=np.array([rng.uniform(85, 105), rng.uniform(75, 90), rng.uniform(65, 85)]),
            spleen_center=np.array([rng.uniform(80, 95) * sw, rng.uniform(35, 55) * sd, 0.0]),
            spleen_radii=np.array([rng.uniform(22, 30), rng.uniform(40, 55), rng.uniform(45, 60)]),
            kidney_drop_right_mm=rng.uniform(8, 25),
            kidney_radii=np.array([rng.uniform(24, 30), rng.uniform(22, 27), rng.uniform(48, 60)]),
            carina_z_offset=rng.uniform(-10, 10),
            vessel_seed=int(rng.integers(2**31)),
        )

    # --- trunk -----------------------------------------------------------------------------
    def trunk(self, z):
        """Half-width, half-depth and centre y of the trunk inside the muscle wall at height z."""
        prof = _TRUNK_PROFILE
        zs = prof[:, 0] * self.height_scale
        a = np.interp(z, zs, prof[:, 1]) * self.width_scale
        b = np.interp(z, zs, prof[:, 2]) * self.depth_scale
        yc = np.interp(z, zs, prof[:, 3])
        return a, b, yc

    def radial(self, x, y, z, grow: float = 0.0):
        """Squared normalised elliptical radius of (x, y) at z against the trunk grown by ``grow``
        mm, divided by the squared outline wobble: <= 1 inside."""
        a, b, yc = self.trunk(z)
        dy = y - yc
        return ((x / (a + grow)) ** 2 + (dy / (b + grow)) ** 2) / self.wobble(x, dy) ** 2

    def wobble(self, x, dy):
        """Relative outline radius 1 + sum_k A_k cos(k theta + phi_k), theta = atan2(dy, x).

        ``outline_harmonics`` rows are k = 1, 2, 3, ...; cos/sin of k theta by recurrence.
        """
        r = np.sqrt(x * x + dy * dy) + 1e-6
        c1, s1 = x / r, dy / r
        ck, sk = c1, s1
        out = 1.0
        for _, amp, phase in self.outline_harmonics:
            out = out + amp * (ck * np.cos(phase) - sk * np.sin(phase))
            ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        return out

    # --- spine -----------------------------------------------------------------------------
    def vertebra_levels(self) -> dict[str, tuple[float, float]]:
        """Vertebra -> (centre z, body height); discs lie between consecutive bodies."""
        sh = self.height_scale
        levels: dict[str, tuple[float, float]] = {}
        top_of_previous = PROMONTORY_Z * sh  # sacral promontory
        for name in reversed(VERTEBRAE):  # caudal to cranial
            if name.startswith("L"):
                height, disc = 27.0 * sh, 10.0 * sh
            elif name.startswith("T"):
                k = int(name[1:])
                height, disc = (17.0 + 0.6 * k) * sh, 6.0 * sh
            else:
                height, disc = 15.0 * sh, 5.0 * sh
            bottom = top_of_previous + disc
            levels[name] = (bottom + height / 2, height)
            top_of_previous = bottom + height
        return levels

    def spine_xy(self, z):
        """Centre (x, y) of the vertebral body at height z."""
        _, b, yc = self.trunk(np.clip(z, -330 * self.height_scale, 230 * self.height_scale))
        x = self.scoliosis_mm * np.sin(np.asarray(z) / 260.0)
        return x, yc + b - 72.0 * self.depth_scale

    def body_radii(self, name: str) -> tuple[float, float]:
        if name.startswith("L"):
            return 24.0 * self.width_scale, 17.0 * self.depth_scale
        if name.startswith("T"):
            k = int(name[1:])
            return (13.0 + 0.7 * k) * self.width_scale, (11.0 + 0.5 * k) * self.depth_scale
        return 12.0 * self.width_scale, 9.0 * self.depth_scale

    def pubic_symphysis_z(self) -> float:
        return (PROMONTORY_Z - 102.0) * self.height_scale

    def carina(self) -> np.ndarray:
        levels = self.vertebra_levels()
        z = levels["T5"][0] + self.carina_z_offset
        _, yv = self.spine_xy(z)
        return np.array([0.0, yv - 40.0 * self.depth_scale, z])

    def dome_z(self, x, y):
        """Height of the diaphragm surface (two domes, deeper posteriorly) at (x, y)."""
        yy = (y + 10.0) ** 2 / np.where(y > -10.0, 190.0, 320.0)
        right = self.dome_right_z - (x + 60 * self.width_scale) ** 2 / 170.0 - yy
        left = self.dome_left_z - (x - 60 * self.width_scale) ** 2 / 170.0 - yy
        tendon = 0.5 * (self.dome_right_z + self.dome_left_z) - 12.0 - yy - x**2 / 400.0
        return np.maximum(np.maximum(right, left), tendon)


@dataclass
class Structures:
    """Geometry that is needed again after painting (landmarks, lesion sites)."""

    aorta_path: np.ndarray
    bowel_paths: list[np.ndarray]
    stomach_center: np.ndarray
    points: dict[str, np.ndarray]  # analytic landmarks


def _rib_path(anat: Anatomy, level_z: float, k: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Centreline of rib ``k`` on ``side`` (+1 left, -1 right): bone part and cartilage part."""
    n = 48
    reach = 1.0 if k <= 10 else (0.62 if k == 11 else 0.5)
    theta = np.linspace(0.12, reach * np.pi, n)  # 0 = posterior midline, pi = anterior midline
    drop = (35.0 + 3.0 * k) * anat.height_scale
    z = level_z + 6.0 - drop * (theta / np.pi) ** 1.3
    a, b, yc = anat.trunk(z)
    shrink = 1.0 - 0.55 * np.exp(-(k - 1) / 1.6)  # upper ribs form a small ring
    inset = 9.0
    x = side * (a * shrink - inset) * np.sin(theta)
    y = yc + (b * (0.55 + 0.45 * shrink) - inset) * np.cos(theta)
    pts = np.stack([x, y, z], axis=1)
    if k <= 10:
        bone_end = int(n * (0.78 if k <= 7 else 0.7))
        return pts[:bone_end], pts[bone_end - 1 :]
    return pts, pts[:0]


def _vessel_tree(rng, start, direction, radius, length, depth, out):
    """Append segments (a, b, ra, rb) of a randomly branching tree to ``out``."""
    direction = direction / np.linalg.norm(direction)
    end = start + direction * length
    out.append((start, end, radius, radius * 0.92))
    if depth == 0 or radius < 0.9:
        return
    for sign in (-1.0, 1.0):
        perp = np.cross(direction, rng.normal(size=3))
        perp /= np.linalg.norm(perp) + 1e-9
        angle = np.deg2rad(rng.uniform(20, 40))
        child = np.cos(angle) * direction + sign * np.sin(angle) * perp
        _vessel_tree(rng, end, child, radius * 0.76, length * rng.uniform(0.75, 0.9), depth - 1, out)


def _body_wall(anat: Anatomy, canvas: Canvas) -> None:
    """Skin, subcutaneous fat, muscle; the trunk cavity is visceral fat for now."""
    x_ax, y_ax, z_ax = canvas.axes()
    grow_out = anat.muscle_mm + anat.fat_mm
    x2, y2 = x_ax[None, :].astype(np.float32), y_ax[:, None].astype(np.float32)
    wobble2: dict[float, np.ndarray] = {}  # the outline depends on z only through the trunk centre
    for k, z in enumerate(z_ax):
        a, b, yc = (float(v) for v in anat.trunk(z))
        yc = round(yc, 1)
        if yc not in wobble2:
            wobble2[yc] = anat.wobble(x2, y2 - np.float32(yc)) ** 2
        dy2 = (y2 - np.float32(yc)) ** 2
        x2sq = x2 * x2
        layer = np.zeros((len(y_ax), len(x_ax)), np.uint8)
        for grow, tissue in ((grow_out, SKIN), (grow_out - 2.0, FAT), (anat.muscle_mm, MUSCLE),
                             (0.0, VISCERAL_FAT)):
            layer[x2sq / np.float32((a + grow) ** 2) + dy2 / np.float32((b + grow) ** 2) <= wobble2[yc]] = tissue
        canvas.tissue[k] = layer



def _lungs(anat: Anatomy, canvas: Canvas, carina: np.ndarray, apex_z: float) -> None:
    """Lungs: inside the rib cage, above the diaphragm, outside the mediastinum; lobes by fissures."""
    L = TOTALSEG_V2
    def lung(side: int):
        def inside(x, y, z):
            a, b, yc = anat.trunk(z)
            r = np.sqrt((x / (a - 14.0)) ** 2 + ((y - yc) / (b - 14.0)) ** 2)
            cap = np.sqrt(np.clip(1.0 - ((z - (apex_z - 70.0)) / 70.0) ** 2, 0, 1))
            cap = np.where(z < apex_z - 70.0, 1.0, cap)
            xs, _ = anat.spine_xy(z)
            # the mediastinum bulges to the left (heart): the left lung is the smaller one
            width = (30.0 + 28.0 * np.exp(-((y - yc + 25) / 45.0) ** 2)) if side > 0 else (
                16.0 + 10.0 * np.exp(-((y - yc + 20) / 45.0) ** 2))
            medial = side * (x - xs) > width
            spine = (np.abs(x - xs) < 42.0) & (y > anat.spine_xy(z)[1] - 25.0)
            return (r <= cap) & medial & ~spine & (z > anat.dome_z(x, y)) & (z < apex_z)

        return inside

    z_hilum = carina[2] - 30.0
    for side, upper, lower in ((1, "lung_upper_lobe_left", "lung_lower_lobe_left"),
                               (-1, "lung_upper_lobe_right", "lung_lower_lobe_right")):
        x0, x1 = (0.0, 200.0) if side > 0 else (-200.0, 0.0)
        lo, hi = (x0, -160.0, -120.0), (x1, 160.0, apex_z + 2)
        canvas.paint(lo, hi, lung(side), LUNG, L[lower])
        # oblique fissure: above the plane through the hilum rising posteriorly -> upper lobe
        canvas.paint(lo, hi, lambda x, y, z: z > z_hilum + 0.9 * (y + 10.0), LUNG, L[upper],
                     within=[LUNG])
    # right horizontal fissure: anterior part of the right upper lobe below it is the middle lobe
    canvas.paint((-200, -160, -120), (0, 160, z_hilum + 10),
                 lambda x, y, z: (z < z_hilum - 5.0) & (z > z_hilum + 0.9 * (y + 10.0)),
                 LUNG, L["lung_middle_lobe_right"], within=[LUNG])



def _heart(anat: Anatomy, canvas: Canvas, points: dict[str, np.ndarray]) -> np.ndarray:
    """Heart (myocardium shell, blood pool), resting on the diaphragm; returns its centre."""
    L = TOTALSEG_V2
    hc = anat.heart_center.copy()
    hc[2] = 0.5 * (anat.dome_right_z + anat.dome_left_z) + anat.heart_radii[2] * 0.75
    rot_heart = rotation_matrix(anat.heart_angles)
    canvas.ellipsoid(hc, anat.heart_radii, MYOCARDIUM, L["heart"], rot_heart)
    canvas.ellipsoid(hc, anat.heart_radii - 10.0, BLOOD, L["heart"], rot_heart)
    points["heart_apex"] = hc + rot_heart @ np.array([anat.heart_radii[0], 0.0, 0.0]) * 0.97

    return hc


def _airways(anat: Anatomy, canvas: Canvas, carina: np.ndarray, apex_z: float,
             points: dict[str, np.ndarray]) -> None:
    """Trachea, main bronchi and the esophagus; the diaphragm domes' landmarks."""
    L = TOTALSEG_V2
    sw, sd = anat.width_scale, anat.depth_scale
    trachea = np.array([[0.0, carina[1] - 12.0, 360.0], [0.0, carina[1] - 8.0, apex_z],
                        carina.tolist()])
    canvas.tube(trachea, 10.0, AIRWAY_WALL, L["trachea"])
    canvas.tube(trachea, 7.5, AIRWAY, L["trachea"])
    for side in (1, -1):
        hilum = carina + np.array([side * 48.0 * sw, 8.0, -28.0 - (12.0 if side > 0 else 0.0)])
        canvas.tube([carina, hilum], 6.5, AIRWAY_WALL, within=[LUNG, VISCERAL_FAT])
        canvas.tube([carina, hilum], 4.5, AIRWAY, within=[AIRWAY_WALL])
    # Esophagus behind the trachea, left of the spine.
    esoph = [[6.0, carina[1] + 14.0, 360.0], [12.0, carina[1] + 18.0, carina[2]],
             [45.0 * sw, -15.0 * sd, anat.dome_left_z - 20.0]]
    canvas.tube(esoph, 8.0, MUSCLE, L["esophagus"], within=[VISCERAL_FAT, MUSCLE, LUNG])
    points["esophagogastric_junction"] = np.array(esoph[-1])
    for side, tag, dome in ((1, "left", anat.dome_left_z), (-1, "right", anat.dome_right_z)):
        points[f"diaphragm_dome_{tag}"] = np.array([side * 60.0 * sw, -10.0, dome])



def _aorta(anat: Anatomy, canvas: Canvas, levels: dict, carina: np.ndarray, hc: np.ndarray,
           points: dict[str, np.ndarray]) -> np.ndarray:
    """Aorta: ascending, arch, descending along the left of the spine, bifurcation at L4; the
    iliac arteries. Returns the aorta's path."""
    L = TOTALSEG_V2
    sw, sh = anat.width_scale, anat.height_scale
    zl4 = levels["L4"][0]
    xs4, ys4 = anat.spine_xy(zl4)
    arch_z = levels["T3"][0] + 5.0 * sh
    _, yv_arch = anat.spine_xy(arch_z)
    aorta = np.array([
        hc + np.array([-20.0, 5.0, 20.0]),
        [5.0, carina[1] - 25.0, arch_z - 20.0],
        [8.0, carina[1] - 5.0, arch_z],
        [20.0, yv_arch - 28.0, arch_z - 15.0],
        [22.0, anat.spine_xy(carina[2] - 60)[1] - 24.0, carina[2] - 60.0],
        [18.0, anat.spine_xy(levels["T12"][0])[1] - 26.0, levels["T12"][0]],
        [xs4 + 8.0, ys4 - 30.0, zl4],
    ])
    aorta_r = np.array([14.0, 13.0, 12.5, 12.0, 11.0, 10.0, 9.0])
    canvas.tube(aorta, aorta_r, BLOOD, L["aorta"])
    points["aortic_arch_top"] = np.array([8.0, carina[1] - 5.0, arch_z])
    points["aortic_root"] = aorta[0].copy()
    points["aortic_bifurcation"] = aorta[-1].copy()
    for side, name in ((1, "iliac_artery_left"), (-1, "iliac_artery_right")):
        iliac = [aorta[-1], aorta[-1] + [side * 35.0 * sw, 5.0, -45.0], [side * 75.0 * sw, -10.0, -370.0 * sh]]
        canvas.tube(iliac, [8.0, 7.0, 6.0], BLOOD, L[name], within=[VISCERAL_FAT, MUSCLE, FAT])

    return aorta


def _pulmonary_vessels(anat: Anatomy, canvas: Canvas, carina: np.ndarray, points: dict[str, np.ndarray]) -> None:
    """Pulmonary vessel trees from each hilum, only inside lung parenchyma."""
    sw = anat.width_scale
    vessel_rng = np.random.default_rng(anat.vessel_seed)
    for side in (1, -1):
        hilum = carina + np.array([side * 55.0 * sw, 5.0, -35.0])
        points[f"lung_hilum_{'left' if side > 0 else 'right'}"] = hilum
        for direction in ([side, 0.0, 1.0], [side, 0.3, -0.8], [side, -0.8, -0.2], [side, 0.9, -0.3]):
            segments: list = []
            d = np.asarray(direction) + vessel_rng.normal(scale=0.25, size=3)
            _vessel_tree(vessel_rng, hilum, d, 5.0, 30.0, 6, segments)
            for a, b, ra, rb in segments:
                canvas.tube([a, b], [ra, rb], LUNG_VESSEL, within=[LUNG])



def _upper_abdomen(anat: Anatomy, canvas: Canvas) -> np.ndarray:
    """Liver under the right dome, spleen under the left, stomach between; returns the stomach's centre."""
    L = TOTALSEG_V2
    sw, sd = anat.width_scale, anat.depth_scale
    below_dome = lambda x, y, z: z < anat.dome_z(x, y) - 4.0  # noqa: E731
    in_cavity = lambda x, y, z: anat.radial(x, y, z, -3.0) <= 1.0  # noqa: E731
    organ_clip = lambda x, y, z: below_dome(x, y, z) & in_cavity(x, y, z)  # noqa: E731
    lc = anat.liver_center.copy()
    lc[2] = anat.dome_right_z - anat.liver_radii[2] * 0.62
    canvas.ellipsoid(lc, anat.liver_radii, LIVER, L["liver"], clip=organ_clip)
    left_lobe = lc + np.array([70.0 * sw, -45.0 * sd, 22.0])
    canvas.ellipsoid(left_lobe, [60.0, 32.0, 30.0], LIVER, L["liver"], clip=organ_clip)
    sc = anat.spleen_center.copy()
    sc[2] = anat.dome_left_z - anat.spleen_radii[2] * 0.75
    rot_spleen = rotation_matrix([0.0, 0.0, 35.0])
    canvas.ellipsoid(sc, anat.spleen_radii, SPLEEN, L["spleen"], rot_spleen, clip=organ_clip)
    stc = np.array([55.0 * sw, -25.0 * sd, anat.dome_left_z - 55.0])
    canvas.ellipsoid(stc, [42.0, 35.0, 45.0], STOMACH, L["stomach"], clip=organ_clip,
                     within=[VISCERAL_FAT])

    return stc


def _kidneys(anat: Anatomy, canvas: Canvas, levels: dict, points: dict[str, np.ndarray]) -> None:
    """Kidneys (cortex with a medial sinus of fat), the right lower than the left."""
    L = TOTALSEG_V2
    sw = anat.width_scale
    zl1 = levels["L1"][0]
    for side, name in ((1, "kidney_left"), (-1, "kidney_right")):
        _, yv = anat.spine_xy(zl1)
        kc = np.array([side * 72.0 * sw, yv + 2.0, zl1 - 5.0 - (anat.kidney_drop_right_mm if side < 0 else 0.0)])
        rot_k = rotation_matrix([-12.0, side * 12.0, 0.0])
        canvas.ellipsoid(kc, anat.kidney_radii, KIDNEY, L[name], rot_k)
        canvas.ellipsoid(kc + np.array([-side * 12.0, -4.0, 0.0]), [10.0, 10.0, 22.0], VISCERAL_FAT, 0, rot_k)
        axis = rot_k @ np.array([0.0, 0.0, anat.kidney_radii[2]])
        points[f"{name}_upper_pole"] = kc + axis * 0.97
        points[f"{name}_lower_pole"] = kc - axis * 0.97



def _bowel(anat: Anatomy, canvas: Canvas) -> list[np.ndarray]:
    """Bowel loops (wall and fluid) meandering through the lower abdominal cavity; their paths."""
    sw, sd, sh = anat.width_scale, anat.depth_scale, anat.height_scale
    bowel_rng = np.random.default_rng(anat.vessel_seed + 1)
    bowel_paths = []
    for _ in range(7):
        p = np.array([bowel_rng.uniform(-90, 90) * sw, bowel_rng.uniform(-70, 10) * sd,
                      bowel_rng.uniform(-300, -120) * sh])
        path = [p.copy()]
        heading = bowel_rng.normal(size=3)
        for _ in range(8):
            heading = heading + bowel_rng.normal(scale=0.9, size=3)
            heading /= np.linalg.norm(heading)
            p = p + heading * 22.0
            path.append(p.copy())
        bowel_paths.append(np.array(path))
        canvas.tube(path, bowel_rng.uniform(9, 14), BOWEL, within=[VISCERAL_FAT])

    return bowel_paths


def _paraspinal_muscles(anat: Anatomy, canvas: Canvas, levels: dict, apex_z: float) -> None:
    """Muscles beside the spine: psoas (lumbar) and autochthon (erector spinae)."""
    L = TOTALSEG_V2
    sw, sd, sh = anat.width_scale, anat.depth_scale, anat.height_scale
    for side, ps, au in ((1, "iliopsoas_left", "autochthon_left"), (-1, "iliopsoas_right", "autochthon_right")):
        zs = np.linspace(levels["T12"][0], -360.0 * sh, 12)
        xs_, ys_ = anat.spine_xy(zs)
        psoas = np.stack([xs_ + side * np.linspace(30, 70, 12) * sw, ys_ - np.linspace(0, 45, 12), zs], 1)
        canvas.tube(psoas, np.linspace(8, 24, 12), MUSCLE, L[ps], within=[VISCERAL_FAT, FAT])
        zs = np.linspace(apex_z, -330.0 * sh, 16)
        xs_, ys_ = anat.spine_xy(zs)
        auto = np.stack([xs_ + side * 32.0 * sw, ys_ + 52.0 * sd, zs], 1)
        canvas.tube(auto, 20.0, MUSCLE, L[au], within=[VISCERAL_FAT, FAT, MUSCLE])



def _spine(anat: Anatomy, canvas: Canvas, levels: dict, points: dict[str, np.ndarray]) -> None:
    """Vertebrae (body with a cortical rim, arch, spinous and transverse processes), discs, cord."""
    L = TOTALSEG_V2
    sh = anat.height_scale
    for name, (zc, height) in levels.items():
        xv, yv = anat.spine_xy(zc)
        rx, ry = anat.body_radii(name)
        lab = L[f"vertebrae_{name}"]
        half = height / 2

        def body(x, y, z, xv=xv, yv=yv, rx=rx, ry=ry, zc=zc, half=half, shrink=0.0):
            return (((x - xv) / (rx - shrink)) ** 2 + ((y - yv) / (ry - shrink)) ** 2 <= 1.0) & (
                np.abs(z - zc) <= half - shrink
            )

        lo, hi = (xv - 60, yv - ry - 5, zc - half - 1), (xv + 60, yv + 75, zc + half + 1)
        canvas.paint(lo, hi, body, CORTICAL_BONE, lab)
        canvas.paint(lo, hi, lambda x, y, z, body=body: body(x, y, z, shrink=2.0), CANCELLOUS_BONE, lab)
        yc_can = yv + ry + 9.0
        arch_h = 0.8 * half

        def posterior(x, y, z, xv=xv, yc=yc_can, zc=zc, arch_h=arch_h):
            r = np.sqrt((x - xv) ** 2 + (y - yc) ** 2)
            ring = (r >= 8.0) & (r <= 14.0) & (y > yc - 12.0)
            spinous = (np.abs(x - xv) <= 4.0) & (y >= yc + 8.0) & (y <= yc + 40.0)
            transverse = (np.abs(y - yc) <= 4.5) & (np.abs(x - xv) <= 36.0 + 4.0 * (z < 0)) & (np.abs(x - xv) >= 12.0)
            return (ring | spinous | transverse) & (np.abs(z - zc) <= arch_h)

        canvas.paint(lo, hi, posterior, CORTICAL_BONE, lab)
        points[f"vertebra_{name}"] = np.array([xv, yv, zc])
    # Discs between bodies and the spinal cord through the canal.
    names = list(levels)
    for upper, lower in itertools.pairwise(names):
        zu, hu = levels[upper]
        zlw, hl = levels[lower]
        zd = 0.5 * ((zu - hu / 2) + (zlw + hl / 2))
        thick = (zu - hu / 2) - (zlw + hl / 2)
        xv, yv = anat.spine_xy(zd)
        rx, ry = anat.body_radii(lower)
        canvas.paint((xv - rx, yv - ry, zd - thick), (xv + rx, yv + ry, zd + thick),
                     lambda x, y, z, xv=xv, yv=yv, rx=rx, ry=ry, zd=zd, t=thick:
                     (((x - xv) / rx) ** 2 + ((y - yv) / ry) ** 2 <= 1.0) & (np.abs(z - zd) < t / 2 - 0.3),
                     DISC)
    zs = np.linspace(PROMONTORY_Z * sh, 360.0, 30)
    xs_, ys_ = anat.spine_xy(zs)
    ry_s = np.array([anat.body_radii("T6")[1]] * 30)
    cord = np.stack([xs_, ys_ + ry_s + 9.0, zs], 1)
    canvas.tube(cord, 5.0, CORD, L["spinal_cord"], within=[VISCERAL_FAT, MUSCLE, FAT])



def _ribs_and_sternum(anat: Anatomy, canvas: Canvas, levels: dict, points: dict[str, np.ndarray]) -> None:
    """Ribs with costal cartilages; the sternum in front."""
    L = TOTALSEG_V2
    sh = anat.height_scale
    for k in range(1, 13):
        name_v = f"T{k}"
        zc, _ = levels[name_v]
        for side, tag in ((1, "left"), (-1, "right")):
            bone, cartilage = _rib_path(anat, zc, k, side)
            xs_, _ = anat.spine_xy(zc)
            bone = bone + np.array([xs_, 0.0, 0.0])
            r = 4.0 if k == 1 else 5.0
            canvas.tube(bone, r, CORTICAL_BONE, L[f"rib_{tag}_{k}"])
            canvas.tube(bone, r - 1.6, CANCELLOUS_BONE, L[f"rib_{tag}_{k}"])
            if len(cartilage):
                canvas.tube(cartilage + np.array([xs_, 0.0, 0.0]), r - 0.5, CARTILAGE,
                            L["costal_cartilages"])
    st_top = levels["T2"][0] - 5.0 * sh
    st_bottom = levels["T10"][0] - 10.0 * sh

    def sternum(x, y, z):
        _, b, yc = anat.trunk(z)
        front = yc - b + 9.0
        return (np.abs(x) <= 14.0 - 6.0 * (z < st_bottom + 30)) & (y >= front - 6) & (y <= front + 7)

    canvas.paint((-16, -200, st_bottom), (16, 0, st_top), sternum, CORTICAL_BONE, L["sternum"])
    canvas.paint((-16, -200, st_bottom), (16, 0, st_top),
                 lambda x, y, z: sternum(x, y, z) & (np.abs(x) <= 11.0), CANCELLOUS_BONE, L["sternum"],
                 within=[CORTICAL_BONE])
    _, b_top, yc_top = anat.trunk(st_top)
    points["sternum_top"] = np.array([0.0, yc_top - b_top + 9.0, st_top])
    _, b_bot, yc_bot = anat.trunk(st_bottom)
    points["xiphoid_tip"] = np.array([0.0, yc_bot - b_bot + 9.0, st_bottom])



def _pelvis(anat: Anatomy, canvas: Canvas, points: dict[str, np.ndarray]) -> None:
    """Pelvis: sacrum, iliac wings, acetabula, pubic and ischial rami; femoral heads and necks."""
    L = TOTALSEG_V2
    sw, sd, sh = anat.width_scale, anat.depth_scale, anat.height_scale
    zp = PROMONTORY_Z * sh
    xs0, ys0 = anat.spine_xy(zp)

    def sacrum(x, y, z):
        t = np.clip((zp - z) / (95.0 * sh), 0, 1)
        yc = ys0 + 10.0 + 45.0 * t
        return (((x - xs0) / (48.0 - 30.0 * t)) ** 2 + ((y - yc) / 18.0) ** 2 <= 1.0) & (z <= zp) & (
            z >= zp - 95.0 * sh)

    canvas.paint((xs0 - 50, ys0 - 20, zp - 100 * sh), (xs0 + 50, ys0 + 80, zp), sacrum,
                 CANCELLOUS_BONE, L["sacrum"])
    canvas.paint((xs0 - 50, ys0 - 20, zp - 25 * sh), (xs0 + 50, ys0 + 80, zp),
                 lambda x, y, z: sacrum(x, y, z), CANCELLOUS_BONE, L["vertebrae_S1"], within=[CANCELLOUS_BONE])
    z_head = zp - 110.0 * sh
    for side, hip, femur in ((1, "hip_left", "femur_left"), (-1, "hip_right", "femur_right")):
        wing_c = np.array([side * 75.0 * sw, ys0 + 5.0, zp - 35.0 * sh])
        wr = np.array([55.0 * sw, 45.0, 60.0 * sh])

        def wing(x, y, z, c=wing_c, r=wr, side=side):
            d = np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)
            return (np.abs(d - 1.0) <= 7.0 / r[0]) & (side * (x - c[0]) > -20.0) & (y > c[1] - 40.0)

        canvas.paint(wing_c - wr - 10, wing_c + wr + 10, wing, CORTICAL_BONE, L[hip],
                     within=[VISCERAL_FAT, MUSCLE, FAT, BOWEL, AIR, SKIN])
        head = np.array([side * 92.0 * sw, ys0 - 55.0 * sd, z_head])
        canvas.ellipsoid(head, [32.0, 32.0, 30.0], CORTICAL_BONE, L[hip],
                         clip=lambda x, y, z, h=head, s=side: s * (x - h[0]) < 8.0)
        canvas.tube([head, [side * 10.0, head[1] - 30.0, z_head + 8.0]], 9.0, CORTICAL_BONE, L[hip])
        canvas.tube([head, [side * 55.0 * sw, head[1] + 25.0, z_head - 45.0]], 10.0, CORTICAL_BONE, L[hip])
        canvas.ellipsoid(head, [24.0, 24.0, 24.0], CANCELLOUS_BONE, L[femur])
        neck_end = head + np.array([side * 45.0, 5.0, -30.0])
        canvas.tube([head, neck_end, neck_end + np.array([side * 5.0, 0.0, -200.0])], [14.0, 16.0, 15.0],
                    CORTICAL_BONE, L[femur])
        canvas.tube([head, neck_end, neck_end + np.array([side * 5.0, 0.0, -200.0])], [10.0, 11.0, 9.0],
                    CANCELLOUS_BONE, L[femur], within=[CORTICAL_BONE])
        points[f"femoral_head_{'left' if side > 0 else 'right'}"] = head
        points[f"iliac_crest_{'left' if side > 0 else 'right'}"] = np.array(
            [side * 75.0 * sw, ys0 + 5.0, wing_c[2] + wr[2] - 7.0])
    points["pubic_symphysis"] = np.array([0.0, ys0 - 85.0 * sd, anat.pubic_symphysis_z()])



def draw_anatomy(anat: Anatomy, canvas: Canvas) -> Structures:
    """Paint the whole torso into ``canvas``; return geometry needed for landmarks and lesions."""
    _body_wall(anat, canvas)
    levels = anat.vertebra_levels()
    carina = anat.carina()
    points: dict[str, np.ndarray] = {"carina": carina}
    apex_z = levels["T1"][0] + 22.0 * anat.height_scale
    _lungs(anat, canvas, carina, apex_z)
    hc = _heart(anat, canvas, points)
    _airways(anat, canvas, carina, apex_z, points)
    aorta = _aorta(anat, canvas, levels, carina, hc, points)
    _pulmonary_vessels(anat, canvas, carina, points)
    stc = _upper_abdomen(anat, canvas)
    _kidneys(anat, canvas, levels, points)
    bowel_paths = _bowel(anat, canvas)
    _paraspinal_muscles(anat, canvas, levels, apex_z)
    _spine(anat, canvas, levels, points)
    _ribs_and_sternum(anat, canvas, levels, points)
    _pelvis(anat, canvas, points)
    return Structures(aorta_path=aorta, bowel_paths=bowel_paths, stomach_center=stc, points=points)


def extreme_point(mask: np.ndarray, canvas: Canvas, axis_mm: int, top: bool, slab_mm: float = 3.0):
    """Centroid (mm) of the ``slab_mm`` of ``mask`` that is most extreme along world axis (0=x,1=y,2=z)."""
    arr_axis = 2 - axis_mm
    idx = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != arr_axis)))[0]
    if idx.size == 0:
        return None
    n = max(1, round(slab_mm / canvas.spacing))
    sel = idx[-n:] if top else idx[:n]
    index = [slice(None)] * 3
    index[arr_axis] = slice(sel[0], sel[-1] + 1)
    offset = np.zeros(3)
    offset[arr_axis] = sel[0]
    zyx = np.argwhere(mask[tuple(index)]).mean(axis=0) + offset
    return canvas.origin + canvas.spacing * zyx[::-1]
