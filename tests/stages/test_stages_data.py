"""Stage tests: stages.ingest / stages.validate main([...]) on fixture files, good and broken."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from stages import ingest as ingest_stage
from stages import validate as validate_stage

VALIDATE = {"labels": ["pos", "neg"], "max_classes": 5, "min_text_chars": 1, "max_text_chars": 1000,
            "max_duplicate_rate": 0.2, "min_rows_per_class": 3, "drop_empty": True, "dedupe": True,
            "drop_conflicting": True}
GOOD = "text,label\n" + "".join(f"review number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(12))


@pytest.fixture(autouse=True)
def _restore_logging():
    """run_stage reconfigures the root logger; put pytest's handlers back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def setup(tmp: Path, content: str | bytes, data: dict | None = None, validate: dict | None = None,
          name: str = "in.csv") -> dict[str, Path]:
    """Write the input file and a params.yaml; return the paths the stages use."""
    src = tmp / name
    src.write_bytes(content.encode() if isinstance(content, str) else content)
    params = {"data": {"source": "file", "path": str(src), **(data or {})}, "validate": {**VALIDATE, **(validate or {})},
              "mlflow": {"enabled": False}}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return {"params": tmp / "params.yaml", "raw": tmp / "raw", "clean": tmp / "clean",
            "metrics": tmp / "metrics" / "validate.json", "report": tmp / "report"}


def run_ingest(p: dict[str, Path]) -> int:
    return ingest_stage.main(["--params", str(p["params"]), "--out", str(p["raw"])])


def run_validate(p: dict[str, Path]) -> int:
    return validate_stage.main(["--params", str(p["params"]), "--raw", str(p["raw"]), "--out", str(p["clean"]),
                                "--metrics", str(p["metrics"]), "--report", str(p["report"])])


def test_good_data_end_to_end(tmp_path):
    p = setup(tmp_path, GOOD + "review number 1,pos\n,neg\n")
    assert run_ingest(p) == 0 and run_validate(p) == 0
    metrics = yaml.safe_load(p["metrics"].read_text())
    assert metrics["rows_raw"] == 14 and metrics["rows_clean"] == 12
    assert metrics["dropped_duplicates"] == 1 and metrics["dropped_empty"] == 1
    assert metrics["rows_per_class_pos"] == 6 and metrics["n_classes"] == 2
    assert (p["clean"] / "data.parquet").is_file() and (p["report"] / "index.html").is_file()
    assert (p["report"] / "summary.json").is_file()
    manifest = (p["raw"] / "manifest.json").read_bytes()
    assert run_ingest(p) == 0 and (p["raw"] / "manifest.json").read_bytes() == manifest  # deterministic


BROKEN_INGEST = {
    "missing_text_column": ("sentence,label\na,pos\n", {}, ["data.text_column 'text'", "['sentence', 'label']"]),
    "missing_label_column": ("text,y\na,pos\n", {}, ["data.label_column 'label'", "['text', 'y']"]),
    "non_utf8": (b"text,label\nok,pos\ncaf\xe9,neg\n", {}, ["byte offset 21 (line 3, column 4)", "data.encoding", "cp1252"]),
    "malformed_csv": ('text,label\n"a\nb",pos\nx,y,z\n', {}, ["malformed CSV", "Expected 2 fields in line 3"]),
    "empty_file": (b"", {}, ["is empty"]),
    "unknown_codec": (GOOD, {"encoding": "klingon"}, ["data.encoding 'klingon' is not a known codec"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN_INGEST))
def test_broken_sources_fail_ingest_and_write_nothing(tmp_path, capsys, case):
    content, data, expected = BROKEN_INGEST[case]
    p = setup(tmp_path, content, data)
    assert run_ingest(p) != 0
    err = capsys.readouterr().err
    for text in expected:
        assert text in err
    assert not p["raw"].exists()


BROKEN_VALIDATE = {
    "all_texts_empty_or_nan": ("text,label\n,pos\n  ,neg\n,pos\n", {}, ["n_classes", "0 of 3 rows kept (dropped 3 empty"]),
    "nan_labels": (GOOD + "a text,\n", {}, ["label_not_null", "1 of 13 rows with a null label"]),
    "labels_outside_set": (GOOD + "x,maybe\n", {}, ["label_in_set", "label='maybe'"]),
    "too_many_labels": ("text,label\n" + "".join(f"t{i},l{i % 7}\n" for i in range(70)), {"labels": None},
                        ["max_classes", "7 distinct labels, more than validate.max_classes=5"]),
    "single_class": ("text,label\n" + "".join(f"t{i},pos\n" for i in range(9)), {},
                     ["n_classes", "1 distinct label(s) ['pos']", "declared_labels_present", "['neg']"]),
    "zero_rows_header_only": ("text,label\n", {}, ["row_count", "the data has 0 rows"]),
    "ten_mb_single_line": ("text,label\n" + "x" * 10_000_000 + ",pos\n" + GOOD[11:], {},
                           ["text_max_chars", "… and 9999940 more characters", "validate.max_text_chars=1000"]),
    "conflicting_labels": (GOOD + "review number 1,neg\n", {"drop_conflicting": False},
                           ["no_conflicting_labels", "2 of 13 rows whose text also occurs with another label",
                            "set validate.drop_conflicting: true"]),
    "too_few_rows_after_cleaning": ("text,label\na,pos\nb,pos\nc,pos\nd,neg\nd,neg\nd,neg\n", {},
                                    ["min_rows_per_class", "'neg' (1 rows)"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN_VALIDATE))
def test_broken_data_fails_validate_and_writes_nothing(tmp_path, capsys, case):
    content, validate, expected = BROKEN_VALIDATE[case]
    p = setup(tmp_path, content, validate=validate)
    assert run_ingest(p) == 0
    assert run_validate(p) != 0
    err = capsys.readouterr().err
    for text in expected:
        assert text in err
    assert "validate failed:" in err and len(err) < 20_000
    assert not p["clean"].exists() and not p["metrics"].exists() and not p["report"].exists()


def test_quoted_newlines_tabs_and_quotes_read_correctly(tmp_path):
    content = 'text,label\n"line one\nline two",pos\n"tab\there",neg\n"say ""hi""",pos\n'
    p = setup(tmp_path, content, validate={"min_rows_per_class": 1})
    assert run_ingest(p) == 0 and run_validate(p) == 0
    import pandas as pd

    texts = pd.read_parquet(p["clean"] / "data.parquet")["text"].tolist()
    assert texts == ["line one\nline two", "tab\there", 'say "hi"']


def test_failures_keep_previous_good_outputs(tmp_path, capsys):
    p = setup(tmp_path, GOOD)
    assert run_ingest(p) == 0 and run_validate(p) == 0
    before = {path: path.read_bytes() for path in
              [p["raw"] / "data.parquet", p["clean"] / "data.parquet", p["metrics"], p["report"] / "index.html"]}
    setup(tmp_path, GOOD, validate={"labels": ["pos", "neg", "other"]})  # validate now fails
    assert run_validate(p) != 0
    setup(tmp_path, "text,y\na,pos\n")  # ingest now fails
    assert run_ingest(p) != 0
    assert "declared_labels_present" in capsys.readouterr().err
    assert all(path.read_bytes() == data for path, data in before.items())
    assert sorted(x.name for x in tmp_path.iterdir()) == ["clean", "in.csv", "metrics", "params.yaml", "raw", "report"]


def test_missing_raw_and_bad_params_are_clean_errors(tmp_path, capsys):
    p = setup(tmp_path, GOOD)
    assert run_validate(p) == 2 and "run the ingest stage first" in capsys.readouterr().err
    (tmp_path / "params.yaml").write_text("data:\n  source: file\n  path: x.csv\n  colour: red\n")
    assert run_ingest(p) == 2 and "'data.colour' is not a known key" in capsys.readouterr().err


# ---------------------------------------------------------------- structurally bad input: exit 2 with the reason
BAD_INPUT = {  # accepted silently before: now exit 2 with a one-line reason
    "nul_byte": (b"text,label\nfine,pos\nhel\x00lo,neg\n", "in.csv", ["NUL character at line 3, column 4"]),
    "duplicate_text_column": (b"text,text,label\na,b,pos\n", "in.csv",
                              ["data.text_column 'text' names 2 columns", "(positions 1 and 2)"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_structurally_bad_input_exits_2_with_the_reason(tmp_path, capsys, case):
    content, name, expected = BAD_INPUT[case]
    p = setup(tmp_path, content, name=name)
    assert run_ingest(p) == 2
    err = capsys.readouterr().err
    assert all(text in err for text in expected) and not p["raw"].exists()


def test_int64_parquet_text_column_exits_2(tmp_path, capsys):
    import pandas as pd

    src = tmp_path / "in.parquet"
    pd.DataFrame({"text": list(range(12)), "label": ["pos", "neg"] * 6}).to_parquet(src)
    p = setup(tmp_path, src.read_bytes(), name="in.parquet")
    assert run_ingest(p) == 2
    assert "data.text_column 'text'" in (err := capsys.readouterr().err) and "holds int64 values, not text" in err


def test_zero_width_texts_are_dropped_and_counted_in_metrics(tmp_path):
    p = setup(tmp_path, GOOD + "\u200b\u200b,pos\n\ufeff \u200d,neg\n")
    assert run_ingest(p) == 0 and run_validate(p) == 0
    metrics = yaml.safe_load(p["metrics"].read_text())
    assert metrics["rows_raw"] == 14 and metrics["rows_clean"] == 12
    assert metrics["dropped_empty"] == 2 and metrics["invisible_only_texts"] == 2


def test_ten_megabyte_header_is_not_quoted_whole(tmp_path, capsys):
    p = setup(tmp_path, "t" * 10_000_000 + ",label\nx,pos\n")
    assert run_ingest(p) == 2
    err = capsys.readouterr().err
    assert "data.text_column 'text' is not a column" in err and "… and 9999960 more characters" in err
    assert len(err) < 5_000


def test_five_hundred_labels_are_not_listed_in_full(tmp_path, capsys):
    labels = ["pos", "neg"] + [f"label_{i:03d}" for i in range(498)]
    p = setup(tmp_path, GOOD + "odd one,other\n", validate={"labels": labels, "max_classes": 600})
    assert run_ingest(p) == 0 and run_validate(p) == 2
    err = capsys.readouterr().err
    assert "label_in_set" in err and "declared_labels_present" in err
    assert "… and 490 more" in err and "… and 488 more" in err  # 500 declared; 498 declared but absent
    assert "label_497" not in err and len(err) < 8_000
