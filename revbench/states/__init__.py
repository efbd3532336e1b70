"""Model-state techniques: where the weights, gradients and optimizer states live and how they update.
One file each; imported only when used (DeepSpeed, PEFT and bitsandbytes are heavy)."""

import logging

# bitsandbytes (imported by PEFT too) warns on every import on an AVX-512 CPU that its optional 4-bit CPU kernel
# package is missing; revbench uses no 4-bit kernel.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

STATES: dict[str, str] = {
    "adamw": "revbench.states.adamw:AdamW",
    "adamw-ddp": "revbench.states.ddp:AdamWDDP",
    "adamw-in-backward": "revbench.states.in_backward:AdamWInBackward",
    "adamw-8bit": "revbench.states.adamw_8bit:AdamW8bit",
    "adamw-8bit-in-backward": "revbench.states.in_backward:AdamW8bitInBackward",
    "zero1": "revbench.states.zero:Zero1",
    "zero2": "revbench.states.zero:Zero2",
    "zero3": "revbench.states.zero:Zero3",
    "zero2-offload": "revbench.states.zero:Zero2Offload",
    "zero3-offload": "revbench.states.zero:Zero3Offload",
    "lora": "revbench.states.lora:Lora",
    "fsdp2": "revbench.states.fsdp2:FSDP2",
    "fsdp2-offload": "revbench.states.fsdp2:FSDP2Offload",
}
