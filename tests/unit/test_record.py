"""A study record rebuilds its study.json and report from itself alone, and checks itself on the way."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from lora_pipeline.cli import main as cli_main
from lora_pipeline.errors import PipelineError
from lora_pipeline.record import FORMAT, VERSION, build_study, merge_records, read_record, write_record
from lora_pipeline.study_file import read_study

LABELS = ["neg", "pos"]
STUDY = {"seeds": [1, 2], "ranks": [4, 16], "tolerance": 0.01, "confidence": 0.95, "resamples": 300,
         "bootstrap_seed": 0, "record_rank": None, "scratch_lrs": [1e-3], "full_lrs": [1e-4], "lora_lrs": [2e-3]}


def _noisy(rng, y, p):
    return np.where(rng.random(y.size) < p, y, 1 - y)


def _run(rng, variant, rank, seed, lr, y_val, y_test, p, cpu):
    val = _noisy(rng, y_val, p)
    score = f1_score(y_val, val, average="macro")
    tag = f"{'' if rank is None else f'r{rank}-'}s{seed}-lr{lr}"
    curve = [{"step": s, "epoch": s / 100, "seconds": cpu * s / 300, "cpu_seconds": cpu * s / 300,
              "val_macro_f1": score * (0.9 + 0.1 * s / 300), "train_loss": 0.5} for s in (100, 200, 300)]
    return {"variant": variant, "rank": rank, "seed": seed, "lr": lr, "tag": tag, "val_macro_f1": score,
            "steps": 300, "planned_steps": 3000, "best_step": 300, "stopped_by": "plateau", "converged": True,
            "stop_reason": "plateau", "train_seconds": cpu, "cpu_seconds_to_best": cpu, "peak_memory_mb": 100.0,
            "trainable_params": 1000 if variant != "lora" else 10 * rank, "trainable_percent": 1.0,
            "size_on_disk_mb": 1.0, "curve": curve, "val_predictions": val.tolist(),
            "test_predictions": _noisy(rng, y_test, p).tolist()}


def _record():
    rng = np.random.default_rng(0)
    y_val, y_test = rng.integers(0, 2, 300), rng.integers(0, 2, 600)
    runs = [_run(rng, "scratch", None, s, 1e-3, y_val, y_test, 0.7, 50.0) for s in (1, 2)]
    runs += [_run(rng, "full", None, s, 1e-4, y_val, y_test, 0.9, 400.0) for s in (1, 2)]
    runs += [_run(rng, "lora", r, s, 2e-3, y_val, y_test, 0.9, 200.0) for r in (4, 16) for s in (1, 2)]
    params = {"study": STUDY, "model": {"name": "tiny"}, "train": {"batch_size": 32}, "scratch": {}, "full": {},
              "lora": {}, "baseline": {}}
    return {"format": FORMAT, "version": VERSION, "labels": LABELS, "params": params, "dataset": None,
            "test": {"labels": y_test.tolist()}, "val": {"labels": y_val.tolist()}, "runs": runs,
            "tfidf": {"test_predictions": _noisy(rng, y_test, 0.8).tolist(),
                      "row": {"macro_f1": 0.8, "macro_f1_low": 0.75, "macro_f1_high": 0.85, "accuracy": 0.8,
                              "accuracy_low": 0.75, "accuracy_high": 0.85}}, "spectra": [], "subspace": []}


def test_a_record_rebuilds_its_study_and_report_with_the_same_answer(tmp_path):
    record = _record()
    write_record(tmp_path / "record.json.gz", record)
    assert read_record(tmp_path / "record.json.gz") == json.loads(json.dumps(record))
    expected = build_study(record)
    assert cli_main(["rebuild", str(tmp_path)]) == 0
    study = read_study(tmp_path / "study.json")
    assert study == expected  # every number, as the file holds it
    assert study.answer.sentence == expected.answer.sentence
    assert study.equal_cost.budget == pytest.approx(400.0)  # both full seeds reach their best at 400 s
    report = (tmp_path / "report.md").read_text()
    assert expected.answer.sentence in report and (tmp_path / "figures" / "curves.png").stat().st_size > 0
    assert study.answer.equal_cost in report


def test_the_same_record_writes_the_same_bytes(tmp_path):
    write_record(tmp_path / "a.json.gz", _record())
    write_record(tmp_path / "b.json.gz", _record())
    assert (tmp_path / "a.json.gz").read_bytes() == (tmp_path / "b.json.gz").read_bytes()


def test_a_record_whose_stated_validation_score_disagrees_with_its_predictions_is_refused():
    record = _record()
    record["runs"][3]["val_macro_f1"] += 0.01
    with pytest.raises(PipelineError, match="states validation macro-F1 .* but its predictions give"):
        build_study(record)


def test_rebuild_of_a_folder_without_a_record_is_a_one_line_error(tmp_path, capsys):
    assert cli_main(["rebuild", str(tmp_path)]) == 2
    assert "record.json.gz" in capsys.readouterr().err


def _parts(record, seeds_a=(1,), seeds_b=(2,)):
    """The record split by seed into two parts, as two machines (or sessions) running one seed each write them."""
    out = []
    for seeds in (seeds_a, seeds_b):
        part = json.loads(json.dumps(record))
        part["runs"] = [r for r in part["runs"] if r["seed"] in seeds]
        part["params"]["study"]["seeds"] = list(seeds)
        out.append(part)
    return out


def test_parts_of_a_study_merge_into_the_record_of_the_whole():
    record = _record()
    merged = merge_records(_parts(record))
    assert merged["params"]["study"]["seeds"] == [1, 2]
    assert sorted(r["tag"] for r in merged["runs"]) == sorted(r["tag"] for r in record["runs"])
    whole, again = build_study(record), build_study(merged)
    assert again.answer.sentence == whole.answer.sentence
    assert again.rows["lora_r16"].vs_full == whole.rows["lora_r16"].vs_full
    merged["spectra"] = [{"tag": "r4-s1-lr0.002", "rank": 4, "seed": 1, "layers": {}},
                         {"tag": "r4-s1-lr0.009", "rank": 4, "seed": 1, "layers": {}}]  # a rate no longer chosen
    assert [x.tag for x in build_study(merged).spectra] == ["r4-s1-lr0.002"]
    assert merged["parts"] == [{"seeds": [1], "runs": 4}, {"seeds": [2], "runs": 4}]


def test_each_part_counts_the_runs_it_adds_so_the_counts_sum_to_the_merged_runs():
    """A part that holds runs an earlier part holds (the same full fine-tuning run, evaluated again beside a new
    rank) counts only what it adds."""
    a, b = _parts(_record(), (1,), (1, 2))
    merged = merge_records([a, b])
    assert merged["parts"] == [{"seeds": [1], "runs": 4}, {"seeds": [1, 2], "runs": 4}]
    assert sum(p["runs"] for p in merged["parts"]) == len(merged["runs"]) == 8


def test_merged_parts_keep_every_parts_tagged_subspace_grids_once():
    """Each part's grids name the two runs they pair, so a merge keeps them all (a grid held by two parts once)
    and the study shows those of the chosen runs; untagged grids (older records) are kept only from a lone part."""
    a, b = _parts(_record())
    grid = {"layer": "q", "grid": [[1.0]], "small_rank": 4, "large_rank": 16}
    a["subspace"] = [{**grid, "seed": 1, "small_tag": "r4-s1-lr0.002", "large_tag": "r16-s1-lr0.002"}]
    b["subspace"] = [{**grid, "seed": 2, "small_tag": "r4-s2-lr0.002", "large_tag": "r16-s2-lr0.002"}]
    merged = merge_records([a, b, json.loads(json.dumps(b))])
    assert [x["seed"] for x in merged["subspace"]] == [1, 2]
    a["subspace"] = [{**grid, "seed": 1}]
    b["subspace"] = [{**grid, "seed": 2}]
    assert merge_records([a, b])["subspace"] == [] and merge_records([a, _parts(_record())[1]])["subspace"] == \
        a["subspace"]


def test_parts_that_differ_in_what_they_compute_are_refused():
    a, b = _parts(_record())
    b["params"]["train"]["batch_size"] = 16
    with pytest.raises(PipelineError, match=r"part 2 differs from part 1 in params train\.batch_size \(16 vs 32\)"):
        merge_records([a, b])
    a, b = _parts(_record())
    b["test"]["labels"][0] = 1 - b["test"]["labels"][0]
    with pytest.raises(PipelineError, match="part 2 has other test labels than part 1: not the same split"):
        merge_records([a, b])
    a, b = _parts(_record(), (1,), (1, 2))
    b["runs"][0]["val_predictions"][0] = 1 - b["runs"][0]["val_predictions"][0]
    with pytest.raises(PipelineError, match="run scratch s1-lr0.001 is in part 1 and part 2 with other results"):
        merge_records([a, b])


def _in_sets_format(part, sets=None):
    """A part as code with the target-set and adapter axes writes it: named sets, and both on each LoRA run."""
    part = json.loads(json.dumps(part))
    part["params"]["lora"] = {"alpha": 16.0, "target_sets": sets or {"default": None, "all_linear": "all-linear"}}
    part["params"]["study"].update(target_sets=["default"], adapters=["lora"])
    for r in part["runs"]:
        if r["variant"] == "lora":
            r.update(tag=f"lora-default-{r['tag']}", target_set="default", adapter="lora", adapter_params=9216 * r["rank"])
    return part


def test_a_part_from_before_target_sets_merges_with_parts_that_have_them():
    """Its one set (lora.target_modules: null, the model's default) is the set the others call default, its
    adapter LoRA; its runs join the same rows and take the adapter counts the newer runs recorded."""
    old, new = _parts(_record())
    old["params"]["lora"] = {"alpha": 16.0, "target_modules": None, "use_dora": False}
    new = _in_sets_format(new)
    merged = merge_records([old, new])
    assert merged["params"]["lora"] == {"alpha": 16.0, "target_sets": {"all_linear": "all-linear", "default": None}}
    assert merged["params"]["study"]["target_sets"] == ["default"] and merged["params"]["study"]["adapters"] == ["lora"]
    lora = [r for r in merged["runs"] if r["variant"] == "lora"]
    assert {(r["tag"], r["target_set"], r["adapter"], r["adapter_params"]) for r in lora if r["seed"] == 1} == \
        {("r4-s1-lr0.002", "default", "lora", 36864), ("r16-s1-lr0.002", "default", "lora", 147456)}
    study = build_study(merged)
    assert study.rows["lora_r4"].seeds == (1, 2) and study.rows["lora_r4"].adapter_params == 36864
    assert study.answer.sentence == build_study(_record()).answer.sentence
    assert merge_records([new, old])["params"]["lora"] == merged["params"]["lora"]  # either part first
    for r in new["runs"]:  # LoRA's count is rank × Σ(in + out): rank 4's count gives rank 16's
        if r.get("rank") == 16:
            r["adapter_params"] = None
    assert {r["adapter_params"] for r in merge_records([old, new])["runs"] if r.get("rank") == 16} == {147456}
    for r in new["runs"]:  # DoRA's adds a magnitude per output unit: no other rank gives it
        if r["variant"] == "lora":
            r.update(adapter="dora", adapter_params=None if r["rank"] == 16 else r["adapter_params"] + 2304)
    old["params"]["lora"]["use_dora"] = True
    dora = [r for r in merge_records([old, new])["runs"] if r["variant"] == "lora"]
    assert {(r["rank"], r["adapter_params"]) for r in dora} == {(4, 39168), (16, None)}


def test_parts_that_name_one_target_set_differently_are_refused():
    a, b = _parts(_record())
    a, b = _in_sets_format(a), _in_sets_format(b, {"default": ["query", "key"]})
    with pytest.raises(PipelineError, match=r"part 2 names target set 'default' \"\['query', 'key'\]\" but an earlier "
                                            r"part 'None'"):
        merge_records([a, b])
    a, b = _parts(_record())
    a["params"]["lora"] = {"alpha": 16.0, "target_modules": ["dense"], "use_dora": False}
    with pytest.raises(PipelineError, match=r"part 1 is from before target sets and adapted \"\['dense'\]\" "
                                            r"\(lora.target_modules\), which no other part names"):
        merge_records([a, _in_sets_format(b)])
    b = _in_sets_format(b, {"default": None, "dense_only": ["dense"]})
    assert {r["target_set"] for r in merge_records([a, b])["runs"] if r["variant"] == "lora"} == {"dense_only",
                                                                                                  "default"}


def test_how_a_part_was_launched_may_differ():
    a, b = _parts(_record())
    b["params"]["train"]["num_threads"] = 1
    assert merge_records([a, b])["params"]["train"]["batch_size"] == 32


def test_a_chosen_run_without_test_predictions_names_the_switch_that_keeps_them():
    record = _record()
    record["runs"][0]["test_predictions"] = None
    with pytest.raises(PipelineError, match=r"run scratch s1-lr0\.001 is chosen on validation but has no test "
                                            r"predictions.*study\.test_every_run"):
        build_study(record)


def test_merge_on_the_command_line_writes_a_record_that_rebuilds(tmp_path, capsys):
    a, b = _parts(_record())
    write_record(tmp_path / "a.json.gz", a)
    write_record(tmp_path / "b.json.gz", b)
    out = tmp_path / "study"
    assert cli_main(["merge", str(out), str(tmp_path / "a.json.gz"), str(tmp_path / "b.json.gz")]) == 0
    assert cli_main(["rebuild", str(out)]) == 0
    assert (out / "report.md").is_file()
    b["labels"] = ["x", "y"]
    write_record(tmp_path / "b.json.gz", b)
    assert cli_main(["merge", str(out), str(tmp_path / "a.json.gz"), str(tmp_path / "b.json.gz")]) == 2
    assert "other labels" in capsys.readouterr().err
