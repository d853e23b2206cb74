"""Rules nlst_select, nlst_download, nlst_convert, nlst_pairs: thin calls into lesiontrack.data.nlst."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.check import convention_of
from lesiontrack.data import nlst
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule) as log:
    if sm.rule == "nlst_select":
        nlst.select_stage(sm.input.nlstx, sm.output.series, sm.params.n_patients, sm.params.seed,
                          sm.params.slice_spacing_mm, sm.params.min_slices, log=log.info)
    elif sm.rule == "nlst_download":
        source = sm.params.source  # a local folder of series instead of IDC, or None
        nlst.download_stage(sm.input.series, list(sm.params.image_ids), sm.params.dicom_dir, sm.output.table,
                            nlst.folder_downloader(source) if source else nlst.idc_downloader)
    elif sm.rule == "nlst_convert":
        nlst.convert_stage(sm.input.table, sm.params.images_dir, sm.output.table)
    elif sm.rule == "nlst_pairs":
        nlst.pairs_stage(sm.input.nlstx, list(sm.input.images), sm.params.dicom_dir, convention_of(sm.input.check),
                         sm.output.pairs, sm.output.lesions)
        nlst.images_table(list(sm.input.images), sm.input.series, sm.output.images)
    else:
        raise ValueError(f"workflow_scripts/nlst.py: no such rule {sm.rule}")
