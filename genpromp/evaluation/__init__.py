"""Evaluation of CAMs: the TS-CAM/GenPromp protocol and wsolevaluation's MaxBoxAccV2.

Modules: ``metrics`` (pure functions), ``tscam`` / ``wsol`` (per-image threshold sweeps),
``evaluator`` (per-image scoring + accumulation), ``evaluate`` (files + ``genpromp evaluate``),
``tables`` (paper tables + ``genpromp tables``), ``bootstrap`` (their confidence intervals),
``plots`` (figures).
"""

__all__ = []
