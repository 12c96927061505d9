"""The LoRA package's error type: a ValueError that names the argument at fault."""

from __future__ import annotations

__all__ = ["LoRAArgumentError"]


class LoRAArgumentError(ValueError):
    """A bad LoRA argument (``target_modules``, ``rank``…); ``argument`` names it, so callers that read
    settings from a file (``build_model`` from ``params.yaml``) can point at the right key."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


# what peft's PeftModel.from_pretrained shows (as its KeyError) when given a folder in this project's format
PEFT_POINTER = ("this folder is lora-pipeline's adapter format, not peft's: load the peft export instead, "
                "PeftModel.from_pretrained(base, '<model folder>/peft/') for a pipeline model, or write one with "
                "lora_pipeline.lora.export_peft")
