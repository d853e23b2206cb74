"""Rules custom_convert and custom_pairs: thin calls into lesiontrack.data.custom."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.data import custom
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule) as log:
    if sm.rule == "custom_convert":
        table = custom.convert(list(sm.params.images), sm.params.images_dir, [sm.output.table, sm.output.shard])
        log.info("converted %d volume(s)", len(table))
    else:
        pairs = custom.pairs_stage(sm.input.pairs, sm.input.images, sm.output.pairs)
        log.info("%d pair rows checked", len(pairs))
