"""evaluation: metrics equal hand-computed / scikit-learn numbers; the TF-IDF reference works."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from lora_pipeline.config import BaselineConfig, SplitConfig
from lora_pipeline.data.splitting import label_map, split_frame
from lora_pipeline.evaluation import classification_metrics, fit_tfidf_baseline, macro_f1, predict_tfidf
from tests.support.builders import make_frame

# rows = true class, columns = predicted:  [[2, 1, 1], [1, 2, 0], [0, 0, 3]]
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 2]


def test_metrics_of_a_known_confusion_matrix():
    m = classification_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 0, 3]]
    assert m["accuracy"] == pytest.approx(0.7)
    expected = {"a": (2 / 3, 2 / 4, 4 / 7, 4), "b": (2 / 3, 2 / 3, 2 / 3, 3), "c": (3 / 4, 1.0, 6 / 7, 3)}
    for label, (p, r, f, s) in expected.items():
        got = m["per_class"][label]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f))
        assert got["support"] == s and isinstance(got["support"], int)
    assert m["macro_f1"] == pytest.approx((4 / 7 + 2 / 3 + 6 / 7) / 3)
    assert m["macro_f1"] == pytest.approx(macro_f1(Y_TRUE, Y_PRED, 3))


def test_metrics_match_scikit_learn_and_are_json_native():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    m = classification_metrics(y_true, y_pred, ["w", "x", "y", "z"])
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred)
    assert [m["per_class"][c]["f1"] for c in "wxyz"] == pytest.approx(f.tolist())
    assert [m["per_class"][c]["support"] for c in "wxyz"] == s.tolist()
    assert np.asarray(m["confusion_matrix"]).sum() == 300
    import json

    json.dumps(m)  # plain Python types only (metrics files)


def test_a_class_never_predicted_scores_zero_without_warnings():
    m = classification_metrics([0, 1, 2, 2], [0, 1, 1, 1], ["a", "b", "c"])
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert m["confusion_matrix"][2] == [0, 2, 0]


@pytest.mark.parametrize("y_true, y_pred, expected", [
    ([0, 0, 1, 1], [0, 0, 1, 1], 2 / 3),  # class 2 neither present nor predicted: F1 0, still averaged
    ([0, 0, 1, 1], [0, 0, 1, 2], (1 + 2 / 3 + 0) / 3),
    ([0, 1, 2, 2], [0, 1, 2, 2], 1.0),
])
def test_macro_f1_averages_over_the_declared_label_set(y_true, y_pred, expected):
    """One function for best-epoch selection and the reported metric, over every class."""
    assert macro_f1(y_true, y_pred, 3) == pytest.approx(expected)
    assert classification_metrics(y_true, y_pred, ["a", "b", "c"])["macro_f1"] == pytest.approx(expected)


def test_macro_f1_needs_the_label_count():
    with pytest.raises(TypeError):
        macro_f1([0, 1], [0, 1])  # type: ignore[call-arg]  # the classes present would silently decide


def _toy_split(pairs: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    df = make_frame(80, seed=1)
    if pairs:
        df["text_pair"] = "a neutral second segment"
    labels = label_map(df["label"])
    parts = split_frame(df, SplitConfig(seed=0, val_size=0.1, test_size=0.25))
    for part in parts.values():
        part["label_id"] = part["label"].map({n: i for i, n in enumerate(labels)})
    return parts["train"], parts["test"]


@pytest.mark.parametrize("pairs", [False, True])
def test_tfidf_baseline_separates_a_separable_toy_set(pairs):
    train, test = _toy_split(pairs)
    pipe = fit_tfidf_baseline(train, BaselineConfig(max_features=500, ngram_max=2, C=4.0), seed=0)
    pred = predict_tfidf(pipe, test)
    assert pred.shape == (len(test),)
    assert accuracy_score(test["label_id"], pred) > 0.9  # chance is 1/3


def test_tfidf_baseline_is_deterministic():
    train, test = _toy_split()
    cfg = BaselineConfig(max_features=500, ngram_max=1, C=1.0)
    a = predict_tfidf(fit_tfidf_baseline(train, cfg, seed=0), test)
    b = predict_tfidf(fit_tfidf_baseline(train, cfg, seed=0), test)
    np.testing.assert_array_equal(a, b)
