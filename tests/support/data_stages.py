"""The data stages (ingest → validate → split) called as ``main([...])`` on files a test writes, with the
params.yaml the own-data tests need."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from stages import ingest as ingest_stage
from stages import split as split_stage
from stages import validate as validate_stage

# the validate section run_data_stages writes, before the test's overrides
VALIDATE = {"labels": None, "max_classes": 5, "min_rows_per_class": 2, "max_duplicate_rate": 0.5}


def write_files(root: Path, files: dict[str, str]) -> Path:
    """``{name: content}`` as files under ``root`` (cp1252 for names ending in ``.cp1252``, else UTF-8); returns
    ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).write_bytes(content.encode("cp1252") if name.endswith(".cp1252") else content.encode())
    return root


def run_data_stages(tmp: Path, data: dict[str, Any], validate: dict[str, Any] | None = None,
                    model_dir: Path | None = None, split: dict[str, Any] | None = None, max_length: int = 32) -> dict:
    """Write params.yaml, run ingest, validate and (with ``model_dir``) split; return exit codes and outputs."""
    params = {"data": {"source": "file", **data}, "validate": {**VALIDATE, **(validate or {})},
              "split": {"seed": 0, "val_size": 0.25, "test_size": 0.2, **(split or {})},
              "model": {"name": str(model_dir or "unused"), "max_length": max_length}, "mlflow": {"enabled": False}}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    out: dict[str, Any] = {"raw": tmp / "raw", "clean": tmp / "clean", "split": tmp / "split"}
    out["ingest"] = ingest_stage.main(["--params", str(tmp / "params.yaml"), "--out", str(out["raw"])])
    if out["ingest"] != 0:
        return out
    out["validate"] = validate_stage.main(["--params", str(tmp / "params.yaml"), "--raw", str(out["raw"]),
                                           "--out", str(out["clean"]), "--metrics", str(tmp / "validate.json"),
                                           "--report", str(tmp / "report")])
    if out["validate"] != 0:
        return out
    out["validate_metrics"] = json.loads((tmp / "validate.json").read_text())
    if model_dir is not None:
        out["split_rc"] = split_stage.main(["--params", str(tmp / "params.yaml"), "--clean", str(out["clean"]),
                                            "--out", str(out["split"]), "--metrics", str(tmp / "split.json")])
        if out["split_rc"] == 0:
            out["split_metrics"] = json.loads((tmp / "split.json").read_text())
            out["parts"] = {n: pd.read_parquet(out["split"] / f"{n}.parquet") for n in ("train", "val", "test")}
    return out
