"""Cross-species gene mapping: source-species genes → human symbols through an ortholog table.

A table has columns `source_gene,human_gene[,confidence]` (the shipped ones come from
:func:`scpeft_hf.datasets.orthologs`). Two policies resolve it into one human gene per source gene:

- `one2one`: only pairs whose source gene and human gene each appear once in the table;
- `sum` (default): every source gene goes to its human ortholog of highest confidence (ties: the
  alphabetically first human symbol); the counts of source genes that land on the same human gene are summed
  (Ins1 + Ins2 → INS).

The resolved map is a :class:`GeneMap`, saved next to the processor (`gene_map.json`, with the species, the
policy and the table's fingerprint) so that a trained adapter applies it by itself, without the table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import InvalidInputError, MissingFileError
from .vocab import ENSEMBL_ID, gene_names, strip_ensembl_version

logger = logging.getLogger(__name__)

GENE_MAP_NAME = "gene_map.json"
PRETRAINED_GENES_NAME = "pretrained_genes.txt"
POLICIES = ("one2one", "sum")
MIN_EXPRESSED_MAPPED = 0.2  # below this share of expressed genes mapped: a warning, or an error when strict
Policy = Literal["one2one", "sum"]


def read_ortholog_table(table: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Validate a table (a DataFrame or a CSV/TSV file) → `source_gene`, `human_gene`, `confidence` columns.

    A missing `confidence` column counts every pair as equally confident. Rows without a gene are dropped.
    """
    where = "the ortholog table"
    if not isinstance(table, pd.DataFrame):
        where = f"ortholog table {table}"
        if not Path(table).is_file():
            raise MissingFileError(
                f"{where} does not exist; pass a CSV with columns source_gene,human_gene[,confidence]"
            )
        table = pd.read_csv(table, sep=None, engine="python", dtype={"source_gene": str, "human_gene": str})
    missing = [column for column in ("source_gene", "human_gene") if column not in table.columns]
    if missing:
        raise InvalidInputError(
            f"{where} lacks column(s) {', '.join(missing)} (has {', '.join(map(str, table.columns))}); "
            f"it needs the header source_gene,human_gene[,confidence]"
        )
    confidence = (
        pd.to_numeric(table["confidence"], errors="coerce").fillna(0.0)
        if "confidence" in table.columns
        else pd.Series(1.0, index=table.index)
    )
    pairs = pd.DataFrame(
        {"source_gene": table["source_gene"], "human_gene": table["human_gene"], "confidence": confidence}
    ).dropna(subset=["source_gene", "human_gene"])
    pairs = pairs.astype({"source_gene": str, "human_gene": str})
    pairs = pairs[(pairs["source_gene"] != "") & (pairs["human_gene"] != "")]
    if pairs.empty:
        raise InvalidInputError(f"{where} has no source_gene,human_gene pair; check the file's contents")
    return pairs.reset_index(drop=True)


def shipped_table(species: str) -> pd.DataFrame:
    """The offline ortholog table of `species` (all homology types; see `scpeft_hf.datasets.orthologs`)."""
    from ..datasets import orthologs  # the datasets room reads registry packages; imported only when needed

    return orthologs(species, kind="all")


def table_fingerprint(pairs: pd.DataFrame) -> str:
    """sha256 of the validated table's pairs and confidences in a canonical order (first 16 hex digits)."""
    ordered = pairs.sort_values(["source_gene", "human_gene", "confidence"], kind="stable")
    text = "\n".join(
        f"{s},{h},{c:g}"
        for s, h, c in zip(ordered["source_gene"], ordered["human_gene"], ordered["confidence"], strict=True)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_pairs(pairs: pd.DataFrame, policy: Policy) -> dict[str, str]:
    """One human gene per source gene under `policy` (see the module docstring)."""
    if policy not in POLICIES:
        raise InvalidInputError(f"ortholog policy {policy!r} is unknown; choose one of {', '.join(POLICIES)}")
    pairs = pairs.drop_duplicates(["source_gene", "human_gene"])
    if policy == "one2one":
        unique = ~pairs["source_gene"].duplicated(keep=False) & ~pairs["human_gene"].duplicated(keep=False)
        chosen = pairs[unique]
    else:
        ranked = pairs.sort_values(
            ["source_gene", "confidence", "human_gene"], ascending=[True, False, True], kind="stable"
        )
        chosen = ranked.drop_duplicates("source_gene", keep="first")
    return dict(zip(chosen["source_gene"], chosen["human_gene"], strict=True))


def read_pretrained_genes(folder: str | os.PathLike) -> set[str] | None:
    """The genes a base model was pretrained on (`pretrained_genes.txt`, one per line), or None if not shipped."""
    path = Path(folder) / PRETRAINED_GENES_NAME
    if not path.is_file():
        return None
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


@dataclass
class OrthologCoverage:
    """How much of a source-species AnnData reaches the human backbone. Counts are source genes."""

    source_genes: int
    mapped: int  # with a human ortholog under the policy
    in_vocabulary: int  # ... whose human gene is a vocabulary token
    pretrained: int | None  # ... whose human gene the backbone was pretrained on (None: unknown)
    human_genes: int  # distinct human vocabulary genes fed to the model
    expressed_genes: int
    expressed_mapped: int
    counts_kept: float  # share of all counts carried by source genes that reach a vocabulary gene

    @property
    def expressed_fraction_mapped(self) -> float:
        return self.expressed_mapped / max(self.expressed_genes, 1)

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def report(self) -> str:
        pretrained = (
            "unknown (the base ships no pretrained_genes.txt)"
            if self.pretrained is None
            else f"{self.pretrained:,}"
        )
        return (
            f"{self.source_genes:,} source genes, {self.mapped:,} mapped to a human ortholog "
            f"({self.expressed_mapped:,}/{self.expressed_genes:,} expressed), {self.in_vocabulary:,} in the "
            f"vocabulary ({self.human_genes:,} human genes), pretrained {pretrained}; "
            f"{100 * self.counts_kept:.1f}% of counts kept"
        )


@dataclass
class GeneMap:
    """A resolved source gene → human symbol map, with where it came from."""

    species: str
    policy: Policy
    table_fingerprint: str
    table_source: str  # "shipped" or the user table's file name
    mapping: dict[str, str]
    source_ensembl: bool = False  # the table's source genes are Ensembl ids (versions stripped)

    @classmethod
    def from_table(
        cls,
        species: str,
        table: pd.DataFrame | str | os.PathLike | None = None,
        policy: Policy = "sum",
    ) -> GeneMap:
        """Resolve `table` (the shipped one of `species` when None) under `policy`."""
        if policy not in POLICIES:
            raise InvalidInputError(
                f"ortholog policy {policy!r} is unknown; choose one of {', '.join(POLICIES)}"
            )
        if table is None:
            try:
                raw = shipped_table(species)
            except InvalidInputError:
                raise InvalidInputError(
                    f"species {species!r} has no shipped ortholog table (only 'mouse' ships); pass "
                    f"--ortholog-table FILE (ortholog_table=) with columns source_gene,human_gene[,confidence]"
                ) from None
            source = "shipped"
        else:
            raw, source = table, "DataFrame" if isinstance(table, pd.DataFrame) else Path(table).name
        pairs = read_ortholog_table(raw)
        ensembl = pairs["source_gene"].str.match(ENSEMBL_ID).mean() > 0.5
        if ensembl:
            pairs = pairs.assign(source_gene=pairs["source_gene"].map(strip_ensembl_version))
        return cls(
            species=species,
            policy=policy,
            table_fingerprint=table_fingerprint(pairs),
            table_source=source,
            mapping=resolve_pairs(pairs, policy),
            source_ensembl=bool(ensembl),
        )

    @classmethod
    def for_species(
        cls,
        species: str | None,
        saved: GeneMap | None = None,
        table: pd.DataFrame | str | os.PathLike | None = None,
        policy: Policy | None = None,
    ) -> GeneMap | None:
        """The map a processor for `species` uses: none for human cells; the `saved` one when it fits the species
        and no other table or policy is asked for; else a new one from `table` (or the shipped one)."""
        if species in (None, "human"):
            if table is not None or policy is not None:
                raise InvalidInputError(
                    "an ortholog table or policy needs species= (--species), the species of the cells"
                )
            return None
        keep = (
            saved is not None
            and saved.species == species
            and table is None
            and policy in (None, saved.policy)
        )
        return saved if keep else cls.from_table(species, table, policy or "sum")

    def save(self, directory: str | os.PathLike) -> None:
        settings = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "mapping"}
        payload = {**settings, "mapping": dict(sorted(self.mapping.items()))}
        (Path(directory) / GENE_MAP_NAME).write_text(json.dumps(payload, indent=0, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> GeneMap | None:
        path = Path(directory) / GENE_MAP_NAME
        return cls(**json.loads(path.read_text())) if path.is_file() else None

    def apply(
        self,
        adata: AnnData,
        vocabulary: set[str] | dict,
        gene_column: str | None = None,
        pretrained_genes: set[str] | None = None,
        strict: bool = False,
    ) -> tuple[AnnData, OrthologCoverage]:
        """`adata` with human genes (var index) whose counts are the sums of their source genes, and the coverage.

        Only genes that reach a vocabulary token are kept. Log-normalised input (non-integer values) is summed
        as expm1 and log1p'd back, so that sums stay sums of expression, not of logs.
        """
        names = pd.Series(gene_names(adata, gene_column))
        looks_ensembl = names.str.match(ENSEMBL_ID).mean() > 0.5
        if looks_ensembl and not self.source_ensembl:
            raise InvalidInputError(
                f"the AnnData's genes are Ensembl ids (e.g. {names.iloc[0]}) but the {self.species} ortholog "
                f"table has symbols; pass gene_column/--gene-column with the symbols, or a table whose "
                f"source_gene column holds Ensembl ids"
            )
        if self.source_ensembl:
            names = names.map(strip_ensembl_version)
        human = names.map(self.mapping)
        in_vocabulary = human.map(lambda gene: isinstance(gene, str) and gene in vocabulary).to_numpy(bool)
        matrix = adata.X if sp.issparse(adata.X) else sp.csr_matrix(np.asarray(adata.X))
        gene_totals = np.asarray(matrix.sum(axis=0)).ravel()
        expressed = gene_totals > 0
        mapped = human.notna().to_numpy()
        if not mapped.any():
            raise InvalidInputError(
                f"0 of the AnnData's {len(names):,} genes (e.g. {', '.join(names.iloc[:3])}) have a human "
                f"ortholog in the {self.species} table ({self.table_source}); check species= / --species, "
                f"the gene names (gene_column) or the ortholog table"
            )
        if not in_vocabulary.any():
            raise InvalidInputError(
                f"{int(mapped.sum()):,} genes map to a human ortholog but none of those is in the backbone's "
                f"vocabulary ({len(vocabulary):,} tokens); use a backbone whose vocabulary has human symbols"
            )
        share = mapped[expressed].sum() / max(expressed.sum(), 1)
        if share < MIN_EXPRESSED_MAPPED:
            message = (
                f"only {100 * share:.1f}% of the {int(expressed.sum()):,} expressed genes map to a human ortholog "
                f"({self.species}, policy {self.policy}); check the species and the ortholog table"
            )
            if strict:
                raise InvalidInputError(message + ", or drop --strict / strict=True to go on")
            warnings.warn(message, stacklevel=3)
        targets = human[in_vocabulary]
        human_names = np.sort(targets.unique())
        columns = np.searchsorted(human_names, targets.to_numpy())
        aggregate = sp.csr_matrix(
            (np.ones(len(columns), dtype=np.float32), (np.flatnonzero(in_vocabulary), columns)),
            shape=(len(names), len(human_names)),
        )
        source = sp.csr_matrix(matrix, dtype=np.float32)
        is_integer = np.array_equal(source.data, np.rint(source.data))
        if not is_integer:
            source.data = np.expm1(source.data)
        summed = (source @ aggregate).tocsr()
        if not is_integer:
            summed.data = np.log1p(summed.data)
        summed.sort_indices()
        coverage = OrthologCoverage(
            source_genes=len(names),
            mapped=int(mapped.sum()),
            in_vocabulary=int(in_vocabulary.sum()),
            pretrained=None
            if pretrained_genes is None
            else int(human[in_vocabulary].isin(pretrained_genes).sum()),
            human_genes=len(human_names),
            expressed_genes=int(expressed.sum()),
            expressed_mapped=int((mapped & expressed).sum()),
            counts_kept=float(gene_totals[in_vocabulary].sum() / max(gene_totals.sum(), 1e-12)),
        )
        logger.info("orthologs (%s, %s): %s", self.species, self.policy, coverage.report())
        mapped_adata = AnnData(X=summed, obs=adata.obs.copy(), var=pd.DataFrame(index=human_names))
        return mapped_adata, coverage
