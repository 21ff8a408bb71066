"""ScGPTDataCollator: padding, masks, subsampling of long cells (train vs eval), masked-expression batches."""

import numpy as np
import pytest
import torch

from scpeft_hf.data import ScGPTDataCollator, ScGPTProcessor
from tests.data_helpers import official_scgpt, pbmc, pbmc_vocab

PAD, CLS = 900, 901


def _cell(n_genes: int, label: int | None = None, offset: int = 0) -> dict:
    row = {
        "input_ids": [CLS, *range(offset, offset + n_genes)],
        "values": [0, *(np.arange(n_genes) % 50 + 1)],
    }
    if label is not None:
        row["labels"] = label
    return row


def test_pads_to_the_longest_cell_with_pad_id_and_value():
    collator = ScGPTDataCollator(pad_token_id=PAD, pad_value=-2, max_length=100)

    batch = collator([_cell(3, label=1), _cell(6, label=0)])

    assert batch["input_ids"].tolist() == [[CLS, 0, 1, 2, PAD, PAD, PAD], [CLS, 0, 1, 2, 3, 4, 5]]
    assert batch["values"][0].tolist() == [0, 1, 2, 3, -2, -2, -2]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    assert batch["labels"].tolist() == [1, 0]
    assert (batch["input_ids"].dtype, batch["values"].dtype) == (torch.long, torch.float32)
    assert (batch["attention_mask"].dtype, batch["labels"].dtype) == (torch.long, torch.long)
    assert "labels" not in collator([_cell(3)])


def test_batches_equal_official_tokenize_and_pad_batch(monkeypatch):
    official = official_scgpt(monkeypatch)
    adata = pbmc()[:16]
    vocab = pbmc_vocab(adata)
    processor = ScGPTProcessor(vocab, ties="random", seed=1)
    dataset = processor(adata)
    in_vocab = adata[:, [gene in vocab for gene in adata.var_names]]
    np.random.seed(1)
    binned = np.stack(
        [official.preprocess.binning(row, 51) for row in np.log1p(_normalised(in_vocab.X.toarray()))]
    )
    expected = official.tokenizer.tokenize_and_pad_batch(
        binned,
        np.array([vocab[gene] for gene in in_vocab.var_names]),
        max_len=1200,
        vocab=vocab.token_to_id,
        pad_token="<pad>",
        pad_value=-2,
    )

    batch = ScGPTDataCollator.from_processor(processor).eval()(list(dataset))

    assert torch.equal(batch["input_ids"], expected["genes"])
    assert torch.equal(batch["values"], expected["values"])
    assert torch.equal(batch["attention_mask"], (expected["genes"] != vocab.pad_token_id).long())


def _normalised(counts: np.ndarray) -> np.ndarray:
    return counts / (counts.sum(axis=1, keepdims=True, dtype=np.float32) / np.float32(1e4))


def test_long_cells_keep_cls_and_a_subset_of_their_genes():
    collator = ScGPTDataCollator(pad_token_id=PAD, max_length=11)
    cell = _cell(40)

    batch = collator([cell, _cell(5)])

    assert batch["input_ids"].shape == (2, 11)
    kept = batch["input_ids"][0].tolist()
    assert kept[0] == CLS and len(set(kept[1:])) == 10 and set(kept[1:]) <= set(range(40))
    assert kept[1:] == sorted(kept[1:])
    # Each gene keeps its own value.
    assert batch["values"][0, 1:].tolist() == [cell["values"][gene + 1] for gene in kept[1:]]


def test_eval_subsampling_is_fixed_per_cell_and_training_draws_anew():
    long_cells = [_cell(300, offset=1000 * index) for index in range(3)]
    evaluator = ScGPTDataCollator(pad_token_id=PAD, max_length=50).eval()

    first = evaluator(long_cells)["input_ids"]
    reordered = evaluator([_cell(4), long_cells[2], long_cells[0]])["input_ids"]

    assert torch.equal(reordered[1], first[2]) and torch.equal(reordered[2], first[0])
    trainer = ScGPTDataCollator(pad_token_id=PAD, max_length=50, seed=4)
    epoch_1, epoch_2 = trainer(long_cells)["input_ids"], trainer(long_cells)["input_ids"]
    assert not torch.equal(epoch_1, epoch_2)
    # Same seed, same sequence of draws.
    assert torch.equal(
        ScGPTDataCollator(pad_token_id=PAD, max_length=50, seed=4)(long_cells)["input_ids"], epoch_1
    )


def test_masking_hides_a_fixed_share_of_gene_values_never_cls_or_padding():
    collator = ScGPTDataCollator(
        pad_token_id=PAD, pad_value=-2, mask_value=-1, mlm_probability=0.25, max_length=500
    )
    cells = [_cell(200, label=3), _cell(41, label=1), _cell(3, label=0)]

    batch = collator(cells)

    masked = batch["values"] == -1
    assert masked.sum(dim=1).tolist() == [50, 10, 0]  # floor(0.25 * genes)
    assert not masked[:, 0].any() and not masked[batch["attention_mask"] == 0].any()
    # Labels are the true values (float), unmasked; class labels are dropped in this mode.
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"][0, :201].tolist() == [float(value) for value in cells[0]["values"]]
    assert torch.equal(batch["labels"][~masked], batch["values"][~masked])
    assert (batch["labels"][masked] >= 1).all()


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="mlm_probability=1.5"):
        ScGPTDataCollator(pad_token_id=PAD, mlm_probability=1.5)
    with pytest.raises(ValueError, match="max_length=1"):
        ScGPTDataCollator(pad_token_id=PAD, max_length=1)


def test_trainer_steps_on_processor_batches(tmp_path):
    from transformers import Trainer, TrainingArguments

    from scpeft_hf.models.scgpt import ScGPTConfig, ScGPTForCellClassification

    adata = pbmc()[:64]
    vocab = pbmc_vocab(adata)
    processor = ScGPTProcessor(vocab, max_length=64)
    dataset = processor(adata, label_key="bulk_labels")
    config = ScGPTConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        pad_token_id=vocab.pad_token_id,
        cls_token_id=vocab.cls_token_id,
        num_labels=len(processor.label_names),
        max_seq_len=64,
    )
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=16, report_to="none", use_cpu=True
    )
    trainer = Trainer(
        model=ScGPTForCellClassification(config),
        args=arguments,
        train_dataset=dataset,
        data_collator=ScGPTDataCollator.from_processor(processor),
    )

    result = trainer.train()

    assert result.global_step == 2 and np.isfinite(result.training_loss)


# ------------------------------------------------------ training draws from (seed, epoch, index) alone


def _long_cells(n_cells: int = 12) -> list[dict]:
    return [{**_cell(40 + i, label=i % 2, offset=i), "cell_index": i} for i in range(n_cells)]


def _draws(loader, collator, epoch: int) -> dict[int, list[int]]:
    """Each cell's kept genes in `epoch`, by the cell's dataset index (the loader visits `loader.order`)."""
    collator.set_epoch(epoch)
    rows = [
        row[: sum(mask)]
        for batch in loader
        for row, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True)
    ]
    return dict(zip(loader.order, rows, strict=True))


def _loader(cells, collator, workers: int = 0, sampler=None):
    loader = torch.utils.data.DataLoader(
        cells, batch_size=4, collate_fn=collator, num_workers=workers, sampler=sampler, shuffle=False
    )
    loader.order = list(sampler) if sampler is not None else list(range(len(cells)))
    return loader


def test_training_draws_are_the_same_for_any_number_of_workers_and_differ_by_epoch():
    cells = _long_cells()
    draws = {}
    for workers in (0, 2):
        collator = ScGPTDataCollator(pad_token_id=PAD, max_length=11, seed=3)
        loader = _loader(cells, collator, workers)
        draws[workers] = [_draws(loader, collator, epoch) for epoch in (0, 1)]
    assert draws[0] == draws[2]
    assert draws[0][0] != draws[0][1]


def test_two_ranks_draw_what_one_process_draws():
    cells = _long_cells()
    single = ScGPTDataCollator(pad_token_id=PAD, max_length=11, seed=3)
    expected = _draws(_loader(cells, single), single, epoch=1)
    merged = {}
    for rank in (0, 1):
        collator = ScGPTDataCollator(pad_token_id=PAD, max_length=11, seed=3)
        sampler = torch.utils.data.DistributedSampler(cells, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(1)
        merged.update(_draws(_loader(cells, collator, sampler=sampler), collator, epoch=1))
    assert merged == expected and len(merged) == len(cells)


def test_trainer_sets_the_epoch_through_the_callback_and_refuses_persistent_workers(tmp_path):
    from transformers import TrainingArguments

    from scpeft_hf.data.collator import CollatorEpochCallback
    from scpeft_hf.errors import InvalidInputError

    collator = ScGPTDataCollator(pad_token_id=PAD, max_length=11)
    callback = CollatorEpochCallback(collator)
    state = type("State", (), {"epoch": 2.5})()  # a run resumed half-way through its third epoch
    callback.on_epoch_begin(None, state, None)
    assert collator.epoch == 2
    persistent = TrainingArguments(
        output_dir=str(tmp_path), dataloader_num_workers=2, dataloader_persistent_workers=True, use_cpu=True
    )
    with pytest.raises(InvalidInputError, match="dataloader_persistent_workers=False"):
        callback.on_train_begin(persistent, state, None)
