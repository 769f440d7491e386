# Paper tables and figures under results/tables/ (CSV + Markdown + PNG), marked for `snakemake --report`.
#
# Needs from common.smk:
#   eval_summaries()      -> summary.json paths of the main variants
#   ablation_summaries()  -> summary.json paths of the combine-ratio sweep
#   EVAL_META             -> {summary path: dict(dataset, run, variant, mode, ratio)}
# With evaluation.calibration set, the calibration.json next to each main summary (rule calibrate) too.
# Baseline summaries are requested for every dataset that appears in EVAL_META.
# Its input functions live in common.smk (section "tables").

rule tables:
    input:
        summaries=lambda wc: eval_summaries(),
        ablation=lambda wc: ablation_summaries(),
        baselines=_baseline_summaries,
        calibrations=calibration_files,
    output:
        main_csv="results/tables/main.csv",
        main_md=report("results/tables/main.md", caption="../report/main.rst", category="Tables"),
        ratio_csv="results/tables/combine_ratio.csv",
        ratio_md="results/tables/combine_ratio.md",
        ratio_png=report("results/tables/combine_ratio.png", caption="../report/combine_ratio.rst", category="Figures"),
        curve_csv="results/tables/threshold_curve.csv",
        curve_png=report("results/tables/threshold_curve.png", caption="../report/threshold_curve.rst", category="Figures"),
        pr_csv="results/tables/pr_curve.csv",
        pr_png=report("results/tables/pr_curve.png", caption="../report/pr_curve.rst", category="Figures"),
        errors_csv="results/tables/error_breakdown.csv",
        errors_md=report("results/tables/error_breakdown.md", caption="../report/error_breakdown.rst", category="Tables"),
        calibration_csv="results/tables/calibration.csv",
        calibration_md=report("results/tables/calibration.md", caption="../report/calibration.rst", category="Tables"),
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
