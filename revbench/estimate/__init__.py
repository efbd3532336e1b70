"""`revbench estimate`: peak memory of a method's real training step, from fake tensors, without the hardware."""

from revbench.estimate.fake_step import TARGETS, Estimate, estimate_method
from revbench.estimate.fit import AXES, Fit, fit_method, format_bytes, parse_bytes, search_largest

__all__ = ["AXES", "TARGETS", "Estimate", "Fit", "estimate_method", "fit_method", "format_bytes", "parse_bytes",
           "search_largest"]
