"""Stratified train/val/test split in which identical texts never cross splits, or the user's predefined splits
(a ``split`` column from ingest) used as given, with validation carved from train when none was given."""

from __future__ import annotations

import pandas as pd
from sklearn.model_selection import train_test_split

from ..config import SplitConfig
from ..errors import DataError, excerpt, listing

__all__ = ["split_frame", "label_map", "shared_texts"]

PARTS = ("train", "val", "test")


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
    if "split" in df.columns:
        return _predefined(df, cfg)
    key = _text_key(df)
    groups = pd.DataFrame({"key": key, "label": df["label"].astype(str)}).drop_duplicates("key")
    rest, test = _split_groups(groups, cfg.test_size, cfg.seed, "test")
    train, val = _split_groups(rest, cfg.val_size / (1.0 - cfg.test_size), cfg.seed, "validation")
    out = {}
    for name, part in (("train", train), ("val", val), ("test", test)):
        rows = df[key.isin(set(part["key"]))]
        out[name] = rows.sample(frac=1.0, random_state=cfg.seed).reset_index(drop=True)
    return out


def _text_key(df: pd.DataFrame) -> pd.Series:
    key_cols = ["text", "text_pair"] if "text_pair" in df.columns else ["text"]
    return df[key_cols].astype(str).apply(lambda col: col.str.strip()).agg("\x1f".join, axis=1)


def _predefined(df: pd.DataFrame, cfg: SplitConfig) -> dict[str, pd.DataFrame]:
    """The user's split files in their own order; without val, ``split.val_size`` of train (stratified,
    identical texts kept together) becomes val. ``split.test_size`` does not apply."""
    parts = {name: df[df["split"] == name].drop(columns="split").reset_index(drop=True)
             for name in PARTS if (df["split"] == name).any()}
    if "val" not in parts:
        train = parts["train"]
        key = _text_key(train)
        groups = pd.DataFrame({"key": key, "label": train["label"].astype(str)}).drop_duplicates("key")
        _, val = _split_groups(groups, cfg.val_size, cfg.seed, "validation (from the train file)")
        in_val = key.isin(set(val["key"]))
        parts["train"], parts["val"] = (train[~in_val].reset_index(drop=True), train[in_val].reset_index(drop=True))
    return {name: parts[name] for name in PARTS}


def shared_texts(parts: dict[str, pd.DataFrame]) -> dict[str, int]:
    """Distinct (stripped) texts each pair of parts shares: 0 after a re-split, the leakage of given files."""
    keys = {name: set(_text_key(frame)) for name, frame in parts.items()}
    names = list(parts)
    return {f"{a}_{b}": len(keys[a] & keys[b]) for i, a in enumerate(names) for b in names[i + 1:]}
