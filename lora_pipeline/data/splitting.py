"""Stratified train/val/test split in which identical texts never cross splits."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from ..config import SplitConfig
from ..errors import DataError, excerpt, listing

__all__ = ["split_frame", "label_map"]


def label_map(labels: pd.Series) -> list[str]:
    """Sorted distinct labels: index i is class id i."""
    return sorted(labels.astype(str).unique().tolist())


def _split_groups(groups: pd.DataFrame, size: float, seed: int, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    try:
        return train_test_split(groups, test_size=size, random_state=seed, stratify=groups["label"])
    except ValueError as err:  # too few rows of a class to stratify
        counts = groups["label"].value_counts().sort_index().sort_values(kind="stable")  # smallest first
        raise DataError(
            f"split: cannot carve a stratified {what} split of {size:.0%} from {len(groups)} texts "
            f"(rows per class, smallest first: {listing(counts.to_dict())}): {excerpt(str(err), 300, quote=False)}. "
            "Lower split.val_size/split.test_size or raise validate.min_rows_per_class."
        ) from err


def split_frame(df: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """Split ``df`` (columns text, label[, text_pair]) into train/val/test, stratified by label.

    Rows are grouped by their stripped text (and pair) before splitting, so duplicates that survived
    cleaning land in the same split and the test set never leaks into training.

    Returns:
        {"train": …, "val": …, "test": …}, each with the input columns, in a seeded order.

    Raises:
        DataError: when a class is too small to stratify.
    """
    key_cols = ["text", "text_pair"] if "text_pair" in df.columns else ["text"]
    key = df[key_cols].astype(str).apply(lambda col: col.str.strip()).agg("\x1f".join, axis=1)
    groups = pd.DataFrame({"key": key, "label": df["label"].astype(str)}).drop_duplicates("key")
    rest, test = _split_groups(groups, cfg.test_size, cfg.seed, "test")
    train, val = _split_groups(rest, cfg.val_size / (1.0 - cfg.test_size), cfg.seed, "validation")
    out = {}
    for name, part in (("train", train), ("val", val), ("test", test)):
        rows = df[key.isin(set(part["key"]))]
        out[name] = rows.sample(frac=1.0, random_state=cfg.seed).reset_index(drop=True)
    return out
