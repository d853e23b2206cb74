"""The one anatomical vocabulary of lesiontrack: landmark names and TotalSegmentator v2 label ids.

Every landmark backend (synthetic ground truth, TotalSegmentator label maps, heuristics, user
files) writes names from :data:`LANDMARKS`, so that tables from different backends join on
``name``. :data:`TOTALSEG_V2` is our own copy of the TotalSegmentator v2 ``total`` class ids for
the structures the package draws or reads.
"""

from __future__ import annotations

# TotalSegmentator v2 "total" task: structure name -> label id (subset used by lesiontrack).
TOTALSEG_V2: dict[str, int] = {
    "spleen": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "liver": 5,
    "stomach": 6,
    "lung_upper_lobe_left": 10,
    "lung_lower_lobe_left": 11,
    "lung_upper_lobe_right": 12,
    "lung_middle_lobe_right": 13,
    "lung_lower_lobe_right": 14,
    "esophagus": 15,
    "trachea": 16,
    "sacrum": 25,
    "vertebrae_S1": 26,
    "vertebrae_L5": 27,
    "vertebrae_L4": 28,
    "vertebrae_L3": 29,
    "vertebrae_L2": 30,
    "vertebrae_L1": 31,
    "vertebrae_T12": 32,
    "vertebrae_T11": 33,
    "vertebrae_T10": 34,
    "vertebrae_T9": 35,
    "vertebrae_T8": 36,
    "vertebrae_T7": 37,
    "vertebrae_T6": 38,
    "vertebrae_T5": 39,
    "vertebrae_T4": 40,
    "vertebrae_T3": 41,
    "vertebrae_T2": 42,
    "vertebrae_T1": 43,
    "vertebrae_C7": 44,
    "heart": 51,
    "aorta": 52,
    "iliac_artery_left": 65,
    "iliac_artery_right": 66,
    "femur_left": 75,
    "femur_right": 76,
    "hip_left": 77,
    "hip_right": 78,
    "spinal_cord": 79,
    "autochthon_left": 86,
    "autochthon_right": 87,
    "iliopsoas_left": 88,
    "iliopsoas_right": 89,
    **{f"rib_left_{k}": 91 + k for k in range(1, 13)},
    **{f"rib_right_{k}": 103 + k for k in range(1, 13)},
    "sternum": 116,
    "costal_cartilages": 117,
}

TOTALSEG_V2_NAMES: dict[int, str] = {label: name for name, label in TOTALSEG_V2.items()}

VERTEBRAE: tuple[str, ...] = (
    "C7",
    *(f"T{k}" for k in range(1, 13)),
    *(f"L{k}" for k in range(1, 6)),
)
"""Vertebral levels drawn by the phantom and named as landmarks, from cranial to caudal."""

LUNG_LABELS: tuple[str, ...] = (
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
)

# Landmark name -> what it is (anatomical definition shared by every backend).
LANDMARKS: dict[str, str] = {
    **{f"vertebra_{v}": f"centre of the vertebral body of {v}" for v in VERTEBRAE},
    "lung_apex_left": "most cranial point of the left lung",
    "lung_apex_right": "most cranial point of the right lung",
    "lung_base_left": "most caudal point of the left lung (posterior costophrenic recess)",
    "lung_base_right": "most caudal point of the right lung (posterior costophrenic recess)",
    "carina": "tracheal bifurcation",
    "lung_hilum_left": "left pulmonary hilum (entry of the main bronchus and pulmonary artery)",
    "lung_hilum_right": "right pulmonary hilum (entry of the main bronchus and pulmonary artery)",
    "diaphragm_dome_left": "top of the left hemidiaphragm",
    "diaphragm_dome_right": "top of the right hemidiaphragm",
    "esophagogastric_junction": "entry of the oesophagus into the stomach",
    "aortic_root": "origin of the ascending aorta at the heart",
    "aortic_arch_top": "most cranial point of the aortic arch centreline",
    "aortic_bifurcation": "division of the abdominal aorta into the common iliac arteries",
    "heart_apex": "apex of the heart (most left-anterior-caudal point)",
    "liver_dome": "most cranial point of the liver",
    "liver_tip": "most caudal point of the liver",
    "spleen_top": "most cranial point of the spleen",
    "spleen_tip": "most caudal point of the spleen",
    "kidney_left_upper_pole": "most cranial point of the left kidney",
    "kidney_left_lower_pole": "most caudal point of the left kidney",
    "kidney_right_upper_pole": "most cranial point of the right kidney",
    "kidney_right_lower_pole": "most caudal point of the right kidney",
    "sternum_top": "jugular notch (cranial end of the manubrium)",
    "xiphoid_tip": "caudal end of the sternum",
    "iliac_crest_left": "most cranial point of the left iliac crest",
    "iliac_crest_right": "most cranial point of the right iliac crest",
    "femoral_head_left": "centre of the left femoral head",
    "femoral_head_right": "centre of the right femoral head",
    "pubic_symphysis": "centre of the pubic symphysis",
}

LANDMARK_NAMES: tuple[str, ...] = tuple(LANDMARKS)


def check_landmark_name(name: str) -> str:
    """Return ``name`` if it is in the vocabulary, else raise ``ValueError`` naming it."""
    if name not in LANDMARKS:
        raise ValueError(f"unknown landmark name {name!r}: not in lesiontrack.vocabulary.LANDMARKS")
    return name
