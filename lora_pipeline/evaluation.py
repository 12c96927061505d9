"""Metrics (scikit-learn), batched prediction, and the TF-IDF + logistic-regression reference.

scikit-learn is imported where it is used, so that a stage which imports this module for :func:`predict` does not
pay for ``sklearn.metrics`` (with scipy, a second or more) at start-up.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .config import BaselineConfig
from .data.loaders import EncodedSplit, eval_batches, iterate

__all__ = ["macro_f1", "classification_metrics", "predict", "fit_tfidf_baseline", "predict_tfidf"]


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> float:
    """Macro-averaged F1 over the declared classes ``0..num_labels-1``: best-epoch selection and the report.

    A class absent from both ``y_true`` and ``y_pred`` scores 0 and still counts, so a split that lacks a
    class is scored the same way everywhere (scikit-learn alone would average over the classes present).
    """
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=list(range(num_labels)), average="macro", zero_division=0))


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Returns:
        {"accuracy", "macro_f1", "per_class": {label: {precision, recall, f1, support}},
         "confusion_matrix": rows = true class, columns = predicted, in ``labels`` order}
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": macro_f1(y_true, y_pred, len(labels)),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                             "support": int(s[i])} for i, name in enumerate(labels)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


@torch.inference_mode()
def predict(model: torch.nn.Module, split: EncodedSplit, batch_size: int, pad_id: int,
            device: torch.device, bf16: bool = False, batches: slice = slice(None)) -> np.ndarray:
    """Class ids for every row of ``split`` in row order (length-sorted batches, no grad).

    Args:
        bf16: run the forward under bf16 autocast (as the model was trained with ``train.precision``).
        batches: which of the length-sorted batches to predict (all by default); the rows of the others are 0
            (a data-parallel caller predicts every ``size``-th batch per rank and sums the ranks' arrays).
    """
    was_training = model.training
    model.eval()
    preds = np.zeros(len(split), dtype=np.int64)
    batches = eval_batches(split.lengths(), batch_size)[batches]
    for rows, batch in iterate(split, batches, pad_id):
        batch.pop("labels")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits  # (B, C)
        preds[rows] = logits.argmax(dim=-1).cpu().numpy()
    model.train(was_training)
    return preds


def _texts(df: pd.DataFrame) -> list[str]:
    if "text_pair" in df.columns:
        return (df["text"].astype(str) + " [SEP] " + df["text_pair"].astype(str)).tolist()
    return df["text"].astype(str).tolist()


def fit_tfidf_baseline(train: pd.DataFrame, cfg: BaselineConfig, seed: int):
    """Fit TF-IDF (word 1..n-grams, sublinear tf) + logistic regression on the train split.

    Returns:
        a fitted scikit-learn pipeline; :func:`predict_tfidf` applies it to another split.
    """
    # imported here: every train stage imports this module for its metrics, only evaluate fits the baseline
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(
        TfidfVectorizer(max_features=cfg.max_features, ngram_range=(1, cfg.ngram_max), sublinear_tf=True,
                        strip_accents="unicode"),
        LogisticRegression(C=cfg.C, max_iter=2000, random_state=seed),
    )
    pipe.fit(_texts(train), train["label_id"].to_numpy())
    return pipe


def predict_tfidf(pipe, df: pd.DataFrame) -> np.ndarray:
    """Class ids of the baseline for every row of ``df``."""
    return pipe.predict(_texts(df))
