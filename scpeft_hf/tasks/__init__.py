"""Tasks built on the backbones, tuners and data rooms: cell-type annotation, embeddings, pretraining."""
