"""The typed records stages hand each other: a run spec names a train instance the way dvc.yaml does (its flags,
folder tag, study row, MLflow run name, and the grid in DVC's order), and a train run record reads back what the
train stage wrote, refusing another version in one line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from lora_pipeline.config import LoraConfig, ModelConfig, StudyConfig, load_params
from lora_pipeline.errors import ConfigError, PipelineError
from lora_pipeline.files import write_json
from lora_pipeline.records import RunSpec, TrainRecord, read_train_record, row_configuration, row_rank, study_row
from tests.support.builders import LABELS, ROOT
from tests.support.dvc_project import stage_instance

SPECS = [  # (spec, tag, row, MLflow run name)
    (RunSpec("scratch", 42, 4e-4), "s42-lr0.0004", "scratch", "train_scratch s42 lr0.0004"),
    (RunSpec("full", 42, 1e-4), "s42-lr0.0001", "full", "train_full s42 lr0.0001"),
    (RunSpec("full", 7, 5e-5), "s7-lr5e-05", "full", "train_full s7 lr5e-05"),
    (RunSpec("lora", 42, 2e-3, rank=8), "lora-default-r8-s42-lr0.002", "lora_r8",
     "train_lora r8 s42 lr0.002"),
    (RunSpec("lora", 0, 3e-5, rank=16), "lora-default-r16-s0-lr3e-05", "lora_r16",
     "train_lora r16 s0 lr3e-05"),
    (RunSpec("lora", 42, 2e-3, 8, "all_linear", "dora"), "dora-all_linear-r8-s42-lr0.002", "dora_r8_all_linear",
     "train_lora dora all_linear r8 s42 lr0.002"),
]


@pytest.mark.parametrize("spec, tag, row, run_name", SPECS)
def test_a_spec_names_its_folders_row_and_mlflow_run(spec, tag, row, run_name, monkeypatch) -> None:
    from lora_pipeline.tracking.mlflow_tracker import run_display_name

    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert (spec.tag, spec.row, spec.run_name, spec.stage) == (tag, row, run_name, f"train_{spec.variant}")
    tags = spec.tracking_tags(checkpoint_key="abc")
    assert run_display_name(spec.stage, tags) == spec.run_name  # the name the tracker gives the train run
    lora = {"lora_rank": spec.rank, "rank": spec.rank, "target_set": spec.target_set, "adapter": spec.adapter}
    assert tags == {"stage": spec.stage, "variant": spec.variant, "seed": spec.seed, "lr": spec.lr,
                    "checkpoint_key": "abc", **(lora if spec.rank is not None else {})}
    assert spec.fields() == {"variant": spec.variant, "rank": spec.rank, "target_set": spec.target_set,
                             "adapter": spec.adapter, "seed": spec.seed, "lr": spec.lr}
    assert (spec.target_set, spec.adapter) == ((None, None) if spec.variant != "lora" else
                                               (spec.target_set or "default", spec.adapter or "lora"))


@pytest.mark.parametrize("name, variant, rank, target_set, adapter", [
    ("lora_r8", "lora", 8, "default", "lora"), ("lora_r128", "lora", 128, "default", "lora"),
    ("dora_r8", "lora", 8, "default", "dora"), ("lora_r2_all_linear", "lora", 2, "all_linear", "lora"),
    ("dora_r16_attention_all", "lora", 16, "attention_all", "dora"),
    ("full", "full", None, None, None), ("scratch", "scratch", None, None, None)])
def test_a_study_rows_name_holds_its_configuration(name, variant, rank, target_set, adapter) -> None:
    """The default target set and LoRA keep the short names (``lora_r8``); another set or DoRA is in the name."""
    assert study_row(variant, rank, target_set, adapter) == name and row_rank(name) == rank
    assert row_configuration(name) == (None if rank is None else (adapter, target_set, rank))
    assert row_rank("tfidf_logreg") is None and row_rank("lora_rx") is None and row_rank("vera_r8") is None


@pytest.mark.parametrize("variant", ["scratch", "full", "lora"])
def test_a_spec_owns_the_train_stages_per_instance_flags(variant) -> None:
    parser = argparse.ArgumentParser()
    RunSpec.add_arguments(parser, variant)
    helps = {a.dest: a.help for a in parser._actions if a.dest != "help"}
    lora = {"rank": "LoRA rank (one of study.ranks)",
            "target_set": "modules to adapt: a name of lora.target_sets (one of study.target_sets)",
            "adapter": "lora or dora (one of study.adapters)"}
    assert helps == {"seed": "seed of this run (one of study.seeds)",
                     "lr": f"peak learning rate (one of study.{variant}_lrs)", **(lora if variant == "lora" else {})}
    rank = ["--rank", "8"] if variant == "lora" else []
    args = parser.parse_args(["--seed", "42", "--lr", "5e-05", *rank])
    assert RunSpec.from_args(args, variant) == RunSpec(variant, 42, 5e-5, 8 if variant == "lora" else None)
    if variant == "lora":
        args = parser.parse_args(["--seed", "42", "--lr", "5e-05", *rank, "--target-set", "all_linear",
                                  "--adapter", "dora"])
        assert RunSpec.from_args(args, variant) == RunSpec(variant, 42, 5e-5, 8, "all_linear", "dora")
        with pytest.raises(SystemExit):  # an adapter the package does not have
            parser.parse_args(["--seed", "42", "--lr", "5e-05", *rank, "--adapter", "vera"])
    with pytest.raises(SystemExit):  # lora requires --rank; the others have no such flag
        parser.parse_args(["--seed", "42", "--lr", "5e-05", *(["--rank", "8"] if variant != "lora" else [])])


@pytest.mark.parametrize("variant, rank, error, match", [
    ("lora", None, PipelineError, "a lora run needs a LoRA rank"),
    ("full", 8, PipelineError, "a full run takes no LoRA rank"),
    ("lora", 0, ConfigError, r"'lora\.rank' must be >= 1"),
    ("bert", None, PipelineError, "unknown variant 'bert'"),
])
def test_a_spec_that_is_no_grid_point_is_refused(variant, rank, error, match) -> None:
    with pytest.raises(error, match=match):
        RunSpec(variant, 42, 1e-4, rank)


def test_a_target_set_or_adapter_belongs_to_lora_runs_only() -> None:
    with pytest.raises(PipelineError, match="a full run takes no LoRA target set or adapter"):
        RunSpec("full", 42, 1e-4, target_set="all_linear")
    with pytest.raises(PipelineError, match="a scratch run takes no LoRA target set or adapter"):
        RunSpec("scratch", 42, 1e-4, adapter="dora")
    with pytest.raises(PipelineError, match="unknown adapter 'vera'; expected one of lora, dora"):
        RunSpec("lora", 42, 1e-4, 8, adapter="vera")


def test_the_grid_is_every_instance_in_dvc_matrix_order() -> None:
    study = StudyConfig(seeds=(42, 7), ranks=(16, 4), scratch_lrs=(4e-4,), full_lrs=(1e-4, 3e-5), lora_lrs=(2e-3,))
    grid = RunSpec.grid(study)
    assert len(grid) == 2 * 1 + 2 * 2 + 2 * 2 * 1
    assert [(s.variant, s.rank, s.seed, s.lr) for s in grid] == [
        ("scratch", None, 42, 4e-4), ("scratch", None, 7, 4e-4),
        ("full", None, 42, 1e-4), ("full", None, 42, 3e-5), ("full", None, 7, 1e-4), ("full", None, 7, 3e-5),
        ("lora", 16, 42, 2e-3), ("lora", 16, 7, 2e-3), ("lora", 4, 42, 2e-3), ("lora", 4, 7, 2e-3)]
    axes = StudyConfig(seeds=(42,), ranks=(8,), lora_lrs=(2e-3,), target_sets=("default", "all_linear"),
                       adapters=("lora", "dora"))
    assert [(s.rank, s.target_set, s.adapter) for s in RunSpec.grid(axes) if s.variant == "lora"] == [
        (8, "default", "lora"), (8, "default", "dora"), (8, "all_linear", "lora"), (8, "all_linear", "dora")]


def test_the_grid_and_its_tags_are_those_dvc_builds_from_dvc_yaml(tmp_path, monkeypatch) -> None:
    """DVC's own resolver expands dvc.yaml's train stages over a params.yaml grid of awkward learning rates: in
    that order, each instance's --seed/--lr/--rank parse to the grid's spec, and its --out folder is the spec's tag."""
    from dvc.parsing import DataResolver
    from dvc.repo import Repo
    from dvc.utils.serialize import load_yaml

    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "site-cache"))  # not the machine's /var/tmp/dvc
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"].update(seeds=[42, 7], ranks=[16, 4], scratch_lrs=[4.0e-4], full_lrs=[1.0e-4, 3.0e-5],
                           lora_lrs=[2.0e-3, 5.0e-5, 1.23456789e-3, 1.0e-2], target_sets=["default", "all_linear"],
                           adapters=["lora", "dora"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    resolved = DataResolver(Repo.init(tmp_path, no_scm=True), str(tmp_path), load_yaml(tmp_path / "dvc.yaml")).resolve()
    built = []
    for name, stage in resolved["stages"].items():
        variant = name.split("@")[0].removeprefix("train_")
        if not name.startswith("train_"):
            continue
        parser = argparse.ArgumentParser()
        RunSpec.add_arguments(parser, variant)
        parser.add_argument("--out")
        args, _ = parser.parse_known_args(stage["cmd"].split()[3:])
        spec = RunSpec.from_args(args, variant)
        assert spec.tag == Path(args.out).name and stage_instance(spec) == name, name
        built.append(spec)
    assert built == RunSpec.grid(load_params(tmp_path / "params.yaml", sections=["study"]).study)


RECORD = TrainRecord(
    variant="lora", rank=8, seed=42, lr=0.002, tag="lora-default-r8-s42-lr0.002", val_macro_f1=0.8123, best_epoch=1.5,
    best_step=120, epochs=2.0, steps=160, planned_steps=160, stop_reason="cap: completed 2 epochs (160 steps)",
    stopped_by="cap", converged=False, validations=8, seconds_to_best=12.5, cpu_seconds_to_best=20.25,
    train_seconds=17.0, train_cpu_seconds=30.5, samples_per_second=150.25, peak_memory_mb=812.3,
    trainable_params=1234, total_params=22_000_000, trainable_percent=0.0056, size_on_disk_mb=0.123, device="cpu",
    precision="fp32", param_dtype="float32", target_set="default", adapter="lora", adapter_params=1024)


def test_a_train_record_writes_the_metrics_files_keys_and_reads_back_equal(tmp_path) -> None:
    path = tmp_path / "lora-r8-s42-lr0.002.json"
    write_json(path, RECORD.to_json())  # as the train stage writes it
    data = json.loads(path.read_text())
    assert list(data) == sorted(["variant", "rank", "seed", "lr", "tag", "val_macro_f1", "best_epoch", "best_step",
                                 "epochs", "steps", "planned_steps", "stop_reason", "stopped_by", "converged",
                                 "validations", "seconds_to_best", "cpu_seconds_to_best", "train_seconds",
                                 "train_cpu_seconds", "samples_per_second", "peak_memory_mb", "trainable_params",
                                 "total_params", "trainable_percent", "size_on_disk_mb", "device", "precision",
                                 "param_dtype", "target_set", "adapter", "adapter_params"])  # no format/version
    assert read_train_record(path) == RECORD
    assert RECORD.spec() == RunSpec("lora", 42, 0.002, 8, "default", "lora")
    assert set(RECORD.metrics()) == set(data) - set(TrainRecord.RUN_KEYS)


def test_a_lora_train_record_from_before_the_target_set_and_adapter_axes_reads_as_the_default_lora(tmp_path):
    """Such a record has neither key; its run used the default set and LoRA, the only ones there were."""
    path = tmp_path / "lora-r8-s42-lr0.002.json"
    new = ("target_set", "adapter", "adapter_params")
    write_json(path, {k: v for k, v in RECORD.to_json().items() if k not in new})
    assert read_train_record(path) == dataclasses.replace(RECORD, adapter_params=None)
    full = dataclasses.replace(RECORD, variant="full", rank=None, target_set=None, adapter=None, adapter_params=None)
    write_json(path, {k: v for k, v in full.to_json().items() if k not in new})
    assert read_train_record(path) == full and (full.target_set, full.adapter) == (None, None)


def test_the_study_record_keeps_fields_every_train_record_has() -> None:
    from lora_pipeline.record import RUN_FIELDS

    assert set(RUN_FIELDS) <= {f.name for f in dataclasses.fields(TrainRecord)}


@pytest.mark.parametrize("change, match", [
    ({"version": 2}, r"train run record version 2, but this lora-pipeline reads version 1"),
    ({"format": "lora-pipeline study record"}, r"not a lora-pipeline train run record"),
    ({"val_macro_f1": None}, r"a train run record without \['val_macro_f1'\]"),
])
def test_a_record_of_another_version_or_kind_is_refused_in_one_line(change, match, tmp_path) -> None:
    data = {**RECORD.to_json(), **change}
    data = {k: v for k, v in data.items() if v is not None}
    (tmp_path / "r.json").write_text(json.dumps(data))
    with pytest.raises(PipelineError, match=match) as err:
        read_train_record(tmp_path / "r.json")
    assert "\n" not in str(err.value)


def test_the_lora_section_holds_no_rank_and_a_lora_build_takes_the_specs(tiny_model_dir, tiny_tokenizer) -> None:
    from lora_pipeline.lora import lora_layers
    from lora_pipeline.models import build_model

    assert "rank" not in {f.name for f in dataclasses.fields(LoraConfig)}
    cfg = ModelConfig(name=str(tiny_model_dir), max_length=32)
    for rank in (2, 4):
        spec = RunSpec("lora", 42, 2e-3, rank)
        model = build_model(spec.variant, cfg, LABELS, tiny_tokenizer, lora=LoraConfig(alpha=8.0), rank=spec.rank)
        layers = lora_layers(model)
        assert layers and {layer.rank for _, layer in layers} == {rank}
    with pytest.raises(PipelineError, match="needs the LoRA rank"):
        build_model("lora", cfg, LABELS, tiny_tokenizer, lora=LoraConfig())
