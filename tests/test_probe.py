"""`probe` is a linear probe on the frozen backbone's eval-mode features, also inside real `Trainer` steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from scpeft_hf.datasets import pbmc68k_reduced
from scpeft_hf.tasks.backbones import DEMO_BACKBONE, load_classifier, load_processor, make_collator
from scpeft_hf.tasks.methods import head_overrides, prepare_model

LABEL_KEY = "bulk_labels"


@pytest.fixture(scope="module")
def dataset():
    adata = pbmc68k_reduced()
    keep = np.concatenate(
        [np.flatnonzero(adata.obs[LABEL_KEY] == name)[:6] for name in ("CD14+ Monocyte", "CD19+ B")]
    )
    processor = load_processor(DEMO_BACKBONE, max_length=48)
    processor.label_names = ["CD14+ Monocyte", "CD19+ B"]
    return processor, processor(adata[keep], label_key=LABEL_KEY)


def test_probe_head_is_one_linear_layer():
    assert head_overrides("probe", DEMO_BACKBONE) == {"num_cls_layers": 1}
    assert head_overrides("encoder", DEMO_BACKBONE) == {}
    model = load_classifier(DEMO_BACKBONE, load_processor(DEMO_BACKBONE), num_labels=2, num_cls_layers=1)
    assert [type(m) for m in model.classifier.modules() if not isinstance(m, nn.ModuleList)][1:] == [
        nn.Linear
    ]


def test_backbone_dropout_is_off_during_real_trainer_steps(dataset, tmp_path):
    processor, cells = dataset
    torch.manual_seed(0)
    model = load_classifier(DEMO_BACKBONE, processor, num_labels=2, **head_overrides("probe", DEMO_BACKBONE))
    assert model.config.hidden_dropout_prob > 0  # the demo backbone trains with dropout 0.1
    model, learning_rate = prepare_model(model, "probe")

    seen: list[dict] = []  # per training step: modes, the batch, and the features the head received

    def record_batch(module, args, kwargs):
        dropouts = [m.training for name, m in module.named_modules() if isinstance(m, nn.Dropout)]
        seen.append({"model_training": module.training, "dropouts": dropouts, "batch": kwargs})

    def record_features(module, args):
        seen[-1]["features"] = args[0].detach().clone()

    handles = [
        model.register_forward_pre_hook(
            record_batch, with_kwargs=True, prepend=True
        ),  # before the probe's hook
        model.classifier.register_forward_pre_hook(record_features),
    ]
    Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path),
            max_steps=2,
            per_device_train_batch_size=6,
            learning_rate=learning_rate,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            remove_unused_columns=False,
            label_names=["labels"],
            disable_tqdm=True,
        ),  # fmt: skip
        train_dataset=cells,
        data_collator=make_collator(processor, train=True),
    ).train()

    for handle in handles:
        handle.remove()
    assert len(seen) == 2
    for step in seen:
        assert step["model_training"]  # Trainer had switched the model to train mode
        assert any(step["dropouts"])  # ... dropout modules included, before the probe's hook ran
        # the head saw exactly what the backbone computes in eval mode
        with torch.no_grad():
            model.eval()
            batch = {k: v for k, v in step["batch"].items() if k != "labels"}
            eval_features = model(**batch).cell_embedding
        torch.testing.assert_close(step["features"], eval_features, rtol=1e-5, atol=1e-6)
