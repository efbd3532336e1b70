"""Loss techniques: how the LM head and cross-entropy turn the final hidden state into the loss."""

LOSSES: dict[str, str] = {
    "full": "revbench.loss.full:FullLoss",
    "chunked": "revbench.loss.chunked:ChunkedLoss",
}
