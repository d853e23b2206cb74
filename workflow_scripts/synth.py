"""Rule synth: render one shard of synthetic subjects."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow

from lesiontrack.data import synthetic
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    synthetic.generate_shard(
        synthetic.SyntheticConfig.from_dict(sm.params.synthetic),
        list(sm.params.subjects),
        sm.params.out_dir,
        images_table=sm.output.images,
        lesions_table=sm.output.lesions,
        pairs_table=sm.output.pairs,
    )
