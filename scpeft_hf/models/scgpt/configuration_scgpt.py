"""Configuration of the scGPT backbone (port of scGPT v0.2.4 ``TransformerModel``)."""

from __future__ import annotations

from transformers import PretrainedConfig

CELL_EMB_STYLES = ("cls", "avg-pool", "w-pool")
INPUT_EMB_STYLES = ("continuous", "category")


class ScGPTConfig(PretrainedConfig):
    r"""Configuration of an scGPT model.

    The defaults are those of the official whole-human checkpoint (scGPT-human, ~51.3M parameters).

    Args:
        vocab_size (`int`, defaults to 60697):
            Number of gene tokens, special tokens (`<pad>`, `<cls>`, `<eoc>`) included. Must equal the
            number of entries in the model's `vocab.json`.
        hidden_size (`int`, defaults to 512):
            Width of gene/value embeddings and of every encoder layer (`embsize`/`d_model` in scGPT).
        num_hidden_layers (`int`, defaults to 12):
            Number of transformer encoder layers (`nlayers`).
        num_attention_heads (`int`, defaults to 8):
            Attention heads per layer (`nheads`). Must divide `hidden_size`.
        intermediate_size (`int`, defaults to 512):
            Width of the feed-forward block (`d_hid`).
        hidden_act (`str`, defaults to `"relu"`):
            Activation of the feed-forward block.
        hidden_dropout_prob (`float`, defaults to 0.2):
            Dropout on embeddings, residual branches and the feed-forward block (`dropout`).
        attention_probs_dropout_prob (`float`, defaults to 0.2):
            Dropout on attention probabilities (scGPT uses the same `dropout` for both).
        layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of every LayerNorm.
        pad_token_id (`int`, defaults to 60694):
            Id of `<pad>`; its gene embedding row is fixed at zero (`padding_idx`).
        cls_token_id (`int`, defaults to 60695):
            Id of `<cls>`, prepended to every cell; its output is the cell embedding when
            `cell_emb_style="cls"`.
        pad_value (`float`, defaults to -2):
            Expression value given to padding positions.
        mask_value (`float`, defaults to -1):
            Expression value that marks a masked position in masked-expression pretraining.
        n_bins (`int`, defaults to 51):
            Number of expression bins (values are integers in `0 .. n_bins - 1`).
        max_seq_len (`int`, defaults to 1200):
            Number of gene tokens a cell is cut to (`<cls>` included). The model has no positional
            encoding, so this bounds memory, not the architecture.
        input_emb_style (`str`, defaults to `"continuous"`):
            How expression values are embedded: `"continuous"` (an MLP on the scalar value, as the
            official checkpoints) or `"category"` (an embedding per bin).
        max_value (`float`, defaults to 512):
            Continuous values are clamped to this before the value encoder.
        pre_norm (`bool`, defaults to `False`):
            `False` is the official post-norm layer (`norm(x + sublayer(x))`). `True` is the pre-norm
            variant of scGPT's flash-attention layer, which normalises the sublayer input and adds the
            residual to the *normalised* input, as the official code does.
        cell_emb_style (`str`, defaults to `"cls"`):
            Cell embedding: `"cls"` (output at position 0), `"avg-pool"` (mean over real tokens) or
            `"w-pool"` (value-weighted sum, L2-normalised).
        num_cls_layers (`int`, defaults to 3):
            Layers of the classification head (`n_layers_cls`): `num_cls_layers - 1` blocks of
            Linear-ReLU-LayerNorm, then the output Linear.
        use_mvc (`bool`, defaults to `True`):
            Whether the masked-expression model has the MVC (gene-query x cell-embedding) decoder.
        explicit_zero_prob (`bool`, defaults to `False`):
            Whether expression decoders also predict a zero probability (not used by scGPT-human).
        class_weights (`list[float]`, *optional*):
            Per-class weights for the classification loss, e.g. inverse class frequencies of the training
            split.

    Batch integration (scGPT's integration objective, used by [`ScGPTForBatchIntegration`]):

        num_batch_labels (`int`, *optional*):
            Number of batches (donors, sequencing runs) the batch modules know. Needed by the three below.
        use_batch_labels (`bool`, defaults to `False`):
            A batch-label embedding (`batch_encoder`) concatenated to the decoders' inputs, as scGPT does.
        domain_spec_batchnorm (`bool`, defaults to `False`):
            Domain-specific batch norm (`dsbn`, affine=False) on the input embeddings, one per batch.
        use_batch_discriminator (`bool`, defaults to `False`):
            scGPT's DAB: a batch classifier on the cell embedding behind a gradient-reversal layer
            (`batch_discriminator`).
        gep_weight / gepc_weight / ecs_weight / dab_weight (`float`, defaults to 1 / 1 / 10 / 1):
            Weights of the integration loss terms (0 switches a term off): masked-value MSE of the expression
            decoder (GEP), of the MVC decoder from the cell embedding (GEPC), elastic cell similarity (ECS) and
            the discriminator's cross-entropy (DAB). The defaults are scGPT's integration tutorial.
        ecs_threshold (`float`, defaults to 0.8):
            Cosine similarity the ECS term pushes cell pairs away from (the tutorial's `ecs_thres`).
    """

    model_type = "scgpt"

    def __init__(
        self,
        vocab_size: int = 60697,
        hidden_size: int = 512,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 8,
        intermediate_size: int = 512,
        hidden_act: str = "relu",
        hidden_dropout_prob: float = 0.2,
        attention_probs_dropout_prob: float = 0.2,
        layer_norm_eps: float = 1e-5,
        pad_token_id: int = 60694,
        cls_token_id: int = 60695,
        pad_value: float = -2.0,
        mask_value: float = -1.0,
        n_bins: int = 51,
        max_seq_len: int = 1200,
        input_emb_style: str = "continuous",
        max_value: float = 512.0,
        pre_norm: bool = False,
        cell_emb_style: str = "cls",
        num_cls_layers: int = 3,
        use_mvc: bool = True,
        explicit_zero_prob: bool = False,
        class_weights: list[float] | None = None,
        initializer_range: float = 0.02,
        num_batch_labels: int | None = None,
        use_batch_labels: bool = False,
        domain_spec_batchnorm: bool = False,
        use_batch_discriminator: bool = False,
        gep_weight: float = 1.0,
        gepc_weight: float = 1.0,
        ecs_weight: float = 10.0,
        dab_weight: float = 1.0,
        ecs_threshold: float = 0.8,
        **kwargs,
    ):
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads})"
            )
        if cell_emb_style not in CELL_EMB_STYLES:
            raise ValueError(f"cell_emb_style must be one of {CELL_EMB_STYLES}, got {cell_emb_style!r}")
        if input_emb_style not in INPUT_EMB_STYLES:
            raise ValueError(f"input_emb_style must be one of {INPUT_EMB_STYLES}, got {input_emb_style!r}")
        if num_cls_layers < 1:
            raise ValueError(f"num_cls_layers must be >= 1, got {num_cls_layers}")
        if not 0 <= pad_token_id < vocab_size or not 0 <= cls_token_id < vocab_size:
            raise ValueError(
                f"pad_token_id ({pad_token_id}) and cls_token_id ({cls_token_id}) must be ids below "
                f"vocab_size ({vocab_size})"
            )
        if (use_batch_labels or domain_spec_batchnorm or use_batch_discriminator) and not num_batch_labels:
            raise ValueError(
                "use_batch_labels, domain_spec_batchnorm and use_batch_discriminator need num_batch_labels >= 1"
            )
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.cls_token_id = cls_token_id
        self.pad_value = pad_value
        self.mask_value = mask_value
        self.n_bins = n_bins
        self.max_seq_len = max_seq_len
        self.input_emb_style = input_emb_style
        self.max_value = max_value
        self.pre_norm = pre_norm
        self.cell_emb_style = cell_emb_style
        self.num_cls_layers = num_cls_layers
        self.use_mvc = use_mvc
        self.explicit_zero_prob = explicit_zero_prob
        self.class_weights = class_weights
        self.initializer_range = initializer_range
        self.num_batch_labels = num_batch_labels
        self.use_batch_labels = use_batch_labels
        self.domain_spec_batchnorm = domain_spec_batchnorm
        self.use_batch_discriminator = use_batch_discriminator
        self.gep_weight = gep_weight
        self.gepc_weight = gepc_weight
        self.ecs_weight = ecs_weight
        self.dab_weight = dab_weight
        self.ecs_threshold = ecs_threshold
