"""Checkpoint dls_archive_index: which archive holds which series, and the series to convert per shard."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.data import dls
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule) as log:
    index = dls.archive_index(sm.input.archives, sm.output.index)
    dl_info = list(sm.input.dl_info)  # DL_info.csv, or none (dls.dl_info_url unset)
    plan = dls.plan_series(index, dl_info[0] if dl_info else None, list(sm.input.annotations),
                           sm.params.shard_size, sm.params.pretraining, sm.output.series)
    log.info("%d series in %d archive(s); %d to convert", index["series_id"].nunique(), len(sm.input.archives),
             len(plan))
