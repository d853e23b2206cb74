"""The registry of trackers: method name -> tracker (:class:`lesiontrack.track.tracker.Tracker`).

The workflow, :func:`lesiontrack.track.predict.track_table`, the own-data command and the tests
ask this registry what a method is and what it needs, instead of comparing names. A new tracker
is one module with a class implementing the protocol, and one entry in ``TRACKERS`` below
(docs/architecture.md shows an example).
"""

from __future__ import annotations

from typing import Any

from lesiontrack.config import ConfigError
from lesiontrack.track import elastix, embedding, hybrid, identity, registration
from lesiontrack.track.tracker import Tracker

TRACKERS: dict[str, Tracker] = {t.name: t for t in (*identity.TRACKERS, *embedding.TRACKERS,
                                                    *registration.TRACKERS, *elastix.TRACKERS,
                                                    *hybrid.TRACKERS)}


def get(name: str) -> Tracker:
    """The tracker called ``name``; a ``ValueError`` listing the known ones otherwise."""
    if name not in TRACKERS:
        raise ValueError(f"method {name!r}: not one of {list(TRACKERS)}")
    return TRACKERS[name]


def names(embeddings: bool | None = None, volumes: bool | None = None,
          decides_presence: bool | None = None) -> list[str]:
    """The registered method names, optionally only those that need (True) or do not need
    (False) embeddings / volumes, or whose ``found`` the appearance test decides."""
    return [name for name, t in TRACKERS.items()
            if (embeddings is None or t.needs.embeddings == embeddings)
            and (volumes is None or t.needs.volumes == volumes)
            and (decides_presence is None or t.decides_presence == decides_presence)]


def check_settings(track: dict[str, Any] | None, source: str = "config") -> None:
    """Read every tracker's settings of the config's ``track`` section once, so that a bad key or
    value stops a run (the workflow at start-up, every command as it reads its config) before any
    work, in one line naming ``source`` and the key."""
    for tracker in TRACKERS.values():
        try:
            tracker.settings(track)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
