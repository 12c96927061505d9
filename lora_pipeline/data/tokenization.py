"""Tokenise each split once; training and evaluation reuse the token ids."""

from __future__ import annotations

import pandas as pd

__all__ = ["tokenize_frame"]


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
