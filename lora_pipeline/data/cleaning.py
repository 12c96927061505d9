"""The columns the validation suite checks, derived with pandas, and the cleaning policy of ``ValidateConfig``.

A cleaning policy (``drop_empty``, ``dedupe``, ``drop_conflicting``) marks the rows it drops with their reason;
``kept`` marks the rest. A text is blank when only whitespace and Unicode default-ignorable characters (such as
U+200B) remain: :data:`BLANK_REGEX` is that rule for the GX check, and stripping uses the same characters.
"""

from __future__ import annotations

import pandas as pd

from ..config import ValidateConfig

__all__ = ["BLANK_REGEX", "derive_columns"]

# Unicode default-ignorable code points (zero-width space/joiners, BOM, bidi and variation-selector
# marks, soft hyphen, Hangul fillers, tags): they render as nothing, so a text made only of these and
# whitespace is blank, though Python's str.strip() and regex \s keep them.
_INVISIBLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
              (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
              (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
              (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))


def _escape(a: int, b: int) -> str:
    one = (lambda c: f"\\u{c:04x}" if c <= 0xFFFF else f"\\U{c:08x}")
    return one(a) if a == b else f"{one(a)}-{one(b)}"


BLANK_REGEX = "^[\\s" + "".join(_escape(a, b) for a, b in _INVISIBLE) + "]*$"  # the GX text_not_blank check
_STRIP_CHARS = "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + "".join(
    chr(c) for a, b in _INVISIBLE for c in range(a, b + 1))


def derive_columns(df: pd.DataFrame, cfg: ValidateConfig, required: list[str]) -> pd.DataFrame:
    """Add the pandas-derived columns the suite checks; ``kept`` marks rows the policy keeps.

    Derived: ``chars`` (longest raw text length), ``chars_stripped`` (shortest length without edge
    whitespace and invisible characters; null when empty), ``empty``, ``invisible_only`` (empty only
    because of invisible characters such as U+200B), ``has_conflict`` (text occurs with >1 label),
    ``is_duplicate`` (repeats an earlier (text, label) row), ``kept`` and ``class_rows`` (rows of the
    label among kept rows).
    """
    frame = df.reset_index(drop=True).copy()
    if any(c not in frame.columns for c in required):
        return frame
    texts = [c for c in required if c not in ("label", "split")]
    within = texts + (["split"] if "split" in required else [])  # duplicates/conflicts count within each file
    for column in required:
        frame[column] = frame[column].astype("str")
    stripped = pd.concat([frame[c].str.strip(_STRIP_CHARS).str.len() for c in texts], axis=1)
    frame["empty"] = (stripped.isna() | stripped.eq(0)).any(axis=1)
    visible_space = pd.concat([frame[c].str.strip().str.len().gt(0) for c in texts], axis=1)
    frame["invisible_only"] = (stripped.eq(0) & visible_space).any(axis=1)  # blank only by the rule above
    frame["chars"] = pd.concat([frame[c].str.len() for c in texts], axis=1).max(axis=1).astype(float)
    frame["chars_stripped"] = stripped.min(axis=1).where(~frame["empty"]).astype(float)
    valid = ~frame["empty"] & frame["label"].notna()
    labels_per_text = frame[valid].groupby(within)["label"].transform("nunique")
    frame["has_conflict"] = labels_per_text.reindex(frame.index).fillna(0).gt(1)
    frame["is_duplicate"] = valid & frame.duplicated(within + ["label"], keep="first")
    if "split" in required:
        _derive_split_columns(frame, texts, valid)
    drop_empty = frame["empty"] & cfg.drop_empty
    drop_conflict = frame["has_conflict"] & cfg.drop_conflicting & ~drop_empty
    drop_dup = frame["is_duplicate"] & cfg.dedupe & ~drop_empty & ~drop_conflict
    frame["drop_reason"] = None
    for mask, reason in ((drop_empty, "empty"), (drop_conflict, "conflicting"), (drop_dup, "duplicate")):
        frame.loc[mask, "drop_reason"] = reason
    frame["kept"] = frame["drop_reason"].isna()
    sizes = frame.loc[frame["kept"]].groupby("label")["label"].transform("size")
    frame["class_rows"] = sizes.reindex(frame.index).astype(float)
    return frame


def _derive_split_columns(frame: pd.DataFrame, texts: list[str], valid: pd.Series) -> None:
    """``label_in_train`` (a val/test label the train file has too) and ``leaked`` (the stripped text also
    occurs in another split file: scores on it are not held-out scores)."""
    train_labels = set(frame.loc[valid & frame["split"].eq("train"), "label"])
    frame["label_in_train"] = frame["label"].isna() | frame["label"].isin(train_labels)
    key = frame[texts].apply(lambda col: col.str.strip(_STRIP_CHARS)).fillna("").agg("\x1f".join, axis=1)
    frame["leaked"] = valid & (frame.assign(key=key)[valid].groupby("key")["split"].transform("nunique")
                               .reindex(frame.index).fillna(1).gt(1))
