"""Batches of pre-tokenised rows: length-grouped, dynamically padded, reproducible per (seed, epoch).

Texts here are short (median ≈ 28 tokens) with a long tail, so padding every batch to
``max_length`` wastes most of the compute. Training batches group rows of similar length
(shuffled within "mega-batches", as HF's ``group_by_length``) and pad to their own longest row.
The order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run replays it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import pandas as pd
import torch

__all__ = ["EncodedSplit", "collate", "train_batches", "eval_batches", "iterate"]


@dataclass(frozen=True)
class EncodedSplit:
    """Token ids and labels of one split, in row order."""

    input_ids: list[list[int]]
    labels: list[int]
    token_type_ids: Optional[list[list[int]]] = None

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> "EncodedSplit":
        """Build from a frame with ``input_ids`` / ``label_id`` (and optional ``token_type_ids``)."""
        tt = [list(map(int, r)) for r in df["token_type_ids"]] if "token_type_ids" in df.columns else None
        return cls([list(map(int, r)) for r in df["input_ids"]], df["label_id"].astype(int).tolist(), tt)

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def collate(split: EncodedSplit, rows: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad ``rows`` of ``split`` to their longest member.

    Returns:
        input_ids (B, T), attention_mask (B, T), labels (B,), and token_type_ids (B, T) for pairs.
    """
    width = max(len(split.input_ids[i]) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for j, i in enumerate(rows):
        seq = split.input_ids[i]
        ids[j, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[j, : len(seq)] = 1
    batch = {"input_ids": ids, "attention_mask": mask,
             "labels": torch.tensor([split.labels[i] for i in rows], dtype=torch.long)}
    if split.token_type_ids is not None:
        tt = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):
            tt[j, : len(split.token_type_ids[i])] = torch.tensor(split.token_type_ids[i], dtype=torch.long)
        batch["token_type_ids"] = tt
    return batch


def train_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_size: int = 50) -> list[list[int]]:
    """Row indices of every training batch of ``epoch``, length-grouped and shuffled.

    Args:
        lengths: token count of each row.
        batch_size: rows per batch (the last batch may be smaller).
        seed, epoch: the order is a pure function of these (and ``lengths``).
        group_size: batches per mega-batch inside which rows are sorted by length.
    """
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    mega = batch_size * group_size
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size))
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def eval_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices sorted by length (least padding) in batches; callers restore row order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def iterate(split: EncodedSplit, batches: Sequence[Sequence[int]], pad_id: int,
            skip: int = 0) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Yield ``(rows, batch)`` for each planned batch, skipping the first ``skip`` (resume)."""
    for rows in batches[skip:]:
        yield list(rows), collate(split, rows, pad_id)
