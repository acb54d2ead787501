"""Shared-prefix ("cascade") attention for the HF backend's decoding steps on the CPU.

Every row of a decoding chunk starts with the same tokens (the question's prompt, at least). Plain
attention reads that prefix's keys and values once per row and step, as many small problems (one per
row and key/value head). Here the shared prefix's KV is held once, and a step attends to it as one
problem per key/value head whose queries are all the rows; the rest of each row (its own columns)
is attended as before. The two partial results are merged exactly through their log-sum-exps.

Registered with transformers as the attention implementation ``gradalign_sdpa``: without a
``shared_prefix`` argument (prefill, scoring, a query of several tokens) it is transformers' own
SDPA attention, unchanged. Knows tensors and transformers' attention interface; nothing of trees.
"""

from __future__ import annotations

import torch

__all__ = ["IMPLEMENTATION", "install", "shared_prefix_attention"]

IMPLEMENTATION = "gradalign_sdpa"


def shared_prefix_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, shared_prefix=None, **kwargs
):
    """transformers' attention signature; ``shared_prefix[layer]`` = (keys, values) [kv heads, P, dim].

    ``query`` [rows, heads, 1, dim]; ``key`` / ``value`` [rows, kv heads, columns, dim]: each row's
    own columns, after the shared ones. Returns ([rows, 1, heads, dim], None), as SDPA attention does.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if shared_prefix is None or query.shape[2] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    shared_keys, shared_values = shared_prefix[module.layer_idx]
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.view(rows, kv_heads, heads // kv_heads, dim)  # query heads of one KV head side by side
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    # Shared part: per KV head, one problem whose queries are every row's.
    all_rows = grouped.transpose(0, 1).reshape(1, kv_heads, -1, dim)
    out_shared, lse_shared = flash(all_rows, shared_keys[None], shared_values[None], scale=scaling)
    out_shared = out_shared.view(kv_heads, rows, -1, dim).transpose(0, 1)
    lse_shared = lse_shared.view(kv_heads, rows, -1).transpose(0, 1)
    mask = None
    if attention_mask is not None:  # additive, in the query's dtype, as the kernel requires
        mask = attention_mask
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=query.dtype).masked_fill_(~mask, float("-inf"))
        mask = mask.to(query.dtype)
    out_own, lse_own = flash(grouped, key, value, attn_mask=mask, scale=scaling)
    lse = torch.logaddexp(lse_shared, lse_own)
    merged = out_shared.float() * (lse_shared - lse).exp()[..., None]
    merged += out_own.float() * (lse_own - lse).exp()[..., None]
    return merged.to(query.dtype).reshape(rows, 1, heads, dim), None


def install(model) -> bool:
    """Use shared-prefix attention in ``model`` if it runs transformers' SDPA attention on the CPU."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa" or model.device.type != "cpu":
        return False
    AttentionInterface.register(IMPLEMENTATION, shared_prefix_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    model.set_attn_implementation(IMPLEMENTATION)
    return True
