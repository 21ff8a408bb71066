"""Gene vocabularies: load an official scGPT `vocab.json` and map an AnnData's genes to token ids.

Matching order, per gene name (first hit wins):

1. the name itself, case-exact;
2. for an Ensembl ID, the ID without its version suffix (`ENSG00000141510.17` → `ENSG00000141510`);
3. through `gene_table` (symbol ↔ Ensembl ID, e.g. a GENCODE table), both directions;
4. case-insensitive, only when exactly one vocabulary token has that spelling (`Cd4` → `CD4`).

A token id goes to at most one gene: exact matches first, then each fallback in turn, the first gene in
`var` order winning among equals; genes whose only hits were taken stay unmatched and are counted as
collisions in the report.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from ..errors import InvalidInputError, MissingKeyError

ENSEMBL_ID = re.compile(r"^(ENS[A-Z]*[GTP]\d{6,})(\.\d+)?(_PAR_Y)?$")
MATCH_KINDS = ("exact", "ensembl_version", "gene_table", "case_insensitive")


def strip_ensembl_version(name: str) -> str:
    """`ENSG00000141510.17` → `ENSG00000141510`; anything that is not an Ensembl ID is returned unchanged."""
    found = ENSEMBL_ID.match(name)
    return found.group(1) if found else name


def _strip_ensembl_versions(names: pd.Series) -> pd.Series:
    return names.str.replace(ENSEMBL_ID, r"\1", regex=True)


@dataclass
class GeneMatch:
    """Result of :meth:`GeneVocab.match`: one token id per `var` entry (-1 where unmatched) and a report."""

    gene_names: np.ndarray
    token_ids: np.ndarray
    match_kind: np.ndarray
    unmatched_by_expression: list[str] = field(default_factory=list)
    n_collisions: int = 0

    @property
    def matched(self) -> np.ndarray:
        """Boolean mask over `var`: genes that got a token id."""
        return self.token_ids >= 0

    @property
    def n_matched(self) -> int:
        return int(self.matched.sum())

    @property
    def n_genes(self) -> int:
        return len(self.token_ids)

    @property
    def fraction_matched(self) -> float:
        return self.n_matched / max(self.n_genes, 1)

    def counts_by_kind(self) -> dict[str, int]:
        return {kind: int((self.match_kind == kind).sum()) for kind in MATCH_KINDS}

    def top_unmatched(self, k: int = 10) -> list[str]:
        """Unmatched genes, most expressed first when the AnnData's matrix was in memory."""
        return self.unmatched_by_expression[:k]

    def report(self, k: int = 10) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.counts_by_kind().items() if n)
        text = (
            f"{self.n_matched:,}/{self.n_genes:,} genes matched the vocabulary "
            f"({100 * self.fraction_matched:.1f}%; {kinds or 'none'})"
        )
        if self.n_collisions:
            text += f"; {self.n_collisions} left out because an earlier gene took the same token"
        if self.n_matched < self.n_genes:
            text += f"; top unmatched: {', '.join(self.top_unmatched(k))}"
        return text

    def __str__(self) -> str:
        return self.report()


class GeneVocab:
    """Gene symbol (or ID) → token id, with scGPT's special tokens `<pad>`, `<cls>`, `<eoc>`.

    Args:
        token_to_id: the mapping, as stored in the official flat `vocab.json` (`{symbol: id}`, any order).
        pad_token / cls_token: names of the special tokens whose ids the model uses.
    """

    def __init__(self, token_to_id: Mapping[str, int], pad_token: str = "<pad>", cls_token: str = "<cls>"):
        ids = np.fromiter(token_to_id.values(), dtype=np.int64, count=len(token_to_id))
        if len(np.unique(ids)) != len(ids):
            raise InvalidInputError(
                "vocabulary maps several tokens to the same id; every token needs its own id"
            )
        for special in (pad_token, cls_token):
            if special not in token_to_id:
                raise InvalidInputError(
                    f"vocabulary has no {special!r} token; scGPT vocab.json files carry '<pad>', '<cls>' and "
                    f"'<eoc>': add them (after the last gene id) or name yours with pad_token=/cls_token="
                )
        self.token_to_id = dict(token_to_id)
        self.pad_token = pad_token
        self.cls_token = cls_token

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> GeneVocab:
        """Read an official `vocab.json` (flat `{symbol: id}`)."""
        with open(path) as handle:
            token_to_id = json.load(handle)
        if not isinstance(token_to_id, dict):
            raise InvalidInputError(
                f"{path} is not a flat JSON object {{symbol: id}} as scGPT's vocab.json files are"
            )
        return cls(token_to_id, **kwargs)

    def save(self, path: str | os.PathLike) -> None:
        """Write the official flat `{symbol: id}` format, in id order."""
        ordered = dict(sorted(self.token_to_id.items(), key=lambda item: item[1]))
        Path(path).write_text(json.dumps(ordered, indent=0, ensure_ascii=False))

    def __len__(self) -> int:
        return len(self.token_to_id)

    def __contains__(self, token: str) -> bool:
        return token in self.token_to_id

    def __getitem__(self, token: str) -> int:
        try:
            return self.token_to_id[token]
        except KeyError:
            raise MissingKeyError(
                f"{token!r} is not in the vocabulary ({len(self):,} tokens); use GeneVocab.match() to map "
                f"an AnnData's genes with fallbacks"
            ) from None

    def get(self, token: str, default: int | None = None) -> int | None:
        return self.token_to_id.get(token, default)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GeneVocab) and (
            self.token_to_id,
            self.pad_token,
            self.cls_token,
        ) == (other.token_to_id, other.pad_token, other.cls_token)

    def __repr__(self) -> str:
        return f"GeneVocab({len(self):,} tokens, pad_token_id={self.pad_token_id}, cls_token_id={self.cls_token_id})"

    @property
    def pad_token_id(self) -> int:
        return self.token_to_id[self.pad_token]

    @property
    def cls_token_id(self) -> int:
        return self.token_to_id[self.cls_token]

    def lookup(self, names: list[str] | np.ndarray) -> np.ndarray:
        """Case-exact ids for a list of names, -1 where absent."""
        return pd.Series(names, dtype=object).map(self.token_to_id).fillna(-1).to_numpy(dtype=np.int64)

    def match(
        self,
        adata: AnnData,
        gene_column: str | None = None,
        gene_table: pd.DataFrame | str | os.PathLike | None = None,
        case_insensitive: bool = True,
    ) -> GeneMatch:
        """Map `adata`'s genes (the `var` index, or `var[gene_column]`) to token ids; see the module docstring.

        `case_insensitive=False` turns the last fallback off (used once genes went through an ortholog map).

        `gene_table` is a two-column symbol ↔ Ensembl ID table (a DataFrame, or a .csv/.tsv file), in either
        column order. Raises if the names are duplicated or if no gene matches at all.
        """
        names = gene_names(adata, gene_column)
        token_ids = np.full(len(names), -1, dtype=np.int64)
        match_kind = np.full(len(names), "", dtype=object)
        collided = np.zeros(len(names), dtype=bool)
        candidates = self._candidates(pd.Series(names), gene_table)
        for kind in MATCH_KINDS:
            if kind == "case_insensitive" and not case_insensitive:
                continue
            candidate = candidates[kind].to_numpy()
            open_with_hit = (token_ids < 0) & (candidate >= 0)
            # Among this rule's open candidates the first in var order wins (others get distinct dummies).
            contested = np.where(open_with_hit, candidate, -1 - np.arange(len(names)))
            taken = (
                np.isin(candidate, token_ids[token_ids >= 0]) | pd.Series(contested).duplicated().to_numpy()
            )
            collided |= open_with_hit & taken
            accept = open_with_hit & ~taken
            token_ids[accept] = candidate[accept]
            match_kind[accept] = kind
        result = GeneMatch(
            gene_names=names,
            token_ids=token_ids,
            match_kind=match_kind,
            unmatched_by_expression=_unmatched_by_expression(adata, names, token_ids < 0),
            n_collisions=int((collided & (token_ids < 0)).sum()),
        )
        if result.n_matched == 0:
            where = f"var[{gene_column!r}]" if gene_column else "the var index"
            columns = [str(column) for column in adata.var.columns]
            raise InvalidInputError(
                f"AnnData has 0 of its {len(names):,} genes ({where}, e.g. {', '.join(map(str, names[:3]))}) in "
                f"the vocabulary ({len(self):,} tokens, e.g. {', '.join(list(self.token_to_id)[:3])}); "
                f"pass gene_column=<the var column holding gene symbols> (var columns: {columns}), or map "
                f"Ensembl IDs to symbols with gene_table=<symbol/Ensembl table>"
            )
        return result

    def _candidates(
        self, names: pd.Series, gene_table: pd.DataFrame | str | os.PathLike | None
    ) -> pd.DataFrame:
        """Token id each matching rule proposes for each name (-1: none)."""
        vocab = pd.Series(self.token_to_id, dtype=np.int64)
        stripped = _strip_ensembl_versions(names)
        upper = pd.Series(vocab.to_numpy(), index=vocab.index.str.upper())
        unique_upper = upper[~upper.index.duplicated(keep=False)]
        proposals = {
            "exact": names.map(vocab),
            "ensembl_version": stripped.where(stripped != names).map(vocab),
            "gene_table": pd.Series(np.nan, index=names.index),
            "case_insensitive": names.str.upper().map(unique_upper),
        }
        if gene_table is not None:
            pairs = read_gene_table(gene_table)
            pairs = pairs.assign(token_id=pairs["alias"].map(vocab)).dropna(subset="token_id")
            alias_token = pairs.drop_duplicates("name").set_index("name")["token_id"]
            proposals["gene_table"] = stripped.map(alias_token)
        return pd.DataFrame({kind: ids.fillna(-1).astype(np.int64) for kind, ids in proposals.items()})


def gene_names(adata: AnnData, gene_column: str | None = None) -> np.ndarray:
    """The AnnData's gene names as strings, refusing duplicates (they would get the same token)."""
    if gene_column is None:
        names = adata.var_names.to_numpy()
    elif gene_column in adata.var.columns:
        names = adata.var[gene_column].to_numpy()
    else:
        raise MissingKeyError(
            f"gene_column={gene_column!r} is not a var column; var columns are {list(adata.var.columns)} "
            f"(leave gene_column=None to use the var index)"
        )
    names = pd.Series(names).fillna("").astype(str).to_numpy(dtype=object)
    unique, counts = np.unique(names, return_counts=True)
    duplicated = unique[counts > 1]
    if len(duplicated):
        where = f"var[{gene_column!r}]" if gene_column else "the var index"
        raise InvalidInputError(
            f"{where} has {len(duplicated)} duplicated gene names (e.g. {', '.join(map(repr, duplicated[:5]))}); "
            f"each gene needs one name: call adata.var_names_make_unique() or aggregate the duplicates first"
        )
    return names


def read_gene_table(table: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """A two-column symbol ↔ Ensembl table → `name`/`alias` pairs in both directions (Ensembl versions stripped)."""
    if not isinstance(table, pd.DataFrame):
        table = pd.read_csv(table, sep=None, engine="python", dtype=str)
    if table.shape[1] != 2:
        raise InvalidInputError(
            f"gene_table needs exactly two columns (symbol and Ensembl ID), got {list(table.columns)}; "
            f"select them first, e.g. table[['gene_id', 'gene_name']]"
        )
    table = table.dropna().astype(str)
    first, second = (_strip_ensembl_versions(table.iloc[:, column]) for column in (0, 1))
    return pd.concat(
        [pd.DataFrame({"name": first, "alias": second}), pd.DataFrame({"name": second, "alias": first})],
        ignore_index=True,
    )


def _unmatched_by_expression(adata: AnnData, names: np.ndarray, unmatched: np.ndarray) -> list[str]:
    if not unmatched.any():
        return []
    order = np.flatnonzero(unmatched)
    if not adata.isbacked and adata.X is not None:
        totals = np.asarray(adata.X[:, order].sum(axis=0)).ravel()
        order = order[np.argsort(-totals, kind="stable")]
    return [str(name) for name in names[order]]
