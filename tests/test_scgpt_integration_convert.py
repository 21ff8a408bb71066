"""An official scGPT 0.2.4 integration checkpoint (batch embedding, DSBN, DAB discriminator) converts at parity."""

from __future__ import annotations

import warnings

import torch

from scpeft_hf.models.scgpt import ScGPTForBatchIntegration, convert_scgpt_checkpoint
from tests.official_scgpt import load_official_module
from tests.test_scgpt_convert import SMALL_ARGS, cell_batch, max_diff, small_vocab, write_official_folder

N_BATCHES = 3
ECS_THRESHOLD = 0.8


def official_integration_model(args: dict, vocab: dict, explicit_zero_prob: bool = False):
    """The official model as scGPT's integration tutorial builds it, with random non-trivial weights and stats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = load_official_module("model/model.py")
    torch.manual_seed(0)
    model = module.TransformerModel(
        ntoken=len(vocab),
        d_model=args["embsize"],
        nhead=args["nheads"],
        d_hid=args["d_hid"],
        nlayers=args["nlayers"],
        nlayers_cls=args["n_layers_cls"],
        n_cls=1,
        vocab=vocab,
        dropout=args["dropout"],
        pad_token=args["pad_token"],
        pad_value=args["pad_value"],
        do_mvc=True,
        do_dab=True,
        use_batch_labels=True,
        num_batch_labels=N_BATCHES,
        domain_spec_batchnorm=True,
        input_emb_style="continuous",
        ecs_threshold=ECS_THRESHOLD,
        explicit_zero_prob=explicit_zero_prob,
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        for index, bn in enumerate(model.dsbn.bns):  # distinct running statistics per batch
            bn.running_mean.copy_(torch.randn(args["embsize"]) * 0.5 + index)
            bn.running_var.copy_(torch.rand(args["embsize"]) + 0.5 + index)
    return model


def convert(tmp_path, reference, args, vocab) -> ScGPTForBatchIntegration:
    src = write_official_folder(tmp_path / "official", reference, args, vocab, drop_cls=False)
    report = convert_scgpt_checkpoint(src, tmp_path / "hf")
    assert report.model_class == "ScGPTForBatchIntegration"
    assert report.initialized_keys == []
    # Unused: the pretraining flag encoder and the official model's untrained classification head, nothing else.
    n_head_keys = sum(key.startswith("cls_decoder.") for key in reference.state_dict())
    assert "flag_encoder.weight" in report.unused_keys and len(report.unused_keys) == 1 + n_head_keys
    assert not any("batch" in key or "dsbn" in key for key in report.unused_keys)
    return ScGPTForBatchIntegration.from_pretrained(tmp_path / "hf")


def test_integration_checkpoint_converts_with_batch_modules_at_parity_in_eval(tmp_path):
    vocab = small_vocab()
    reference = official_integration_model(SMALL_ARGS, vocab, explicit_zero_prob=True).eval()
    ours = convert(tmp_path, reference, SMALL_ARGS, vocab).eval()
    config = ours.config
    assert (config.use_batch_labels, config.domain_spec_batchnorm, config.use_batch_discriminator) == (
        True,
        True,
        True,
    )
    assert config.num_batch_labels == N_BATCHES and config.explicit_zero_prob
    ids, values, padding = cell_batch(vocab)
    real = ~padding
    embeddings = []
    for batch in range(N_BATCHES):  # the official DSBN applies the first cell's batch to the whole mini-batch
        batch_labels = torch.full((ids.shape[0],), batch)
        with torch.no_grad():
            expected = reference(ids, values, padding, batch_labels=batch_labels, MVC=True, ECS=True)
            got = ours(input_ids=ids, values=values, attention_mask=real.long(), batch_labels=batch_labels)
        assert max_diff(got.cell_embedding, expected["cell_emb"]) <= 1e-5
        assert max_diff(got.expression[real], expected["mlm_output"][real]) <= 1e-5
        assert max_diff(got.mvc_expression, expected["mvc_output"]) <= 1e-5
        assert max_diff(got.batch_logits, expected["dab_output"]) <= 1e-5
        embeddings.append(got.cell_embedding)
    # Each batch's statistics matter: the same cells embed differently under another batch label.
    assert max_diff(embeddings[0], embeddings[1]) > 1e-2


def test_integration_train_mode_without_dropout_matches_official_losses_and_running_stats(tmp_path):
    vocab = small_vocab()
    args = dict(SMALL_ARGS, dropout=0.0)
    reference = official_integration_model(args, vocab).train()
    ours = convert(tmp_path, reference, args, vocab).train()
    ids, values, padding = cell_batch(vocab, padded=False)  # the integration setting: no padding
    batch_labels = torch.full((ids.shape[0],), 2)
    target = values.clone()
    values = values.clone()
    values[:, 3:6] = -1.0
    expected = reference(ids, values, padding, batch_labels=batch_labels, MVC=True, ECS=True)
    got = ours(input_ids=ids, values=values, labels=target, batch_labels=batch_labels)
    masked = values == -1
    mse = torch.nn.functional.mse_loss
    expected_terms = torch.stack(
        [
            mse(expected["mlm_output"][masked], target[masked]),
            mse(expected["mvc_output"][masked], target[masked]),
            expected["loss_ecs"],
            torch.nn.functional.cross_entropy(expected["dab_output"], batch_labels),
        ]
    ).detach()
    torch.testing.assert_close(got.loss_terms, expected_terms, rtol=1e-5, atol=1e-5)
    assert (expected_terms > 0.1).all()
    # DSBN updated the running statistics of batch 2 only, as the official one does.
    for index in range(N_BATCHES):
        theirs, mine = reference.dsbn.bns[index], ours.scgpt.dsbn.bns[index]
        assert max_diff(mine.running_mean, theirs.running_mean) <= 1e-5
        assert max_diff(mine.running_var, theirs.running_var) <= 1e-4
        assert int(mine.num_batches_tracked) == (1 if index == 2 else 0)
