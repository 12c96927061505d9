"""The report presents the study's answer: the sentence first, degenerate models named, every section in order,
figures that draw on every shape of study (one rank, one seed, no scratch row, only degenerate rows), and the
stage turning study.json + curves into report.md, PNGs and one MLflow run."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd
import pytest

from lora_pipeline import study as study_lib
from lora_pipeline.config import FullConfig, LoraConfig, ModelConfig, ScratchConfig, StudyConfig, TrainConfig
from lora_pipeline.figures import curves_figure, rank_curve_figure, save_figures, spectra_figure
from lora_pipeline.files import write_json
from lora_pipeline.reporting import render_report, setup_section
from tests.conftest import ROOT

LABELS = ["neg", "pos"]
LAYERS = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
          "bert.encoder.layer.1.attention.self.query"]
LAYER_EFFECTIVE = [1, 2, 3]  # each layer's effective rank, capped by the adapter's rank
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = {"rank_curve": "figures/rank_curve.png", "spectra": "figures/spectra.png", "curves": "figures/curves.png",
           "confusion": "figures/confusion.png"}
GRID = {"scratch": [4e-4], "full": [5e-5, 1e-4], "lora": [1e-3, 2e-3]}
MEANS = {"scratch": 0.70, "full": 0.88, 2: 0.85, 8: 0.87, 32: 0.875}  # test macro-F1 by variant / LoRA rank
COSTS = {"scratch": (11_171_331, 100.0, 280.0), "full": (22_714_371, 100.0, 520.0)}
SCRATCH_REASON = "predicts one class ('neg') for all 2,767 test examples"


# ------------------------------------------------------------------------------------------ synthetic study


def _metric(mean: float, seeds: list[int]) -> dict:
    """A row's metric in study.summarise's shape: t across seeds (≥ 2) or the one seed's bootstrap."""
    per_seed = [{"metric": "m", "value": mean + 0.001 * i, "low": mean - 0.012, "high": mean + 0.012,
                 "confidence": 0.95} for i in range(len(seeds))]
    if len(seeds) >= 2:
        return {"mean": mean, "std": 0.004, "low": mean - 0.01, "high": mean + 0.01,
                "interval": f"t-interval across {len(seeds)} seeds", "per_seed": per_seed}
    return {"mean": mean, "std": None, "low": mean - 0.012, "high": mean + 0.012,
            "interval": "bootstrap over test examples", "per_seed": per_seed}


def _row(variant: str, rank: Optional[int], seeds: list[int], bad: Iterable[int]) -> dict:
    mean = MEANS[rank if rank is not None else variant]
    grid = GRID[variant]
    params, percent, seconds = COSTS[variant] if rank is None else (rank * 27_648 + 150_000, 0.5 + rank / 100,
                                                                    100.0 + 5 * rank)
    row = {"variant": variant, "rank": rank, "lr": grid[0], "seeds": seeds,
           "val_macro_f1_by_lr": {f"{lr:g}": mean - 0.01 * (i + 1) for i, lr in enumerate(grid)},
           "macro_f1": _metric(mean, seeds), "accuracy": _metric(mean - 0.04, seeds),
           "degenerate": [SCRATCH_REASON if s in bad else None for s in seeds],
           "trainable_params": params, "trainable_percent": percent, "size_on_disk_mb": params * 4 / 2**20,
           "total_params": 22_714_371, "precision": "fp32", "train_seconds": seconds, "peak_memory_mb": 1800.0,
           "steps": 240.0, "epochs": 0.79,
           "stopped": ["step budget reached (240 of 240 planned steps, 0.79 epochs)"] * len(seeds)}
    if variant == "lora":
        diff = mean - MEANS["full"]
        low, high = diff - 0.004, diff + 0.006
        verdict = "worse" if high < 0 else "better" if low > 0 else "indistinguishable"
        row["vs_full"] = {"metric": "macro_f1", "difference": diff, "low": low, "high": high,
                          "verdict": verdict, "confidence": 0.95, "n_examples": 2767, "seeds_a": len(seeds),
                          "seeds_b": len(seeds)}
    return row


def _runs(rows: dict) -> list[dict]:
    runs = []
    for row in rows.values():
        for lr in GRID[row["variant"]]:
            for seed in row["seeds"]:
                prefix = f"r{row['rank']}-" if row["rank"] else ""
                runs.append({"variant": row["variant"], "rank": row["rank"], "seed": seed, "lr": lr,
                             "tag": f"{prefix}s{seed}-lr{lr:g}", "val_macro_f1": row["val_macro_f1_by_lr"][f"{lr:g}"],
                             "chosen": lr == row["lr"], "steps": 240, "epochs": 0.79, "best_step": 200,
                             "stop_reason": f"step budget reached (240 of 240 planned steps) | lr {lr:g}",
                             "train_seconds": row["train_seconds"]})
    return runs


def _adapters(ranks: list[int], seeds: list[int]) -> tuple[list, list]:
    rng = np.random.default_rng(0)
    spectra = [{"rank": r, "seed": s, "tag": f"r{r}-s{s}-lr0.001",
                "layers": {name: {"singular_values": sorted(rng.uniform(0.01, 1.0, r).tolist(), reverse=True),
                                  "effective_rank": min(r, eff)} for name, eff in zip(LAYERS, LAYER_EFFECTIVE)}}
               for r in ranks for s in seeds]
    subspace = [{"seed": s, "small_rank": r, "large_rank": max(ranks), "layer": name,
                 "grid": rng.uniform(0, 1, (r, max(ranks))).round(4).tolist()}
                for r in ranks[:-1] for s in seeds for name in LAYERS]
    return spectra, subspace


def _detail(name: str, seed: Optional[int]) -> dict:
    per_class = {c: {"precision": 0.8, "recall": 0.9, "f1": 0.85 - 0.1 * i, "support": 100}
                 for i, c in enumerate(LABELS)}
    return {"seed": seed, "per_class": per_class, "confusion_matrix": [[90, 10], [25, 75]]}


def make_study(ranks: Iterable[int] = (2, 32), seeds: Iterable[int] = (42, 43), *, scratch: bool = True,
               bad: Optional[dict[str, Iterable[int]]] = None) -> dict:
    """A study.json as the evaluate stage writes it, with known numbers (``bad``: degenerate seeds per row)."""
    ranks, seeds, bad = sorted(ranks), list(seeds), bad if bad is not None else {"scratch": [seeds[0]]}
    rows = {"scratch": _row("scratch", None, seeds, bad.get("scratch", []))} if scratch else {}
    rows["full"] = _row("full", None, seeds, bad.get("full", []))
    rows.update({f"lora_r{r}": _row("lora", r, seeds, bad.get(f"lora_r{r}", [])) for r in ranks})
    answer = study_lib.answer(rows, 0.01, 0.95)
    record = study_lib.record_row(rows, answer["rank"], None)
    spectra, subspace = _adapters(ranks, seeds)
    shown = [n for n in ("scratch", "full", record) if n in rows] + ["tfidf_logreg"]
    return {"labels": LABELS, "n_test": 2767, "confidence": 0.95, "tolerance": 0.01, "rows": rows,
            "tfidf_logreg": {"macro_f1": 0.81, "macro_f1_low": 0.80, "macro_f1_high": 0.82, "accuracy": 0.78,
                             "accuracy_low": 0.77, "accuracy_high": 0.79},
            "answer": answer, "record": record,
            "detail": {n: _detail(n, seeds[0] if n in rows else None) for n in shown},
            "runs": _runs(rows), "spectra": spectra, "subspace": subspace, "energy": 0.9}


def params_dict() -> dict[str, dict]:
    """The Setup section's params as the stage passes them (dataclass defaults; lora.rank is no params key)."""
    setup = {n: dataclasses.asdict(c()) for n, c in (("model", ModelConfig), ("train", TrainConfig),
                                                      ("scratch", ScratchConfig), ("full", FullConfig),
                                                      ("lora", LoraConfig), ("study", StudyConfig))}
    setup["lora"].pop("rank")
    return setup


def table(text: str, first_header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header starts with ``| first_header |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


# --------------------------------------------------------------------------------------------- Markdown


def test_the_answer_comes_first_then_degenerate_models_and_verdicts_in_words():
    study = make_study()
    text = render_report(study, FIGURES)
    paragraphs = text.split("\n\n")
    assert paragraphs[0].startswith("# ")
    assert paragraphs[1] == f"**{study['answer']['sentence']}**"
    assert study["answer"]["rank"] == 32 and "within 1 point of full fine-tuning is 32" in paragraphs[1]
    assert paragraphs[2] == (f"⚠ **BERT from scratch (seed 42) is degenerate**: {SCRATCH_REASON}; its numbers "
                             "are not a result.")
    assert "(seed 43) is degenerate" not in text  # only the seed that collapsed
    assert ("LoRA r=2 (ours) is worse than full fine-tuning at 95 %: paired difference -3.00 points, 95 % interval "
            "[-3.40, -2.40] (2 seeds).") in paragraphs
    assert ("LoRA r=32 (ours) is indistinguishable from full fine-tuning at 95 %: paired difference -0.50 points, "
            "95 % interval [-0.90, +0.10] (2 seeds).") in paragraphs
    assert not re.search(r"\b(best|winner|wins)\b", text.replace("| best step |", ""), re.IGNORECASE)


def test_a_degenerate_reference_supports_no_verdict():
    study = make_study(bad={"full": [42, 43]})
    text = render_report(study, FIGURES)
    assert "⚠ **full fine-tuning (seed 43) is degenerate**" in text
    assert "no comparison is stated" in study["answer"]["sentence"]
    assert "is worse than full fine-tuning" not in text and "indistinguishable from full" not in text
    verdicts = {r[0]: r[6] for r in table(text, "variant | test macro-F1 (mean ± std)")}
    assert verdicts["LoRA r=2 (ours)"] == verdicts["LoRA r=32 (ours)"] == "none: full fine-tuning is degenerate"


def test_sections_come_in_the_order_of_the_study():
    text = render_report(make_study(), FIGURES, dataset={"source": "x", "labels": LABELS}, params=params_dict())
    order = ["## Data", "## Setup", "## Rank curve", "## Comparison", "## Learning-rate choice",
             "## Where each run stopped", "## What rank the adapters used", "## Per-class F1", "## Training curves"]
    positions = [text.index(h) for h in order]
    assert positions == sorted(positions)
    for key, link in FIGURES.items():
        assert f"]({link})" in text, key
    assert "## Data" not in render_report(make_study(), FIGURES)  # no dataset.json: no Data section


def test_comparison_table_rows_numbers_and_intervals():
    rows = table(render_report(make_study(), FIGURES), "variant | test macro-F1 (mean ± std)")
    assert [r[0] for r in rows] == ["BERT from scratch", "full fine-tuning", "LoRA r=2 (ours)", "LoRA r=32 (ours)",
                                    "TF-IDF + logistic regression"]
    assert len({len(r) for r in rows}) == 1  # no cell broke the table
    scratch, full, r2, r32, tfidf = rows
    assert r32[1:9] == ["0.8750 ± 0.0040", "[0.8650, 0.8850]", "t-interval across 2 seeds",
                        "0.8350 [0.8250, 0.8450]", "-0.50 [-0.90, +0.10]", "indistinguishable at 95 %", "0.001", "2"]
    assert r32[9:] == ["1,034,736", "0.82", "260.0", "1,800.00", "3.95", "fp32", "240", "no"]
    assert r2[6] == "worse at 95 %" and full[5] == "reference" and full[6] == "–"
    assert scratch[-1] == "⚠ seed 42"
    assert tfidf[1:4] == ["0.8100", "[0.8000, 0.8200]", "bootstrap over test examples"] and set(tfidf[5:]) == {"–"}


def test_one_seed_shows_the_bootstrap_interval_without_a_spread():
    rows = table(render_report(make_study(ranks=[8], seeds=[42]), FIGURES), "variant | test macro-F1 (mean ± std)")
    r8 = next(r for r in rows if r[0] == "LoRA r=8 (ours)")
    assert r8[1:4] == ["0.8700", "[0.8580, 0.8820]", "bootstrap over test examples"] and r8[8] == "1"


def test_learning_rate_table_shows_every_lr_and_the_chosen_one():
    text = render_report(make_study(), FIGURES)
    assert "the test split was scored only for the chosen lr" in text
    rows = table(text, "variant | lr | validation macro-F1")
    assert ["full fine-tuning", "5e-05", "0.8700", "✓ chosen"] in rows
    assert ["full fine-tuning", "0.0001", "0.8600", ""] in rows
    assert ["LoRA r=2 (ours)", "0.002", "0.8300", ""] in rows
    assert len(rows) == 1 + 2 + 2 * 2  # scratch 1 lr, full 2, two LoRA ranks × 2


def test_runs_table_says_where_and_why_each_run_stopped():
    study = make_study()
    rows = table(render_report(study, FIGURES), "variant | rank | seed")
    assert len(rows) == len(study["runs"]) == 2 * (1 + 2 + 2 + 2)
    assert ["LoRA (ours)", "32", "43", "0.002", "", "0.8550", "240", "0.79", "200",
            r"step budget reached (240 of 240 planned steps) \| lr 0.002"] in rows  # the pipe cannot split a cell
    assert [r[0] for r in rows[:2]] == ["BERT from scratch"] * 2


def test_effective_rank_table_averages_layers_and_seeds():
    text = render_report(make_study(), FIGURES)
    assert "effective rank = singular values holding 90 % of the update's energy" in text.lower()
    rows = table(text, "LoRA rank")
    assert rows == [["2", "1.7", "1–2", "6", "2"], ["32", "2.0", "1–3", "6", "2"]]


def test_per_class_table_covers_scratch_full_the_record_row_and_tfidf():
    rows = table(render_report(make_study(), FIGURES), "model")
    assert [r[0] for r in rows] == ["BERT from scratch (seed 42)", "full fine-tuning (seed 42)",
                                    "LoRA r=32 (ours) (seed 42)", "TF-IDF + logistic regression"]
    assert rows[0][1:] == ["0.8500", "0.7500"]


def test_setup_lists_the_grid_budget_and_what_each_variant_trained():
    text = setup_section(params_dict())
    assert f"Base model **{ModelConfig().name}** (max_length 64)" in text
    assert "Seeds 42: every trained row is repeated with each." in text
    assert "at least 240 and at most 240 optimizer steps; validation at every epoch end" in text
    assert "early stop after 2 validations without a new best" in text
    assert ("| LoRA (ours) | ranks 2, 8, 32, alpha 16.0, dropout 0.0, targets model default, also trained pooler | "
            "0.002 | 3 |") in text
    assert "| full fine-tuning | every parameter | 5e-05 | 2 |" in text
    assert "None" in setup_section({"train": {}})  # a key the lead removed shows as missing, never fails


# ------------------------------------------------------------------------------------------------ figures

EDGE_CASES = {
    "2 ranks x 2 seeds": {},
    "1 rank x 1 seed": {"ranks": [8], "seeds": [42]},
    "no scratch row": {"scratch": False},
    "all degenerate": {"bad": {n: [42, 43] for n in ("scratch", "full", "lora_r2", "lora_r32")}},
    "no LoRA row": {"ranks": []},
}


def _pixels_vary(path: Path) -> bool:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    return float(image[..., :3].std()) > 0.05


@pytest.mark.parametrize("case", EDGE_CASES)
def test_every_figure_draws_on_every_shape_of_study(tmp_path, case):
    study = make_study(**EDGE_CASES[case])
    steps = pd.DataFrame({"step": [10, 20, 30], "epoch": [0.4, 0.8, 1.2], "train_loss": [0.7, 0.5, 0.4],
                          "lr": [1e-3] * 3})
    evals = pd.DataFrame({"step": [25, 30], "epoch": [1.0, 1.2], "train_loss": [0.5, 0.4], "val_macro_f1": [0.7, 0.8]})
    paths = save_figures(study, {"full fine-tuning": (steps, evals), "LoRA r=8 (ours)": (steps, None)}, tmp_path)
    assert sorted(p.name for p in paths.values()) == ["confusion.png", "curves.png", "rank_curve.png", "spectra.png"]
    message_only = {"spectra.png"} if case == "no LoRA row" else set()  # no adapter: the panel says so
    for path in paths.values():
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > (3_000 if path.name in message_only else 10_000), path.name
        assert path.name in message_only or _pixels_vary(path), path.name
    if message_only:
        assert [t.get_text() for t in spectra_figure(study).axes[0].texts] == ["no LoRA adapter in the study"]


def test_rank_curve_plots_the_means_on_a_log2_axis_against_full_and_the_references():
    study = make_study(ranks=[2, 8, 32])
    quality, cost, time_ax = rank_curve_figure(study).axes
    assert quality.get_xscale() == "log" and cost.get_xscale() == "log"
    assert list(quality.get_xticks()) == [2, 8, 32] and [t.get_text() for t in quality.get_xticklabels()] == \
        ["2", "8", "32"]
    means = quality.lines[0]  # the error bar's data line
    np.testing.assert_allclose(means.get_ydata(), [0.85, 0.87, 0.875])
    flat = {line.get_label(): line for line in quality.lines if not line.get_label().startswith("_")}
    assert sorted(flat) == ["BERT from scratch (degenerate)", "TF-IDF + logistic regression", "full fine-tuning"]
    assert [(flat[k].get_ydata()[0], flat[k].get_linestyle()) for k in sorted(flat)] == \
        [(pytest.approx(0.70), "--"), (pytest.approx(0.81), "--"), (pytest.approx(0.88), "-")]
    band = quality.patches[0].get_extents()  # full fine-tuning's interval as a band across the axes
    assert band.height > 0
    assert cost.get_yscale() == "log"
    np.testing.assert_allclose(cost.lines[0].get_ydata(), [2 * 27_648 + 150_000, 8 * 27_648 + 150_000,
                                                          32 * 27_648 + 150_000])
    assert cost.lines[1].get_ydata()[0] == 22_714_371 and time_ax.lines[1].get_ydata()[0] == 520.0


def test_spectra_have_a_subspace_row_only_with_several_ranks():
    two = spectra_figure(make_study(ranks=[2, 32]))
    panels = [ax for ax in two.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "r=2 (seed 42): effective rank 1.7 (1–2)", "r=32 (seed 42): effective rank 2.0 (1–3)",
        "φ(r=2, r=32), mean over 3 layers, seed 42"]
    assert panels[0].get_yscale() == "log" and len(panels[0].lines) == len(LAYERS)
    assert panels[0].lines[0].get_ydata()[0] == pytest.approx(1.0)  # normalised by the largest singular value
    assert "holding 90 % of its energy" in two.get_suptitle()
    grid = panels[2].images[0].get_array()
    assert grid.shape == (2, 32) and 0 <= grid.min() and grid.max() <= 1
    one = spectra_figure(make_study(ranks=[8], seeds=[42]))
    assert [ax.get_title() for ax in one.axes if ax.get_title()] == ["r=8 (seed 42): effective rank 2.0 (1–3)"]
    assert not any(ax.images for ax in one.axes)


def test_training_curves_use_integer_epoch_ticks():
    steps = pd.DataFrame({"epoch": np.linspace(0.05, 2.6, 30), "train_loss": np.linspace(1, 0.2, 30)})
    evals = pd.DataFrame({"epoch": [1.0, 2.0, 2.6], "val_macro_f1": [0.6, 0.7, 0.75]})
    fig = curves_figure({"full fine-tuning": (steps, evals)})
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    assert fig.axes[1].lines[0].get_label() == "full fine-tuning"
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [0.6, 0.7, 0.75])


# -------------------------------------------------------------------------------------------------- stage


def _params_file(path: Path) -> Path:
    """The repository's params.yaml (the report reads its model/train/variant/study sections for Setup only)."""
    path.write_text((ROOT / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    return path


def _write_curves(folder: Path, study: dict, skip: str) -> None:
    for run in study["runs"]:
        if run["chosen"] and run["tag"] != skip:
            where = folder / run["variant"] / run["tag"]
            where.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"step": [10, 20], "epoch": [0.5, 1.0], "train_loss": [0.7, 0.5], "lr": [1e-3, 1e-3]}) \
                .to_csv(where / "steps.csv", index=False)
            pd.DataFrame({"step": [20], "epoch": [1.0], "train_loss": [0.5], "val_macro_f1": [0.8]}) \
                .to_csv(where / "evals.csv", index=False)


@pytest.mark.parametrize("shape", [{}, {"ranks": [8], "seeds": [42]}], ids=["2 ranks x 2 seeds", "1 rank x 1 seed"])
def test_stage_writes_the_report_figures_and_one_mlflow_run(tmp_path, monkeypatch, capsys, shape):
    from stages import report as stage

    study = make_study(**shape)
    write_json(tmp_path / "metrics" / "study.json", study)  # sorted keys, as evaluate writes it
    skipped = next(r["tag"] for r in study["runs"] if r["chosen"] and r["variant"] == "scratch")
    _write_curves(tmp_path / "curves", study, skip=skipped)
    logged = []
    monkeypatch.setattr(stage, "log_stage_run", lambda cfg, name, **kw: logged.append((name, kw)))
    out = tmp_path / "reports"
    rc = stage.main(["--params", str(_params_file(tmp_path / "params.yaml")), "--study",
                     str(tmp_path / "metrics" / "study.json"), "--curves", str(tmp_path / "curves"), "--dataset",
                     str(tmp_path / "no-such" / "dataset.json"), "--report", str(out / "report.md"),
                     "--figures", str(out / "figures")])
    assert rc == 0
    text = (out / "report.md").read_text(encoding="utf-8")
    assert text.split("\n\n")[1] == f"**{study['answer']['sentence']}**"
    assert "## Data" not in text and "## Setup" in text
    assert text.index("LoRA r=") < text.index("TF-IDF")  # rows ordered by the study, not by study.json's keys
    for link in FIGURES.values():
        assert f"]({link})" in text and (out / link).stat().st_size > 10_000
    assert "is degenerate" in text and "stopped because" in text
    assert "WARNING no training curves for BERT from scratch at" in capsys.readouterr().err
    (name, kw), = logged
    assert name == "report" and kw["tags"]["answer"] == study["answer"]["sentence"][:250]
    assert kw["metrics"]["answer_rank"] == (study["answer"]["rank"] or 0)
    assert kw["metrics"]["test_macro_f1.full"] == pytest.approx(0.88)
    assert kw["metrics"]["test_macro_f1.tfidf_logreg"] == pytest.approx(0.81)
    assert [Path(p).name for p in kw["artifacts"]] == ["report.md", "figures", "study.json"]


@pytest.mark.parametrize("content, message", [
    (None, "study file '{path}' not found; run the evaluate stage first (`dvc repro evaluate`)"),
    ('{"rows": {}}', "'{path}' lacks labels, answer: it was written by an older evaluate stage"),
    ('{"rows": ', "'{path}' is not valid JSON"),
])
def test_stage_names_a_missing_or_stale_study_file(tmp_path, capsys, content, message):
    from stages import report as stage

    path = tmp_path / "study.json"
    if content is not None:
        path.write_text(content)
    rc = stage.main(["--params", str(_params_file(tmp_path / "params.yaml")), "--study", str(path), "--curves",
                     str(tmp_path), "--dataset", str(path), "--report", str(tmp_path / "r.md"), "--figures",
                     str(tmp_path / "f")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err.startswith("report failed: ") and message.format(path=path) in err
    assert not (tmp_path / "r.md").exists()


def test_report_renders_the_rows_that_study_summarise_builds(tmp_path):
    """The fixture above mirrors the schema; this builds the rows with the real study functions instead."""
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 300)

    def noisy(accuracy: float) -> np.ndarray:
        return np.where(rng.random(300) < accuracy, y_true, 1 - y_true)

    records = [{"variant": v, "rank": r, "seed": s, "lr": lr, "val_macro_f1": 0.8 + 0.01 * i, "tag": f"{v}{r}-{s}-{lr}",
                "trainable_params": 1000 * (r or 100), "trainable_percent": 1.0, "size_on_disk_mb": 1.0,
                "total_params": 100_000, "precision": "fp32", "train_seconds": 10.0, "peak_memory_mb": None,
                "steps": 240, "epochs": 1.5, "stop_reason": "patience"}
               for v, r in (("scratch", None), ("full", None), ("lora", 2), ("lora", 8)) for s in (1, 2)
               for i, lr in enumerate((1e-3, 2e-3))]
    groups = study_lib.choose_learning_rates(records)
    accuracy = {"scratch": 0.5, "full": 0.9, "lora_r2": 0.85, "lora_r8": 0.9}
    preds = {g.name: [noisy(accuracy[g.name]) for _ in g.records] for g in groups}
    rows = study_lib.summarise(groups, preds, y_true, LABELS, noisy(0.8))
    answer = study_lib.answer(rows, 0.01)
    study = {"labels": LABELS, "n_test": 300, "rows": rows, "answer": answer,
             "tfidf_logreg": {"macro_f1": 0.8, "macro_f1_low": 0.75, "macro_f1_high": 0.85, "accuracy": 0.8},
             "runs": [{**r, "chosen": r["lr"] == 2e-3} for r in records]}
    text = render_report(study, FIGURES)
    assert text.split("\n\n")[1] == f"**{answer['sentence']}**"
    assert "⚠ **BERT from scratch (seed 1) is degenerate**" in text  # a coin-flip model is flagged by summarise
    assert [r[0] for r in table(text, "variant | test macro-F1 (mean ± std)")] == [
        "BERT from scratch", "full fine-tuning", "LoRA r=2 (ours)", "LoRA r=8 (ours)", "TF-IDF + logistic regression"]
    assert "nan" not in text.lower()
    paths = save_figures(study, {}, tmp_path)
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths.values())
