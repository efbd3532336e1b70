"""`adamw`: torch's AdamW over every parameter, states in the parameters' dtype, stepped after backward.
`optimizer.implementation` picks the kernel (foreach, fused or for-loop; auto is torch's choice)."""

from revbench.states.base import ModelStates


class AdamW(ModelStates):
    name = "adamw"
