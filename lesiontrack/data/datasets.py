"""The registry of datasets: name -> what the dataset has and how the workflow treats it.

The workflow (``rules/common.smk``), the command line and the tables ask this registry instead of
comparing dataset names. A new dataset is a module under ``lesiontrack/data/`` (download,
conversion to NIfTI, ``pairs.csv`` in world mm), its rules (``rules/<name>.smk`` with its input
functions and outputs in ``rules/<name>_common.smk``), and one entry in ``DATASETS`` below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lesiontrack.evaluate import PUBLISHED_DLS


@dataclass(frozen=True)
class Dataset:
    """``title``: its table's title (the paper's numbering where the paper has the table);
    ``tracked``: whether our methods run on it, from its ``datasets.<name>`` config section (it has
    images and ground-truth pairs); ``published``: rows of published predictions (row name -> field
    of the downloaded predictions file); ``oracle_landmarks``: ground-truth landmark tables under
    ``results/<name>/truth`` (the ``synthetic`` landmark backend)."""

    name: str
    title: str
    tracked: Callable[[Mapping[str, Any]], bool]
    published: Mapping[str, str] = field(default_factory=dict)
    oracle_landmarks: bool = False


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("synthetic", "Synthetic longitudinal CT", lambda spec: True, oracle_landmarks=True),
    Dataset("dls", "Table 1 (DLS)", lambda spec: bool(spec["download"]), published=PUBLISHED_DLS),
    Dataset("nlst", "Table 2 (NLSTx; not the paper's private NLST set)", lambda spec: True),
    Dataset("custom", "Own data", lambda spec: bool(spec["pairs"])),
)}


def get(name: str) -> Dataset:
    """The dataset called ``name``; a ``ValueError`` listing the known ones otherwise."""
    if name not in DATASETS:
        raise ValueError(f"dataset {name!r}: not one of {list(DATASETS)}")
    return DATASETS[name]


def title(name: str) -> str:
    """The title of a dataset's table (the name itself for an unregistered one)."""
    return DATASETS[name].title if name in DATASETS else name
