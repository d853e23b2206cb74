"""Rule dls_convert: the PNG slices of one shard of series -> sub-volume NIfTI (head-feet checked)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.data import dls
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    dl_info = list(sm.input.dl_info)  # DL_info.csv, or none: the DLS JSONs give every spacing
    dls.convert(sm.input.index, dl_info[0] if dl_info else None, sm.params.series, sm.params.out_dir, sm.output.table,
                split_jsons=list(sm.input.annotations))
