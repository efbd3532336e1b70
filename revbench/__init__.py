"""revbench: benchmark and memory-profile full-parameter fine-tuning of MoE LLMs."""

__version__ = "0.1.0"
