"""Rules dls_annotations, dls_info, dls_archive: fetch one DLS/DeepLesion file (resume, retry, verify)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.data.dls import fetch
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    fetch(sm.params.url, sm.output[0], sm.params.what)
