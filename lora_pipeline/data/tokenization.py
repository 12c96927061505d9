"""Tokenise each split once; training and evaluation reuse the token ids. Also: how many texts
``max_length`` cuts, so a truncation that hides most of the text is seen, not guessed."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["tokenize_frame", "truncation_stats"]

PERCENTILES = (50, 90, 95, 99)


def tokenize_frame(df: pd.DataFrame, tokenizer, max_length: int, labels: list[str]) -> pd.DataFrame:
    """Add ``input_ids`` (and ``token_type_ids`` for pairs) and integer ``label_id`` columns.

    No padding here: batches are padded dynamically to their own longest row.
    """
    pairs = df["text_pair"].astype(str).tolist() if "text_pair" in df.columns else None
    enc = tokenizer(df["text"].astype(str).tolist(), pairs, truncation=True, max_length=max_length,
                    padding=False, return_attention_mask=False,
                    return_token_type_ids=pairs is not None)
    index = {name: i for i, name in enumerate(labels)}
    out = df.copy()
    out["input_ids"] = enc["input_ids"]
    if pairs is not None and "token_type_ids" in enc:
        out["token_type_ids"] = enc["token_type_ids"]
    out["label_id"] = out["label"].astype(str).map(index).astype("int64")
    return out


def truncation_stats(df: pd.DataFrame, tokenizer, max_length: int) -> dict[str, float]:
    """Texts (pairs) longer than ``max_length`` tokens, special tokens included, and length percentiles.

    Returns:
        ``{"truncated": n, "truncated_share": n / rows, "tokens_p50": …, "tokens_p99": …, "tokens_max": …}``.
    """
    pairs = df["text_pair"].astype(str).tolist() if "text_pair" in df.columns else None
    enc = tokenizer(df["text"].astype(str).tolist(), pairs, truncation=False, padding=False,
                    return_attention_mask=False, return_token_type_ids=False, verbose=False)
    lengths = np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)
    if lengths.size == 0:
        return {"truncated": 0, "truncated_share": 0.0}
    stats: dict[str, float] = {"truncated": int((lengths > max_length).sum()),
                               "truncated_share": round(float((lengths > max_length).mean()), 4)}
    stats.update({f"tokens_p{q}": int(np.percentile(lengths, q, method="higher")) for q in PERCENTILES})
    stats["tokens_max"] = int(lengths.max())
    return stats
