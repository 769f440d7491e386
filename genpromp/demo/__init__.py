"""The demo world: a small synthetic stand-in for the real data and weights.

It generates CUB- and ILSVRC-layout WSOL datasets and a captioned corpus (``world``), trains the demo
classifier that scores them (``classifier``), builds a tiny model with Stable Diffusion 1.4's topology
(``tiny``) and pretrains it on the corpus (``pretrain``), and measures how well that model's
cross-attention localizes objects (``diagnostic``). The demo package uses the method's packages (data,
prompts, cams, evaluation, models); the method's packages never import it.
"""
