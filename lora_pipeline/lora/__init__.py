"""LoRA (arXiv:2106.09685) and DoRA (arXiv:2402.09353): adapter layers, model surgery, adapter files and peft
interoperability."""

from .adapter_io import adapter_factors, load_adapter, lora_state_dict, save_adapter, trained_modules
from .dora import DoRAConv1D, DoRALayer, DoRALinear
from .errors import LoRAArgumentError
from .fingerprint import ARCHITECTURE_FIELDS, base_fingerprint
from .layers import LoRAConv1D, LoRALayer, LoRALinear
from .peft_compat import export_peft, import_peft
from .surgery import (
    DEFAULT_TARGET_MODULES,
    HEAD_NAMES,
    apply_lora,
    bias_mode,
    count_parameters,
    lora_layers,
    mark_only_lora_as_trainable,
    merge_and_unload,
    merge_lora,
    trainable_summary,
    unmerge_lora,
    wrap_layer,
)

__all__ = [
    "ARCHITECTURE_FIELDS",
    "DEFAULT_TARGET_MODULES",
    "DoRAConv1D",
    "DoRALayer",
    "DoRALinear",
    "HEAD_NAMES",
    "LoRAArgumentError",
    "LoRAConv1D",
    "LoRALayer",
    "LoRALinear",
    "adapter_factors",
    "apply_lora",
    "base_fingerprint",
    "bias_mode",
    "count_parameters",
    "export_peft",
    "import_peft",
    "load_adapter",
    "lora_layers",
    "lora_state_dict",
    "mark_only_lora_as_trainable",
    "merge_and_unload",
    "merge_lora",
    "save_adapter",
    "trainable_summary",
    "trained_modules",
    "unmerge_lora",
    "wrap_layer",
]
