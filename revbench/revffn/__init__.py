"""RevFFN: reversible MoE decoder blocks that rebuild activations in backward (arXiv 2512.20920).

    model = revbench.revffn.convert(hf_moe_causal_lm, coupling="cross", mode="reversible")
    model(input_ids=ids, labels=ids).loss.backward()
    model.reconstruction_stats()  # per layer: iterations, residual, fallback, routing flips
"""

from revbench.revffn.checkpoint import load_revffn, save_revffn
from revbench.revffn.convert import convert
from revbench.revffn.inverse import ReconstructionError
from revbench.revffn.model import RevFFNForCausalLM
from revbench.revffn.options import OPTION_NAMES, RevFFNOptions

__all__ = ["OPTION_NAMES", "ReconstructionError", "RevFFNForCausalLM", "RevFFNOptions", "convert", "load_revffn",
           "save_revffn"]
