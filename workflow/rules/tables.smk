# Paper tables and figures under results/tables/ (CSV + Markdown + PNG), marked for `snakemake --report`.
# Needs eval_summaries() and ablation_summaries() (summary paths of the main variants and the combine-ratio
# sweep) and EVAL_META ({summary path: names}) from common.smk or a test's Snakefile. With
# evaluation.calibration set, the calibration.json next to each main summary (rule calibrate) too.
# Baseline summaries are requested for every dataset in EVAL_META. Each summary's per-image table comes
# along (bootstrap confidence intervals and the paired table; evaluation.bootstrap is a param, so changing
# it reruns this rule alone).
from genpromp import layout, plan
from genpromp.resources import per_attempt

# Input functions (genpromp.plan).
baseline_summaries = lambda wc: plan.baseline_summaries(EVAL_META)
baseline_per_images = lambda wc: plan.baseline_per_images(EVAL_META)
per_image_files = lambda summaries: lambda wc: plan.per_image_files(EVAL_META, summaries())
calibration_files = lambda wc: plan.calibration_files(config, EVAL_META, eval_summaries())


rule tables:
    input:
        summaries=lambda wc: eval_summaries(),
        ablation=lambda wc: ablation_summaries(),
        baselines=baseline_summaries,
        calibrations=calibration_files,
        per_image=per_image_files(eval_summaries),
        ablation_per_image=per_image_files(ablation_summaries),
        baseline_per_image=baseline_per_images,
    output:
        main_csv=layout.table("main.csv"),
        main_md=report(layout.table("main.md"), caption="../report/main.rst", category="Tables"),
        ratio_csv=layout.table("combine_ratio.csv"),
        ratio_md=layout.table("combine_ratio.md"),
        ratio_png=report(layout.table("combine_ratio.png"), caption="../report/combine_ratio.rst", category="Figures"),
        curve_csv=layout.table("threshold_curve.csv"),
        curve_png=report(
            layout.table("threshold_curve.png"), caption="../report/threshold_curve.rst", category="Figures"
        ),
        pr_csv=layout.table("pr_curve.csv"),
        pr_png=report(layout.table("pr_curve.png"), caption="../report/pr_curve.rst", category="Figures"),
        errors_csv=layout.table("error_breakdown.csv"),
        errors_md=report(layout.table("error_breakdown.md"), caption="../report/error_breakdown.rst", category="Tables"),
        calibration_csv=layout.table("calibration.csv"),
        calibration_md=report(layout.table("calibration.md"), caption="../report/calibration.rst", category="Tables"),
        paired_csv=layout.table("paired.csv"),
        paired_md=report(layout.table("paired.md"), caption="../report/paired.rst", category="Tables"),
    log:
        "logs/tables/tables.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=per_attempt(2000),
        runtime=per_attempt(10),
    params:
        meta=EVAL_META,
        tables=plan.tables_params(config),
    script:
        "../scripts/tables.py"
