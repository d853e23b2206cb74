"""Rule presence_calibration: the appearance test behind found/disappeared, fitted on training subjects."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.track.presence import calibrate_presence
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule) as log:
    calibration = calibrate_presence(sm.input.lesions, list(sm.input.volumes), sm.output.calibration)
    log.info("presence calibration: %s", calibration)
