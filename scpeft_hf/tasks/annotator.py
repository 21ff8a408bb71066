"""A trained annotation model applied to cells: labels, confidences, class probabilities and embeddings under the
`key_added` scheme of `outputs.py`. Shared infrastructure (the `predict` command, the annotation task, and the
file-to-file streaming path all use it); it imports no task module."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import torch
from peft import PeftModel
from transformers import PreTrainedModel

from .backbones import make_collator
from .inference import run_model
from .outputs import DEFAULT_KEY, CellResults, base_record, check_key_added, run_record
from .trained import load_trained_model
from .training_knobs import resolve_precision


@dataclass
class Annotator:
    """A trained annotation model with its processor, ready to label new cells. `adapter` is where it came from
    (a folder or a Hub id), recorded in `uns[key_added]`."""

    model: PreTrainedModel | PeftModel
    processor: object
    run_info: dict
    adapter: str | None = None

    @property
    def label_names(self) -> list[str]:
        return self.run_info["label_names"]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def record(self, batch_size: int = 64, precision: str = "auto", **settings) -> dict:
        """`uns[key_added]` for cells this annotator labels with these settings (`precision` as resolved)."""
        return run_record(
            "predict",
            {
                "batch_size": batch_size,
                "precision": resolve_precision(precision, self.device),
                "device": str(self.device),
                **settings,
            },
            base=base_record(self.run_info),
            adapter=self.adapter,
            method=self.run_info.get("method"),
            label_key=self.run_info.get("label_key"),
        )

    def cell_results(
        self,
        adata: ad.AnnData,
        key_added: str = DEFAULT_KEY,
        batch_size: int = 64,
        precision: str = "auto",
        progress: bool = True,
    ) -> CellResults:
        """Class probabilities (columns in `label_names` order) and embeddings of `adata`'s cells, with the record."""
        check_key_added(key_added)
        record = self.record(batch_size, precision)  # a bad precision fails before the model runs
        dataset = self.processor(adata)
        result = run_model(
            self.model, dataset, make_collator(self.processor, train=False), batch_size,
            precision=precision, progress=progress, description="predict",
        )  # fmt: skip
        probabilities = torch.softmax(torch.from_numpy(result.logits), dim=-1).numpy()
        return CellResults(key_added, result.cell_embeddings, probabilities, self.label_names, record)

    def predict(
        self,
        adata: ad.AnnData,
        key_added: str = DEFAULT_KEY,
        copy: bool = False,
        batch_size: int = 64,
        precision: str = "auto",
        progress: bool = True,
    ) -> ad.AnnData | None:
        """Label `adata`'s cells: `obs[f"{key_added}_pred"]` (categorical over every label the model knows),
        `obs[f"{key_added}_confidence"]`, `obsm[f"X_{key_added}"]` (cell embeddings),
        `obsm[f"{key_added}_probabilities"]` (columns in the order of `uns[key_added]["labels"]`) and
        `uns[key_added]` (settings, versions, base, adapter). In place returning None, or a new AnnData with
        `copy=True`, as scanpy does."""
        results = self.cell_results(adata, key_added, batch_size, precision, progress)
        return results.write_into(adata, copy=copy)


def load_annotator(
    adapter: str | Path,
    base: str | Path | None = None,
    species: str | None = None,
    revision: str | None = None,
    device: str = "auto",
    *,
    layer: str | None = None,
    use_raw: bool | None = None,
    gene_column: str | None = None,
) -> Annotator:
    """Load a folder written by `train_annotation` (or `scpeft-hf train`), or an adapter shared on the Hub under
    `adapter` ("user/name"); see `load_trained_model` (the base model must match the recorded fingerprint).
    `base` overrides the recorded base: a folder, or a Hub id at `revision` (or written `user/name@revision`).
    `species` maps the cells' genes to human ones (an adapter trained with a species applies its saved map).
    Cells are read as at training time (X, a layer or `.raw`; the gene column) unless `layer`, `use_raw` or
    `gene_column` say otherwise. `device`: auto (a CUDA GPU if visible, else the CPU), cpu, cuda or cuda:N."""
    model, processor, run_info = load_trained_model(
        adapter,
        base,
        species=species,
        revision=revision,
        device=device,
        layer=layer,
        use_raw=use_raw,
        gene_column=gene_column,
    )
    return Annotator(model=model, processor=processor, run_info=run_info, adapter=str(adapter))
