"""Rule `part_peaks`: where a CAM cache's ground-truth maps peak relative to the part and the object."""

from pathlib import Path

from genpromp.baselines.peaks import write_map_peaks
from genpromp.logs import script_logging

sm = script_logging(snakemake)  # noqa: F821
write_map_peaks(Path(sm.input.cams).parent, sm.input.index, sm.input.parts, sm.output[0], meta=sm.params.meta)
