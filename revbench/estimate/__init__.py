"""`revbench estimate`: peak memory of a method's real training step, from fake tensors, without the hardware."""

from revbench.estimate.fake_step import TARGETS, Estimate, estimate_method
from revbench.estimate.fit import AXES, Fit, fit_method, search_largest
from revbench.units import format_bytes, parse_bytes

__all__ = ["AXES", "TARGETS", "Estimate", "Fit", "estimate_method", "fit_method", "format_bytes", "parse_bytes",
           "search_largest"]
