"""Evaluation and ablations: feature metrics (FID/KID), the offline classifier, Inception-V3, reports.

:mod:`.evaluate` (``--mode=eval``) and :mod:`.ablations` (``--mode=ablate``) score sample sets with
one :class:`~dale_langevin.evaluation.evaluate.Scorer`; :mod:`.report` writes the ablation tables and figures.
"""
