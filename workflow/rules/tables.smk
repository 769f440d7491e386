# Paper tables and figures under results/tables/ (CSV + Markdown + PNG), marked for `snakemake --report`.
# Needs eval_summaries() and ablation_summaries() (summary paths of the main variants and the combine-ratio
# sweep) and EVAL_META ({summary path: names}) from common.smk or a test's Snakefile. With
# evaluation.calibration set, the calibration.json next to each main summary (rule calibrate) too.
# Baseline summaries are requested for every dataset in EVAL_META.
from genpromp import layout, plan

# Input functions (genpromp.plan).
baseline_summaries = lambda wc: plan.baseline_summaries(EVAL_META)
calibration_files = lambda wc: plan.calibration_files(config, EVAL_META, eval_summaries())


rule tables:
    input:
        summaries=lambda wc: eval_summaries(),
        ablation=lambda wc: ablation_summaries(),
        baselines=baseline_summaries,
        calibrations=calibration_files,
    output:
        main_csv=layout.table("main.csv"),
        main_md=report(layout.table("main.md"), caption="../report/main.rst", category="Tables"),
        ratio_csv=layout.table("combine_ratio.csv"),
        ratio_md=layout.table("combine_ratio.md"),
        ratio_png=report(layout.table("combine_ratio.png"), caption="../report/combine_ratio.rst", category="Figures"),
        curve_csv=layout.table("threshold_curve.csv"),
        curve_png=report(layout.table("threshold_curve.png"), caption="../report/threshold_curve.rst",
                         category="Figures"),
        pr_csv=layout.table("pr_curve.csv"),
        pr_png=report(layout.table("pr_curve.png"), caption="../report/pr_curve.rst", category="Figures"),
        errors_csv=layout.table("error_breakdown.csv"),
        errors_md=report(layout.table("error_breakdown.md"), caption="../report/error_breakdown.rst",
                         category="Tables"),
        calibration_csv=layout.table("calibration.csv"),
        calibration_md=report(layout.table("calibration.md"), caption="../report/calibration.rst", category="Tables"),
    params:
        meta=EVAL_META,
    conda:
        "../../environment.yml"
    log:
        "logs/tables/tables.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/tables.py"
