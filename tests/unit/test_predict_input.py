"""lora-pipeline predict: input files are read as ingest reads them, columns are checked before the model loads,
credentials never reach its error messages, and no MLflow store is created outside a project."""

from __future__ import annotations

import json
import types

import pandas as pd
import pytest

from lora_pipeline import cli, inference, records
from lora_pipeline.records import CARD

PASSWORD, TOKEN = "pa55WORD", "tok3nVALUE"


@pytest.fixture
def card_only(tmp_path):
    """A model directory with its card and nothing else: enough for every check made before the load."""
    model = tmp_path / "model"
    model.mkdir()
    (model / CARD).write_text(json.dumps({"format": "lora-pipeline-classifier", "variant": "full",
                                          "labels": ["neg", "pos"], "max_length": 16, "text_pair": False,
                                          "precision": "fp32"}))
    return model


@pytest.fixture
def no_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")
    monkeypatch.setattr(cli, "load_classifier", refuse)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(["predict", *argv, "--no-progress"])
    out, err = capsys.readouterr()
    assert out == ""
    return code, err


def test_a_tsv_with_quotes_that_merge_rows_is_refused_as_ingest_refuses_it(card_only, no_load, tmp_path, capsys):
    rows = [f"review {i}" for i in range(40)]
    rows[10], rows[11] = '"a quote opened here', 'and closed on the next line" 5/10'  # read as one row
    (tmp_path / "in.tsv").write_text("text\n" + "\n".join(rows) + "\n")
    code, err = _run([str(card_only), "--input", str(tmp_path / "in.tsv")], capsys)
    assert code == 2 and "double quote" in err and "line 12" in err and "data.quoting: none" in err
    assert len(err.strip().splitlines()) == 1


def test_quoting_none_reads_the_same_tsv_row_for_row(card_only, tmp_path):
    rows = [f"review {i}" for i in range(40)]
    rows[10], rows[11] = '"a quote opened here', 'and closed on the next line" 5/10'
    (tmp_path / "in.tsv").write_text("text\n" + "\n".join(rows) + "\n")
    args = cli._parser().parse_args(["predict", str(card_only), "--input", str(tmp_path / "in.tsv"),
                                     "--quoting", "none"])
    assert cli._read_input(args)["text"].tolist() == rows


def test_columns_are_checked_before_the_model_loads(card_only, no_load, tmp_path, capsys):
    pd.DataFrame({"body": ["fine"]}).to_csv(tmp_path / "other.csv", index=False)
    code, err = _run([str(card_only), "--input", str(tmp_path / "other.csv")], capsys)
    assert code == 2 and "no column 'text'" in err


@pytest.mark.parametrize("value, kind", [(5, "int"), (1.5, "float"), (True, "bool"), ({"a": 1}, "dict")])
def test_a_text_that_is_not_a_string_is_refused(value, kind):
    classifier = types.SimpleNamespace(card=types.SimpleNamespace(text_pair=False), labels=["a", "b"])
    frame = pd.DataFrame({"text": ["fine", value]})
    with pytest.raises(inference.PipelineError, match=f"row 2 holds {kind} values, not text"):
        inference.predict_frame(classifier, frame)


def test_a_password_and_token_of_the_tracking_uri_never_reach_the_error(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://bob:{PASSWORD}@127.0.0.1:9/?token={TOKEN}")
    import mlflow

    def fail(artifact_uri, dst_path):
        raise ConnectionError(f"Max retries exceeded: {mlflow.get_tracking_uri()}api/2.0?token={TOKEN}")
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", fail)
    code, err = _run(["models:/m@champion", "x"], capsys)
    assert code == 2 and "cannot download it from MLflow" in err
    assert PASSWORD not in err and TOKEN not in err and "bob:***@127.0.0.1" in err


def test_a_model_uri_outside_a_project_creates_no_mlflow_store(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    code, err = _run(["models:/m@champion", "x"], capsys)
    assert code == 2 and "no MLflow store" in err and "MLFLOW_TRACKING_URI" in err
    assert not list(tmp_path.iterdir())


def _stub_classifier(card_dir):
    """Predicts 'pos' (0.25 / 0.75) for every text, with the card of ``card_dir``."""
    import numpy as np

    def proba(texts, pairs=None, *, batch_size=64, on_batch=None):
        return np.tile([0.25, 0.75], (len(texts), 1))
    return types.SimpleNamespace(card=records.read_card(card_dir), labels=["neg", "pos"], predict_proba=proba)


def test_predict_passes_every_input_column_through_and_appends_the_predictions(card_only, tmp_path, capsys,
                                                                               monkeypatch):
    monkeypatch.setattr(cli, "load_classifier", lambda *a, **k: _stub_classifier(card_only))
    pd.DataFrame({"id": [7, 3], "text": ["fine", "bad"], "source": ["web", "mail"]}).to_csv(tmp_path / "in.csv",
                                                                                             index=False)
    assert cli.main(["predict", str(card_only), "--input", str(tmp_path / "in.csv"), "--no-progress"]) == 0
    out = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert list(out.columns) == ["id", "text", "source", "label", "prob_neg", "prob_pos"]
    assert out["id"].tolist() == [7, 3] and out["source"].tolist() == ["web", "mail"]


def test_an_input_column_named_like_a_prediction_column_is_refused_before_the_model_loads(card_only, no_load,
                                                                                          tmp_path, capsys):
    pd.DataFrame({"text": ["fine"], "label": ["pos"]}).to_csv(tmp_path / "in.csv", index=False)
    code, err = _run([str(card_only), "--input", str(tmp_path / "in.csv")], capsys)
    assert code == 2 and "input already has a column 'label'" in err and "rename" in err


@pytest.mark.parametrize("blank", ["  ", ""])
def test_a_blank_row_in_a_one_column_file_is_an_empty_text_not_a_skipped_line(card_only, no_load, tmp_path, capsys,
                                                                              blank):
    """Every input line is a row: a whitespace-only (or empty) text is refused by its row number instead of being
    dropped as a blank line, which would return fewer predictions than rows."""
    (tmp_path / "blank.csv").write_text(f"review\nfine\n{blank}\ngood\n")
    code, err = _run([str(card_only), "--input", str(tmp_path / "blank.csv"), "--text-column", "review"], capsys)
    assert code == 2 and "empty text in row 2" in err
