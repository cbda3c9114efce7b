"""The peers benchmark's step in HuggingFace transformers: `ReformerModelWithLMHead`
(reversible in training) and `torch.optim.Adam`."""

from __future__ import annotations

from reformer.experiments.peers.common import (
    VOCAB,
    axial_dims,
    axial_shape,
    n_buckets,
    tokens,
    torch_setup,
    torch_step,
)


def hf_config(args, seq_len: int):
    """The benchmark's model as a `transformers.ReformerConfig`."""
    from transformers import ReformerConfig

    return ReformerConfig(
        vocab_size=VOCAB,
        attn_layers=["lsh"] * args.n_layers,
        hidden_size=args.d_model,
        feed_forward_size=args.d_ff,
        num_attention_heads=args.n_heads,
        attention_head_size=args.d_head,
        lsh_attn_chunk_length=args.chunk,
        num_buckets=n_buckets(args, seq_len),
        num_hashes=args.n_hashes,
        lsh_num_chunks_before=1,
        lsh_num_chunks_after=0,
        is_decoder=True,
        axial_pos_embds=True,
        axial_pos_shape=axial_shape(seq_len),
        axial_pos_embds_dim=axial_dims(args.d_model),
        max_position_embeddings=seq_len,
        hidden_dropout_prob=0.0,
        lsh_attention_probs_dropout_prob=0.0,
        local_attention_probs_dropout_prob=0.0,
        hidden_act="gelu_new",
        use_cache=False,
    )


def build_hf(args, seq_len: int):
    """(step, info), as `ours.build_ours` returns them."""
    import torch
    from transformers import ReformerModelWithLMHead

    threads, device, device_name = torch_setup(args)
    model = ReformerModelWithLMHead(hf_config(args, seq_len)).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.from_numpy(tokens(args, seq_len).astype("int64")).to(device)
    step = torch_step(model, opt, lambda m: m(input_ids=x, labels=x).loss, device)

    info = {
        "reversible": True,  # HF's ReformerModel always runs its layers reversibly in training.
        "n_params": sum(p.numel() for p in model.parameters()),
        "device": device_name,
        "threads": threads,
        "notes": (
            f"ReformerModelWithLMHead, lsh_attn_chunk_length {args.chunk}, "
            f"num_buckets {n_buckets(args, seq_len)}, chunks before 1 / after 0; axial "
            f"positions {axial_shape(seq_len)} dims {axial_dims(args.d_model)} "
            "(concatenated); gelu_new; chunk_size_feed_forward 0; torch.optim.Adam"
        ),
    }
    return step, info
