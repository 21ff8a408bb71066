"""Cell-type annotation: fine-tune an adapter (or the whole model, or a probe) with `transformers.Trainer`,
then predict labels, confidences and cell embeddings for new cells."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from transformers import (
    AutoConfig,
    EarlyStoppingCallback,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from ..data.collator import CollatorEpochCallback
from ..errors import InvalidInputError, MissingKeyError, ScpeftUserError
from ..models.fingerprint import backbone_fingerprint
from ..output_folders import METRICS, RUN_INFO, check_out_dir, make_partial_dir, publish
from .annotator import Annotator, load_annotator
from .backbones import (
    SpeciesSettings,
    base_reference,
    base_revision,
    describe_preprocessing,
    load_classifier,
    load_processor,
    make_collator,
    name_base_in_adapter,
    ortholog_coverage,
    resolve_base,
)
from .baseline import DEFAULT_TIME_LIMIT, logistic_regression_baseline
from .card import render_adapter_card
from .methods import METHODS, PEFT_METHODS, head_overrides, parse_adapter_layers, prepare_model
from .metrics import classification_metrics, compute_metrics
from .plots import plot_confusion_matrix, plot_umap
from .splits import balanced_class_weights, check_training_classes, normalise_test_groups, split_cells
from .training_knobs import resolve_precision, trainer_arguments

logger = logging.getLogger(__name__)


@dataclass
class TrainingSettings:
    """How an annotation model is trained. `learning_rate=None` picks the method's default."""

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float | None = None
    weight_decay: float = 0.0
    warmup: float = 0.0  # a fraction (< 1) of the steps, or a step count
    max_length: int | None = None
    seed: int = 0
    early_stopping_patience: int = 3
    class_weights: bool = True
    test_fraction: float = 0.2
    validation_fraction: float = 0.1
    gradient_checkpointing: bool = False
    adapter_layers: str | None = None  # "paper", "all", "6-11", ...; None: the method's default
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    torch_compile: bool = False
    gradient_accumulation_steps: int = 1
    logging_steps: int = 10
    min_cells_per_class: int | None = None  # drop rarer classes before splitting (None: keep all)
    baseline: bool = True  # fit the logistic-regression baseline on the same split (see tasks/baseline.py)
    baseline_features: str = "all"  # "all" genes or the training split's top 2,000 "hvg"
    baseline_time_limit: float = DEFAULT_TIME_LIMIT
    extra_training_args: dict = field(default_factory=dict)


@dataclass
class AnnotationResult:
    out_dir: Path
    metrics: dict[str, float]
    label_names: list[str]


class AnnotationTrainer(Trainer):
    """`Trainer` that evaluates with the collator in eval mode: long cells keep a fixed gene subset per cell
    instead of a fresh random one each evaluation, so validation metrics are comparable across epochs."""

    def __init__(self, *args, eval_data_collator, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator

    def _with_eval_collator(self, make_loader, dataset):
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return make_loader(dataset)
        finally:
            self.data_collator = train_collator

    def get_eval_dataloader(self, eval_dataset=None):
        return self._with_eval_collator(super().get_eval_dataloader, eval_dataset)

    def get_test_dataloader(self, test_dataset):
        return self._with_eval_collator(super().get_test_dataloader, test_dataset)


def check_labels(adata: ad.AnnData, label_key: str) -> None:
    if adata.n_obs == 0:
        raise InvalidInputError("The AnnData has 0 cells; annotation needs cells of at least two cell types")
    if label_key not in adata.obs:
        raise MissingKeyError(
            f"Label column '{label_key}' is not in adata.obs; available columns: {', '.join(map(str, adata.obs))}"
        )
    labels = adata.obs[label_key]
    if labels.isna().any():
        raise InvalidInputError(
            f"Label column '{label_key}' has {int(labels.isna().sum())} missing values; drop those cells"
        )
    if labels.astype(str).nunique() < 2:
        raise InvalidInputError(
            f"Label column '{label_key}' has a single class ({labels.astype(str).iloc[0]!r}); annotation needs "
            "at least two cell types"
        )


def _shared_staging_dir(out_dir: Path, overwrite: bool, state: PartialState, resume: bool = False) -> Path:
    """The main process creates the staging folder (`.<out>.partial`, kept for `resume`) and every process gets
    its path (or the main process's error), so that all ranks read the checkpoints the main process writes."""
    shared: list = [None, None]
    if state.is_main_process:
        try:
            check_out_dir(out_dir, overwrite)
            shared[0] = make_partial_dir(out_dir, resume)
        except (OSError, ScpeftUserError) as err:  # refused output folders included
            shared[1] = err
    if state.num_processes > 1:
        broadcast_object_list(shared)
    if shared[1] is not None:
        raise shared[1]
    return shared[0]


def train_annotation(
    adata: ad.AnnData,
    label_key: str,
    method: str = "encoder",
    out_dir: str | Path = "scpeft-annotation",
    base: str | Path | None = None,
    split_key: str | None = None,
    input_kind: str | None = None,
    settings: TrainingSettings | None = None,
    overwrite: bool = False,
    species: SpeciesSettings | None = None,
    test_groups: Mapping[str, Sequence[str]] | str | None = None,
    resume: bool = False,
    revision: str | None = None,
    layer: str | None = None,
    use_raw: bool = False,
    gene_column: str | None = None,
) -> AnnotationResult:
    """Fine-tune `method` on `adata.obs[label_key]` and write a complete, shareable folder to `out_dir`.

    The folder holds the adapter (`adapter_config.json`, `adapter_model.safetensors`; the whole model for
    `full`/`probe`), `processor_config.json` with the label names, `metrics.json`, `run_info.json`, a model
    card `README.md`, `confusion_matrix.png` and `umap.png`. It appears only when everything succeeded.
    With `species`, genes go through an ortholog map first; it is saved with the processor (`gene_map.json`).
    `base` is a folder or a Hub id (`user/name` at `revision`, or `user/name@revision`); a Hub base is recorded in
    `run_info.json` and `adapter_config.json` by its id and resolved commit, never by a local path.
    `layer` / `use_raw` read `adata.layers[layer]` / `adata.raw.X` (and `.raw.var`) instead of X, `gene_column` names
    the `var` column with the gene names; all three are saved in `processor_config.json`, so predict reads the same.

    `test_groups` (`{"donor": ["human1"]}` or `"donor=human1"`) holds those groups out as the test split, with
    validation carved from the other cells, stratified. `metrics.json` carries a logistic-regression baseline
    fitted on the same training split and scored on the same test cells (unless `settings.baseline` is off).

    Checkpoints are written to `.<out>.partial` beside `out_dir`; a run that was killed or interrupted leaves
    them there, and `resume=True` continues from the last one (same data and settings give the same result as
    an uninterrupted run). The folder is removed on success and when the run fails before training starts.
    """
    settings = settings or TrainingSettings()
    if method not in METHODS:
        raise InvalidInputError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}")
    knob_arguments = trainer_arguments(
        settings.precision, settings.torch_compile, settings.gradient_accumulation_steps, settings.device
    )
    check_labels(adata, label_key)
    if split_key is not None and split_key not in adata.obs:
        raise MissingKeyError(f"Split column '{split_key}' is not in adata.obs")
    test_groups = normalise_test_groups(test_groups) if test_groups is not None else None
    adata, splits, dropped_classes = split_cells(
        adata, label_key, split_key, test_groups, settings.min_cells_per_class,
        settings.test_fraction, settings.validation_fraction, settings.seed,
    )  # fmt: skip
    if dropped_classes:
        check_labels(adata, label_key)
    base_dir = resolve_base(base, revision)
    num_layers = AutoConfig.from_pretrained(base_dir).num_hidden_layers
    layers = parse_adapter_layers(settings.adapter_layers, num_layers, method)
    processor = load_processor(
        base_dir,
        input_kind=input_kind,
        max_length=settings.max_length,
        layer=layer,
        use_raw=use_raw,
        gene_column=gene_column,
        **asdict(species or SpeciesSettings()),
    )
    gene_coverage = ortholog_coverage(processor, adata)
    processor.label_names = sorted(adata.obs[label_key].astype(str).unique())
    datasets = {name: processor(adata[index], label_key=label_key) for name, index in splits.items()}
    # each training cell's gene draws depend on (seed, epoch, its row in `adata`) alone: see ScGPTDataCollator
    datasets["train"] = datasets["train"].add_column("cell_index", np.asarray(splits["train"]).tolist())
    train_labels = np.asarray(datasets["train"]["labels"])
    label_names = list(processor.label_names)
    check_training_classes(train_labels, label_names)

    out_dir = Path(out_dir)
    # Under `torchrun` / `accelerate launch` this joins the process group (gloo on CPU, nccl on GPU).
    state = PartialState(cpu=knob_arguments["use_cpu"])
    logger.info(
        "process %d of %d (%s): %d training cells", state.process_index, state.num_processes,
        state.distributed_type, len(splits["train"]),
    )  # fmt: skip
    staging = _shared_staging_dir(out_dir, overwrite, state, resume)
    training_started = False
    try:
        torch.manual_seed(settings.seed)
        model = load_classifier(
            base_dir,
            processor,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            class_weights=balanced_class_weights(train_labels, len(label_names))
            if settings.class_weights
            else None,
            **head_overrides(method, base_dir),
        )
        fingerprint = backbone_fingerprint(model)
        if settings.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model, learning_rate = prepare_model(model, method, settings.learning_rate, layers=layers)
        # where the adapters went (the default filled in); None for token, full and probe
        placed = (
            getattr(model.peft_config["default"], "layers_to_transform", None)
            if method in PEFT_METHODS
            else None
        )
        trainable, total = count_parameters(model)
        logger.info("%s: %s trainable of %s parameters", method, f"{trainable:,}", f"{total:,}")

        trainer = AnnotationTrainer(
            model=model,
            args=TrainingArguments(
                output_dir=str(staging / "checkpoints"),
                num_train_epochs=settings.epochs,
                per_device_train_batch_size=settings.batch_size,
                per_device_eval_batch_size=2 * settings.batch_size,
                learning_rate=learning_rate,
                weight_decay=settings.weight_decay,
                warmup_steps=settings.warmup,
                eval_strategy="epoch",
                save_strategy="epoch",
                save_total_limit=2,
                load_best_model_at_end=True,
                metric_for_best_model="macro_f1",
                greater_is_better=True,
                logging_steps=settings.logging_steps,
                report_to="none",
                seed=settings.seed,
                data_seed=settings.seed,
                remove_unused_columns=False,
                label_names=["labels"],
                **knob_arguments,
                **settings.extra_training_args,
            ),
            train_dataset=datasets["train"],
            eval_dataset=datasets["validation"],
            data_collator=(train_collator := make_collator(processor, train=True)),
            eval_data_collator=make_collator(processor, train=False),
            compute_metrics=compute_metrics,
            callbacks=[
                EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience),
                CollatorEpochCallback(train_collator),
            ],
        )
        started = time.perf_counter()
        last = get_last_checkpoint(str(staging / "checkpoints")) if resume else None
        if resume:
            logger.info("resuming from %s", last or "the start: no checkpoint was left")
        training_started = True
        first_step = int(Path(last).name.rsplit("-", 1)[-1]) if last else 0
        output = trainer.train(resume_from_checkpoint=last)
        # Trainer divides this process's summed loss by all steps; report the mean over the steps run here
        # (after a resume, the resumed steps only).
        steps_here = max(1, trainer.state.global_step - first_step)
        train_loss = output.training_loss * trainer.state.global_step / steps_here
        train_seconds = time.perf_counter() - started

        # Every rank evaluates its share of the test cells; `predict` gathers them in order, without the
        # duplicates that pad the last batch.
        test = trainer.predict(datasets["test"], metric_key_prefix="test")
        logits, cell_embeddings, *_ = test.predictions
        test_labels = np.asarray(datasets["test"]["labels"])
        predictions = logits.argmax(-1)
        metrics = {f"test_{k}": v for k, v in classification_metrics(test_labels, predictions).items()}
        metrics.update(
            trainable_params=trainable, total_params=total, train_seconds=train_seconds, train_loss=train_loss
        )
        metrics["best_validation_macro_f1"] = trainer.state.best_metric
        state.wait_for_everyone()  # all ranks are done with the checkpoints before they are removed
        if not trainer.is_world_process_zero():
            return AnnotationResult(out_dir, metrics, label_names)
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)
        model = trainer.model.eval()
        if dropped_classes:
            metrics["dropped_classes"] = dropped_classes
        if settings.baseline:
            metrics["baseline"] = logistic_regression_baseline(
                processor.select_input(adata), label_key, splits["train"], splits["test"], settings.baseline_features,
                processor.to_dict().get("input_kind", "auto"), settings.baseline_time_limit,
            )  # fmt: skip

        base_model, base_model_revision = base_reference(base_dir), base_revision(base_dir)
        name_base_in_adapter(model, base_model, base_model_revision)
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / METRICS).write_text(json.dumps(metrics, indent=2))
        (staging / RUN_INFO).write_text(
            json.dumps(
                {
                    "method": method,
                    "model_type": model.config.model_type,
                    "base_model": base_model,
                    "base_model_revision": base_model_revision,
                    "base_model_fingerprint": fingerprint,
                    "label_key": label_key,
                    "label_names": label_names,
                    "preprocessing": describe_preprocessing(processor),
                    "orthologs": gene_coverage,
                    "n_cells": {name: int(len(index)) for name, index in splits.items()},
                    "test_obs_names": adata.obs_names[splits["test"]].tolist(),
                    "test_groups": test_groups,
                    "dropped_classes": dropped_classes,
                    "training": asdict(settings)
                    | {"learning_rate": learning_rate, "world_size": trainer.args.world_size}
                    | {
                        "adapter_layers_placed": placed,
                        "precision_used": resolve_precision(settings.precision, settings.device),
                    }
                    | {"optimizer_steps": trainer.state.global_step},
                },
                indent=2,
            )
        )
        (staging / "README.md").write_text(render_adapter_card(staging, adapter_ref=str(out_dir)))
        plot_confusion_matrix(test_labels, predictions, label_names, staging / "confusion_matrix.png")
        plot_umap(cell_embeddings, label_names, test_labels, predictions, staging / "umap.png")
        publish(staging, out_dir, command="train")
    except BaseException:
        if state.is_main_process and not training_started:
            shutil.rmtree(staging, ignore_errors=True)
        elif state.is_main_process:
            logger.warning(
                "Checkpoints are kept in %s: rerun the same command with --resume to continue", staging
            )
        raise
    return AnnotationResult(out_dir, metrics, label_names)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


__all__ = ["Annotator", "TrainingSettings", "load_annotator", "train_annotation"]
