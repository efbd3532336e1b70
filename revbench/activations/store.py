"""`store`: plain backprop keeps every activation of the forward until backward uses it."""

from revbench.activations.base import Activations


class Store(Activations):
    name = "store"
