"""Every study of record under docs/results recomputes from its committed files: the record rebuilds the committed
study.json number for number, and where a study was run in parts, merging the committed parts gives its record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_pipeline.figures import report_markdown
from lora_pipeline.record import build_study, merge_records, read_record
from lora_pipeline.study_file import read_study
from tests.support.builders import ROOT

STUDIES = sorted(p.parent for p in (ROOT / "docs" / "results").glob("*/record.json.gz"))


def test_there_is_a_study_of_record():
    assert STUDIES, "docs/results holds no study folder with a record.json.gz"


@pytest.mark.parametrize("folder", STUDIES, ids=[p.name for p in STUDIES])
def test_the_committed_study_rebuilds_from_its_record(folder: Path):
    committed = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    rebuilt = json.loads(json.dumps(build_study(read_record(folder / "record.json.gz")).to_json(), sort_keys=True))
    assert rebuilt == committed
    assert rebuilt["answer"]["sentence"] in (folder / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("folder", STUDIES, ids=[p.name for p in STUDIES])
def test_the_committed_report_is_the_one_its_committed_study_file_renders(folder: Path):
    """The report stage's path: the committed study.json read back (format, version and every key checked) renders
    the committed report.md to the character."""
    study = read_study(folder / "study.json")
    assert report_markdown(study, "figures") == (folder / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("folder", [p for p in STUDIES if (p / "parts").is_dir()],
                         ids=[p.name for p in STUDIES if (p / "parts").is_dir()])
def test_a_study_run_in_parts_is_the_merge_of_its_committed_parts(folder: Path):
    parts = sorted((folder / "parts").glob("*.json.gz"))
    assert parts  # a study run in parts may have landed only its first
    assert merge_records([read_record(p) for p in parts]) == read_record(folder / "record.json.gz")
