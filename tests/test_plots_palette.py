"""Plots people can trust: a label has one colour in the true and predicted UMAP panels and the confusion matrix,
also when a class is never predicted (each panel used to build its own categories and palette)."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import to_hex

from scpeft_hf.tasks.plots import confusion_matrix_figure, label_palette, umap_figure

NAMES = ["B", "Dendritic", "NK", "T"]


def _cells():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 3], 15)
    predictions = np.where(labels == 1, 0, labels)  # Dendritic is never predicted
    embeddings = rng.normal(size=(60, 8)) + labels[:, None] * 3.0
    return embeddings, labels, predictions


def _legend_colours(axis) -> dict[str, str]:
    handles, names = axis.get_legend_handles_labels()
    return {name: to_hex(handle.get_facecolor()[0]) for handle, name in zip(handles, names, strict=True)}


def test_a_label_has_one_colour_in_both_umap_panels_when_a_class_is_never_predicted():
    embeddings, labels, predictions = _cells()
    true_axis, predicted_axis = umap_figure(embeddings, NAMES, labels, predictions).axes[:2]
    palette = label_palette(NAMES)
    assert _legend_colours(true_axis) == _legend_colours(predicted_axis) == palette
    # every point has its own label's colour (scatter keeps the cell order for categorical colours)
    for axis, indices in ((true_axis, labels), (predicted_axis, predictions)):
        point_colours = [to_hex(colour) for colour in axis.collections[0].get_facecolors()]
        assert point_colours == [palette[NAMES[index]] for index in indices]
    assert len(set(palette.values())) == len(NAMES)


def test_confusion_matrix_tick_labels_use_the_umap_palette():
    _, labels, predictions = _cells()
    axis = confusion_matrix_figure(labels, predictions, NAMES).axes[0]
    palette = label_palette(NAMES)
    for tick in [*axis.get_xticklabels(), *axis.get_yticklabels()]:
        assert to_hex(tick.get_color()) == palette[tick.get_text()]
    assert sorted(tick.get_text() for tick in axis.get_xticklabels()) == NAMES


def test_palette_grows_with_the_number_of_labels():
    many = [f"type{index}" for index in range(25)]
    colours = label_palette(many)
    assert len(set(colours.values())) == 25 and list(colours) == many
