"""`revbench estimate`: peak memory of a method's real training step, from fake tensors, without the hardware,
and from a model of DeepSpeed's memory layout where its offload cannot run on fake tensors."""

from revbench.estimate.fake_step import TARGETS
from revbench.estimate.fit import AXES, Fit, fit_method, search_largest
from revbench.estimate.session import Estimate, Sessions, estimate_method
from revbench.units import format_bytes, parse_bytes

__all__ = ["AXES", "TARGETS", "Estimate", "Fit", "Sessions", "estimate_method", "fit_method", "format_bytes",
           "parse_bytes", "search_largest"]
