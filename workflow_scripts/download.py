"""Rules that fetch one public file: resumable, verified, atomic."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.download import download
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    download(sm.params.url, sm.output[0], sha256=sm.params.sha256)
