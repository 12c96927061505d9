"""What binds an adapter to its base: a digest of the base weights and the config fields that shape the function.

Two bases with identical weights still compute different functions when, say, ``hidden_act`` or
``layer_norm_eps`` differ, so an adapter records both: :func:`base_fingerprint` (every base parameter it does
not replace) and :func:`architecture_config` (the values of :data:`ARCHITECTURE_FIELDS` that the model's config
has). Fields in :data:`UNCHECKED_FIELDS` leave the inference function alone (labels, names, dtype — the weights'
dtype is in the digest —, output flags, the attention kernel, dropout rates, initialisation) and are not checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .surgery import lora_layers

__all__ = [
    "ARCHITECTURE_FIELDS",
    "UNCHECKED_FIELDS",
    "architecture_config",
    "architecture_differences",
    "base_fingerprint",
    "check_base",
    "plain_name",
]

log = logging.getLogger(__name__)

# Config fields that change what a model computes from the same weights (taken from whichever a config has).
ARCHITECTURE_FIELDS: tuple[str, ...] = (
    "model_type",
    # sizes (most also fix weight shapes; head counts and head_dim do not)
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "embedding_size", "max_position_embeddings", "type_vocab_size",
    "n_embd", "n_head", "n_layer", "n_positions", "n_inner", "dim", "hidden_dim", "n_heads", "n_layers",
    "pooler_hidden_size",
    # activations and normalisation
    "hidden_act", "activation", "activation_function", "hidden_activation", "pooler_hidden_act",
    "layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps",
    # positions
    "position_embedding_type", "sinusoidal_pos_embds", "relative_attention", "max_relative_positions",
    "position_buckets", "pos_att_type", "position_biased_input", "share_att_key", "norm_rel_ebd",
    "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "sliding_window",
    # attention and block structure
    "is_decoder", "is_encoder_decoder", "add_cross_attention", "pruned_heads", "tie_word_embeddings",
    "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "attention_bias",
    "mlp_bias", "conv_kernel_size", "conv_act", "conv_groups", "legacy",
    # pooling: RoBERTa counts positions from the pad id, GPT-2 classifies the last non-pad token
    "pad_token_id", "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
)

# Config fields deliberately not checked: they leave the function of the trained weights alone at inference.
UNCHECKED_FIELDS: tuple[str, ...] = (
    "_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype",
    "id2label", "label2id", "num_labels", "problem_type",  # label names; the loss (the head's shape is in the file)
    "output_attentions", "output_hidden_states", "return_dict", "use_cache", "chunk_size_feed_forward",
    "_attn_implementation", "attn_implementation", "bos_token_id", "eos_token_id", "initializer_range",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "attention_dropout", "dropout",
    "qa_dropout", "seq_classif_dropout", "pooler_dropout", "attn_pdrop", "embd_pdrop", "resid_pdrop",
    "summary_first_dropout", "summary_last_dropout",
)


def plain_name(name: str, wrapped: set[str]) -> str:
    """``<layer>.base.<leaf>`` of a LoRA layer -> ``<layer>.<leaf>``, the name on the model without LoRA."""
    owner, _, leaf = name.rpartition(".")
    layer, _, child = owner.rpartition(".")
    return f"{layer}.{leaf}" if child == "base" and layer in wrapped else name


def base_fingerprint(model: nn.Module, skip: Iterable[str] = ()) -> str:
    """sha256 over name, dtype, shape and bytes of every parameter of the base model except ``skip``.

    ``skip`` holds the parameters an adapter replaces (its head, trained biases), by their name on the model
    without LoRA (``x.bias``, not ``x.base.bias``). LoRA matrices never count, so the value is the same on a
    plain model and on one with unmerged LoRA layers, and can be checked before LoRA is applied. Each tensor is
    streamed into the hash once, without a copy (MiniLM-L6, 91 MB: ~0.1-0.2 s on a laptop core).

    Raises:
        ValueError: if a LoRA layer is merged (its base weight then holds ``W0 + ΔW``).
    """
    layers = lora_layers(model)
    merged = [name for name, layer in layers if layer.merged]
    if merged:
        raise ValueError(f"LoRA layers {merged[:3]} are merged; unmerge_lora(model) before fingerprinting")
    adapters = {id(p) for _, layer in layers for p in layer.adapter_parameters().values()}
    wrapped, skip = {name for name, _ in layers}, set(skip)
    named = {plain_name(n, wrapped): p for n, p in model.named_parameters() if id(p) not in adapters}
    digest = hashlib.sha256()
    for name in sorted(set(named) - skip):
        tensor = named[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(named[name].shape)}|".encode())
        digest.update(memoryview(tensor.view(torch.uint8).numpy()))
    return digest.hexdigest()


def architecture_config(model: nn.Module) -> dict[str, Any]:
    """The :data:`ARCHITECTURE_FIELDS` that ``model.config`` has, as JSON values (empty without a config)."""
    config = getattr(model, "config", None)
    values = config.to_dict() if hasattr(config, "to_dict") else {}
    # a JSON round trip, so tuples and int dict keys compare equal to what an adapter file holds
    return json.loads(json.dumps({key: values[key] for key in ARCHITECTURE_FIELDS if key in values}, default=str))


def architecture_differences(recorded: Mapping[str, Any], model: nn.Module) -> list[str]:
    """How ``model``'s config differs from the ``recorded`` fields, e.g. ``"hidden_act 'relu' (adapter 'gelu')"``.

    Only recorded fields are compared; one the model's config lacks counts as a difference.
    """
    have = architecture_config(model)
    return [f"{key} {have[key]!r} (adapter {value!r})" if key in have else f"{key} missing (adapter {value!r})"
            for key, value in recorded.items() if key not in have or have[key] != value]


def check_base(model: nn.Module, adapter: Mapping[str, Any], skip: Iterable[str], source: str) -> None:
    """Refuse a base whose architecture fields or weights differ from those an adapter config records.

    Args:
        adapter: the adapter's config: ``base_model_name``, ``base_fingerprint`` and, from format 3 on,
            ``base_architecture`` (without it, one warning names the fields that go unchecked).
        skip: the parameters the adapter replaces (see :func:`base_fingerprint`).
        source: the adapter, as named in messages.

    Raises:
        ValueError: naming the differing fields, or the expected and actual weight fingerprints.
    """
    name = adapter["base_model_name"]
    if "base_architecture" in adapter:
        differ = architecture_differences(adapter["base_architecture"], model)
        if differ:
            raise ValueError(f"adapter {source} was trained on base {name!r}, but this model's config differs: "
                             f"{', '.join(differ[:8])}; load the same base model (same checkpoint and config)")
    else:
        unchecked = ", ".join(sorted(architecture_config(model))) or "none on this model"
        log.warning("adapter %s has format_version %s: only the base weights are checked, not the base config "
                    "fields (%s); save it again to check them too", source, adapter.get("format_version"), unchecked)
    actual = base_fingerprint(model, skip)
    if actual != adapter["base_fingerprint"]:
        raise ValueError(f"adapter {source} was trained on base {name!r} with weight fingerprint "
                         f"{adapter['base_fingerprint']}, but this model's weights give {actual}: load the same "
                         f"base model (same checkpoint and dtype)")
