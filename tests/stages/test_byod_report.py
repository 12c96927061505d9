"""Bring your own data, point 5: the report opens with the data (source, rows, splits, labels with counts), the
base model and each variant's hyper-parameters; long label names stay readable; sizes share one format."""

from __future__ import annotations

from lora_pipeline.config import ModelConfig
from lora_pipeline.evaluation import classification_metrics
from lora_pipeline.figures import confusion_figure
from lora_pipeline.reporting import COMPARISON_HEADER, comparison_rows, render_report
from lora_pipeline.study_file import Detail
from tests.support.studies import FIGURES, make_study, make_study_json, params_dict, typed

LONG = ["Credit reporting, credit repair services, or other personal consumer reports", "Debt collection",
        "Mortgage", "Checking or savings account", "Student loan servicing and private student loans"]
DATASET = {"source": "file: /data/complaints.csv (sha256 0123456789ab…)", "rows_raw": 1200, "rows_clean": 1150,
           "labels": ["World", "Sports"], "labels_inferred": False, "predefined_splits": True,
           "rows_per_split": {"train": 800, "val": 150, "test": 200},
           "rows_per_class_per_split": {"train": {"World": 500, "Sports": 300}, "val": {"World": 90, "Sports": 60},
                                        "test": {"World": 120, "Sports": 80}},
           "max_length": 64, "truncated_share": {"train": 0.012, "val": 0.0, "test": 0.02}}


def _evaluate(labels: list[str]) -> dict[str, Detail]:
    truth = [i % len(labels) for i in range(20)]
    out = {}
    for k, name in enumerate(["scratch", "full", "lora_r8", "tfidf_logreg"]):
        m = classification_metrics(truth, [(t + k) % len(labels) for t in truth], labels)
        out[name] = Detail(seed=None, per_class=m["per_class"], confusion_matrix=m["confusion_matrix"])
    return out


def test_report_opens_with_data_model_and_hyperparameters():
    text = render_report(make_study(), FIGURES, dataset=DATASET, params=params_dict())
    assert text.index("## Data") < text.index("## Setup") < text.index("## Rank curve") < text.index("## Comparison")
    assert "- **Source**: file: /data/complaints.csv (sha256 0123456789ab…)" in text
    assert "1,200 raw, 1,150 after cleaning → train 800, val 150, test 200 (predefined splits, used as given)" in text
    assert "| 0 | World | 500 | 90 | 120 |" in text and "| 1 | Sports | 300 | 60 | 80 |" in text
    assert "val 0.0 %, test 2.0 %" in text
    assert f"Base model **{ModelConfig().name}** (max_length 64)" in text
    assert "| BERT from scratch | 4 layers × 256, 4 heads | 0.0004 | 20 |" in text


def test_sizes_use_one_unit_and_format():
    study = make_study_json(ranks=[8])
    study["rows"]["lora_r8"].update(peak_memory_mb=1500.0, size_on_disk_mb=0.3)
    study["rows"]["full"].update(peak_memory_mb=2100.5, size_on_disk_mb=87.0)
    rows = {r[0]: r for r in comparison_rows(typed(study))}
    mem, disk = COMPARISON_HEADER.index("peak memory (MB)"), COMPARISON_HEADER.index("size on disk (MB)")
    assert [rows["LoRA r=8 (ours)"][i] for i in (mem, disk)] == ["1,500.00", "0.30"]
    assert [rows["full fine-tuning"][i] for i in (mem, disk)] == ["2,100.50", "87.00"]


def test_long_label_names_neither_overlap_nor_leave_the_figure():
    fig = confusion_figure(_evaluate(LONG), LONG)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    page = fig.bbox
    for ax in fig.axes:
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
            boxes = [t.get_window_extent(renderer) for t in ticks]
            assert all(page.x0 <= b.x0 and b.x1 <= page.x1 and page.y0 <= b.y0 and b.y1 <= page.y1 for b in boxes)
            assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
        assert max(len(line) for t in ax.get_xticklabels() for line in t.get_text().split("\n")) <= 15
