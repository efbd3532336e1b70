"""Activation techniques: what forward keeps for backward. One file each; imported only when used."""

ACTIVATIONS: dict[str, str] = {
    "store": "revbench.activations.store:Store",
    "checkpoint": "revbench.activations.checkpoint:Checkpoint",
    "selective-checkpoint": "revbench.activations.selective_checkpoint:SelectiveCheckpoint",
    "offload-activations": "revbench.activations.offload:OffloadActivations",
    "checkpoint-offload": "revbench.activations.offload:CheckpointOffload",
    "revffn": "revbench.activations.revffn:RevFFN",
    "revexact": "revbench.activations.revexact:RevExact",
}
