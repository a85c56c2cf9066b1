"""Training: SFT rows and trainer, BestStackCallback, boosting, the continual loop.

What belongs here: tokenised SFT rows (``sft_data``), trl's ``SFTTrainer`` with the
load-balance loss (``sft``), ``BestStackCallback`` (``best_stack``), one residual
boosting round (``boosting``), the outer loop over domains with null space and the
forgetting matrix (``continual``), completion-loss evaluation (``loss``), the
``training:`` profile section (``config``), the profile-level run with its
catalog records (``run``), a trained run loaded for inference (``trained_run``) and
Experiment 1 (``experiment1``).

What it may import: everything below it: ``stacks``, ``base``, ``data`` (reading
prepared datasets), ``lineage`` and ``files``. Never Prefect.
"""
