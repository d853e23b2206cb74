"""Rule landmarks: one landmark table per volume of a shard (name, x, y, z, confidence in world mm)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.landmarks import landmarks_shard
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule) as log:
    table = landmarks_shard(sm.input.images, sm.params.backend, sm.params.out_dir, sm.output.table)
    log.info("%d volume(s), %s-%s landmarks each", len(table), table["rows"].min(), table["rows"].max())
