"""data.loaders: dynamic padding, reproducible length-grouped training order, eval order restored."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lora_pipeline.data.loaders import EncodedSplit, collate, eval_batches, iterate, train_batches
from lora_pipeline.evaluation import predict

PAD = 0


def _split(lengths: list[int], pairs: bool = False) -> EncodedSplit:
    ids = [[100 + i] + [5 + (i + k) % 50 for k in range(n - 1)] for i, n in enumerate(lengths)]
    tt = [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths] if pairs else None
    return EncodedSplit(ids, [i % 3 for i in range(len(lengths))], tt)


def _random_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(3, 128) for _ in range(n)]


def test_collate_pads_to_the_longest_row_with_a_matching_mask():
    split = _split([3, 7, 5, 2])
    batch = collate(split, [0, 1, 3], PAD)
    assert batch["input_ids"].shape == (3, 7) and batch["attention_mask"].shape == (3, 7)
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["attention_mask"].sum(dim=1).tolist() == [3, 7, 2]
    for j, i in enumerate([0, 1, 3]):
        n = len(split.input_ids[i])
        assert batch["input_ids"][j, :n].tolist() == split.input_ids[i]
        assert (batch["input_ids"][j, n:] == PAD).all()
        assert (batch["attention_mask"][j, n:] == 0).all()
    assert batch["labels"].tolist() == [split.labels[i] for i in [0, 1, 3]]
    assert "token_type_ids" not in batch
    assert collate(split, [2, 3], PAD)["input_ids"].shape == (2, 5)  # width is per batch, not global


def test_collate_pads_token_type_ids_for_pairs():
    split = _split([4, 6], pairs=True)
    batch = collate(split, [0, 1], PAD)
    assert batch["token_type_ids"].tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]]


def test_from_frame_reads_tokenised_columns():
    df = pd.DataFrame({"input_ids": [np.array([1, 2, 3]), np.array([4, 5])], "label_id": [2, 0]})
    split = EncodedSplit.from_frame(df)
    assert split.input_ids == [[1, 2, 3], [4, 5]] and split.labels == [2, 0] and split.token_type_ids is None
    assert len(split) == 2 and split.lengths() == [3, 2]
    assert all(type(t) is int for t in split.input_ids[0])  # plain ints, not numpy scalars


@pytest.mark.parametrize("n, batch_size", [(1, 4), (7, 4), (64, 8), (1001, 16)])
def test_train_batches_cover_every_row_once_per_epoch(n, batch_size):
    lengths = _random_lengths(n)
    for epoch in range(3):
        batches = train_batches(lengths, batch_size, seed=1, epoch=epoch)
        rows = [i for b in batches for i in b]
        assert sorted(rows) == list(range(n))
        assert all(1 <= len(b) <= batch_size for b in batches)
        mega = batch_size * 50  # the default group_size: at most one short batch per mega-batch
        assert len(batches) == sum(-(-min(mega, n - s) // batch_size) for s in range(0, n, mega))


def test_train_batches_depend_only_on_seed_and_epoch():
    lengths = _random_lengths(500)
    torch.manual_seed(123)  # the global RNG must not matter
    a = train_batches(lengths, 16, seed=3, epoch=2)
    torch.manual_seed(999)
    torch.rand(10)
    assert train_batches(lengths, 16, seed=3, epoch=2) == a
    assert train_batches(lengths, 16, seed=3, epoch=3) != a
    assert train_batches(lengths, 16, seed=4, epoch=2) != a
    # consecutive epochs visit rows in a different order, not just different batch order
    assert [i for b in train_batches(lengths, 16, 3, 0) for i in b] != [i for b in train_batches(lengths, 16, 3, 1)
                                                                          for i in b]


def test_train_batches_do_not_consume_the_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    train_batches(_random_lengths(100), 8, seed=0, epoch=0)
    torch.testing.assert_close(torch.rand(3), expected)


def _padded_tokens(batches, lengths) -> int:
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


def test_train_batches_group_similar_lengths():
    lengths = _random_lengths(2000)
    batches = train_batches(lengths, 16, seed=0, epoch=0)
    grouped = _padded_tokens(batches, lengths) / len(lengths)  # mean padded length per row
    rng = random.Random(0)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    unsorted = _padded_tokens([order[k:k + 16] for k in range(0, len(order), 16)], lengths) / len(lengths)
    assert grouped < 0.8 * max(lengths)
    assert grouped < 0.7 * unsorted
    assert grouped < 1.1 * np.mean(lengths)  # close to no padding at all


def test_eval_batches_sort_by_length_and_cover_every_row():
    lengths = _random_lengths(101)
    batches = eval_batches(lengths, 10)
    rows = [i for b in batches for i in b]
    assert sorted(rows) == list(range(101))
    assert [lengths[i] for i in rows] == sorted(lengths)
    assert [len(b) for b in batches] == [10] * 10 + [1]


def test_iterate_skips_planned_batches_for_resume():
    split = _split([3, 4, 5, 6, 7])
    plan = [[0, 1], [2, 3], [4]]
    full = list(iterate(split, plan, PAD))
    resumed = list(iterate(split, plan, PAD, skip=2))
    assert [rows for rows, _ in full] == plan
    assert [rows for rows, _ in resumed] == [[4]]
    torch.testing.assert_close(resumed[0][1]["input_ids"], full[2][1]["input_ids"])


class _FirstTokenClassifier(nn.Module):
    """Predicts class ``input_ids[:, 0] % 3``; fails loudly if padding leaks into the mask."""

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        assert input_ids.shape == attention_mask.shape
        assert ((input_ids == PAD) == (attention_mask == 0)).all()
        logits = torch.nn.functional.one_hot(input_ids[:, 0] % 3, 3).float()  # (B, 3)
        return SimpleNamespace(logits=logits)


def test_predict_restores_row_order():
    lengths = _random_lengths(53)
    split = _split(lengths)
    expected = np.array([(100 + i) % 3 for i in range(len(lengths))])
    assert eval_batches(lengths, 8)[0] != list(range(8))  # batches really are reordered
    model = _FirstTokenClassifier().train()
    preds = predict(model, split, batch_size=8, pad_id=PAD, device=torch.device("cpu"))
    np.testing.assert_array_equal(preds, expected)
    assert model.training  # train/eval mode is restored
