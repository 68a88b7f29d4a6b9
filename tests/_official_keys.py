"""Official GLIP state-dict keys and shapes (the layout of docs/DESIGN.md, "Parameter layout").

Used by the checkpoint tests to build official-layout state dicts of any size without a real
checkpoint; ``test_checkpoint.py`` checks the generator against the reference file's keys.
"""

import torch

VOCAB, MAX_POS = 30522, 512


def official_shapes(
    embed_dim=96,
    depths=(2, 2, 6, 2),
    num_heads=(3, 6, 12, 24),
    window=7,
    fpn=256,
    channels=256,
    num_layers=6,
    hidden=768,
    bert_layers=12,
    bert_intermediate=3072,
    early_fuse=True,
    text_encoder=True,
    num_classes=80,
):
    """Return {official key: (shape, dtype)} for a GLIP model of the given sizes."""
    s = {}
    f32, i64 = torch.float32, torch.int64

    def add(key, *shape, dtype=f32):
        s[key] = (tuple(shape), dtype)

    def linear(prefix, out, inp, bias=True):
        add(prefix + ".weight", out, inp)
        if bias:
            add(prefix + ".bias", out)

    def norm(prefix, n):
        add(prefix + ".weight", n)
        add(prefix + ".bias", n)

    def conv(prefix, out, inp, k):
        add(prefix + ".weight", out, inp, k, k)
        add(prefix + ".bias", out)

    def bert_layer(p, h, inter):
        for n in ("query", "key", "value"):
            linear(f"{p}.attention.self.{n}", h, h)
        linear(f"{p}.attention.output.dense", h, h)
        norm(f"{p}.attention.output.LayerNorm", h)
        linear(f"{p}.intermediate.dense", inter, h)
        linear(f"{p}.output.dense", h, inter)
        norm(f"{p}.output.LayerNorm", h)

    b = "backbone.body."
    conv(b + "patch_embed.proj", embed_dim, 3, 4)
    norm(b + "patch_embed.norm", embed_dim)
    for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
        c = embed_dim * 2**i
        for j in range(depth):
            p = f"{b}layers.{i}.blocks.{j}."
            norm(p + "norm1", c)
            add(p + "attn.relative_position_bias_table", (2 * window - 1) ** 2, heads)
            add(p + "attn.relative_position_index", window * window, window * window, dtype=i64)
            linear(p + "attn.qkv", 3 * c, c)
            linear(p + "attn.proj", c, c)
            norm(p + "norm2", c)
            linear(p + "mlp.fc1", 4 * c, c)
            linear(p + "mlp.fc2", c, 4 * c)
        if i < len(depths) - 1:
            linear(f"{b}layers.{i}.downsample.reduction", 2 * c, 4 * c, bias=False)
            norm(f"{b}layers.{i}.downsample.norm", 4 * c)
    for i in (1, 2, 3):
        norm(f"{b}norm{i}", embed_dim * 2**i)
    for lvl, width in zip((2, 3, 4), (2, 4, 8), strict=True):
        conv(f"backbone.fpn.fpn_inner{lvl}", fpn, embed_dim * width, 1)
        conv(f"backbone.fpn.fpn_layer{lvl}", fpn, fpn, 3)
    conv("backbone.fpn.top_blocks.p6", fpn, fpn, 3)
    conv("backbone.fpn.top_blocks.p7", fpn, fpn, 3)
    if text_encoder:
        t = "language_backbone.body.model."
        add(t + "embeddings.word_embeddings.weight", VOCAB, hidden)
        add(t + "embeddings.position_embeddings.weight", MAX_POS, hidden)
        add(t + "embeddings.token_type_embeddings.weight", 2, hidden)
        norm(t + "embeddings.LayerNorm", hidden)
        for k in range(bert_layers):
            bert_layer(f"{t}encoder.layer.{k}", hidden, bert_intermediate)
    h = "rpn.head."
    per_layer = 3 if early_fuse else 1
    for k in range(num_layers):
        if early_fuse:
            f = f"{h}dyhead_tower.{3 * k}.b_attn."
            add(f + "gamma_v", channels)
            add(f + "gamma_l", hidden)
            norm(f + "layer_norm_v", channels)
            norm(f + "layer_norm_l", hidden)
            linear(f + "attn.v_proj", 2048, channels)
            linear(f + "attn.l_proj", 2048, hidden)
            linear(f + "attn.values_v_proj", 2048, channels)
            linear(f + "attn.values_l_proj", 2048, hidden)
            linear(f + "attn.out_v_proj", channels, 2048)
            linear(f + "attn.out_l_proj", hidden, 2048)
            bert_layer(f"{h}dyhead_tower.{3 * k + 1}", hidden, bert_intermediate)
        d = f"{h}dyhead_tower.{per_layer * k + per_layer - 1}."
        for i in range(3):
            conv(f"{d}DyConv.{i}.conv", channels, channels, 3)
            norm(f"{d}DyConv.{i}.bn", channels)
        conv(d + "AttnConv.1", 1, channels, 1)
        linear(d + "relu.fc.0", channels // 4, channels)
        linear(d + "relu.fc.2", 4 * channels, channels // 4)
        conv(d + "offset", 27, channels, 3)
    conv(h + "cls_logits", num_classes, channels, 1)
    conv(h + "bbox_pred", 4, channels, 1)
    conv(h + "centerness", 1, channels, 1)
    for lvl in range(5):
        add(f"{h}scales.{lvl}.scale", 1)
    linear(h + "dot_product_projection_text", channels, hidden)
    add(h + "log_scale", 1)
    add(h + "bias0", 1)
    add(h + "bias_lang", hidden)
    for lvl in range(5):
        add(f"rpn.anchor_generator.cell_anchors.{lvl}", 1, 4)
    return s


SMALL = dict(
    embed_dim=48,
    depths=(2, 2, 2, 2),
    num_heads=(2, 4, 8, 16),
    window=7,
    fpn=64,
    channels=64,
    num_layers=2,
    hidden=384,
    bert_layers=6,
    bert_intermediate=1536,
)


def random_state_dict(shapes, seed=0):
    """Random tensors of the given shapes (int64 buffers get random non-negative ints)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in shapes.items():
        if dtype == torch.int64:
            out[key] = torch.randint(0, 100, shape, generator=g)
        else:
            out[key] = torch.randn(shape, generator=g)
    return out
