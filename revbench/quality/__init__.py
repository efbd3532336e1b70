"""Fine-tuning quality on real pretrained weights: held-out loss, the quality suite, its driver and report."""

from revbench.quality.heldout import heldout_loss, lm_loss, perplexity
from revbench.quality.suite import QualityRun, QualitySuite, load_quality_suite

__all__ = ["QualityRun", "QualitySuite", "heldout_loss", "lm_loss", "load_quality_suite", "perplexity"]
