"""The peers benchmark's step in lucidrains' `reformer_pytorch.ReformerLM` (reversible at
every length with `reverse_thres=0`) and `torch.optim.Adam`."""

from __future__ import annotations

from reformer.experiments.peers.common import (
    VOCAB,
    axial_shape,
    tokens,
    torch_setup,
    torch_step,
)


def lucidrains_model(args, seq_len: int):
    """The benchmark's model as a `reformer_pytorch.ReformerLM`."""
    import functools

    import torch
    from reformer_pytorch import ReformerLM

    return ReformerLM(
        num_tokens=VOCAB,
        dim=args.d_model,
        depth=args.n_layers,
        max_seq_len=seq_len,
        heads=args.n_heads,
        dim_head=args.d_head,
        bucket_size=args.chunk,  # The chunk length; it uses seq_len // bucket_size buckets.
        n_hashes=args.n_hashes,
        causal=True,
        ff_mult=args.d_ff // args.d_model,
        ff_activation=functools.partial(torch.nn.GELU, approximate="tanh"),
        lsh_dropout=0.0,
        ff_dropout=0.0,
        post_attn_dropout=0.0,
        layer_dropout=0.0,
        weight_tie=False,
        axial_position_emb=True,
        axial_position_shape=axial_shape(seq_len),
        reverse_thres=0,  # Reversible whenever seq_len > reverse_thres: always.
        full_attn_thres=0,  # LSH at every length.
    )


def build_lucidrains(args, seq_len: int):
    """(step, info), as `ours.build_ours` returns them."""
    import torch
    import torch.nn.functional as F

    if args.d_ff % args.d_model:
        raise ValueError("lucidrains' ReformerLM needs d_ff to be a multiple of d_model (ff_mult)")
    threads, device, device_name = torch_setup(args)
    model = lucidrains_model(args, seq_len).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.from_numpy(tokens(args, seq_len).astype("int64")).to(device)

    def loss_of(m):
        logits = m(x)
        return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))

    step = torch_step(model, opt, loss_of, device)

    info = {
        "reversible": seq_len > model.reformer.layers.reverse_thres,
        "n_params": sum(p.numel() for p in model.parameters()),
        "device": device_name,
        "threads": threads,
        "notes": (
            f"reformer_pytorch.ReformerLM, bucket_size {args.chunk} (= chunk length; "
            f"{seq_len // args.chunk} buckets), reverse_thres 0; axial positions "
            f"{axial_shape(seq_len)} summed (the library has no per-axis widths); "
            "ff_chunks 100 (default); tanh GELU; torch.optim.Adam"
        ),
    }
    return step, info
