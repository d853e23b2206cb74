"""Rule register: every image pair of one dataset's tracked pairs registered once with one method, stored."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package beside the workflow


from lesiontrack.track.predict import register_pairs
from lesiontrack.track.registration import use_threads
from lesiontrack.workflow import logged

sm = snakemake  # noqa: F821
with logged(sm.log[0], sm.rule):
    use_threads(sm.threads)  # 1 in every rule: bit-reproducible registrations
    register_pairs(sm.input.pairs, sm.wildcards.registration, sm.output.registrations, sm.params.split,
                   list(sm.input.volumes), {"registration": sm.params.settings})
