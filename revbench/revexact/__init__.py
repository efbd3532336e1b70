"""revexact: a bit-exact reversible stack over the unchanged pretrained decoder layers (integer momentum streams).

    model = revbench.revexact.convert(hf_moe_causal_lm, side_bits=5)
    model(input_ids=ids, labels=ids).loss.backward()   # keeps the final streams, k bits per element per layer
    model.reconstruction_summary()                      # checksum mismatches, fallbacks, side-bit bytes
"""

from revbench.revexact.convert import convert
from revbench.revexact.grid import GridOverflowError
from revbench.revexact.model import RevExactForCausalLM
from revbench.revexact.options import OPTION_NAMES, RevExactOptions

__all__ = ["OPTION_NAMES", "GridOverflowError", "RevExactForCausalLM", "RevExactOptions", "convert"]
