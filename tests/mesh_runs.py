"""Trains the same small model under several meshes in one process with fake CPU devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/mesh_runs.py OUT WORKDIR \
        data=8,fsdp=1 data=2,fsdp=4 ...

Writes OUT (JSON): for each mesh, the training losses of every step and, per parameter, its
global size and the size of one addressable shard. Run by tests/test_multihost.py.
"""

from __future__ import annotations

import json
import os
import sys

import jax

from reformer.train import train_and_evaluate
from reformer.training import sharding
from reformer.training.state import load_params, make_model
from tests.conftest import load_config


def small_config(num_steps: int = 6):
    """The tiny config as a reversible local + LSH model, logging every step."""
    c = load_config("tiny")
    c.model.attention_types = ("local", "lsh")
    c.model.residual = "reversible"
    c.model.lsh_chunk_len = c.model.local_chunk_len = 8
    c.model.n_hashes = 2
    c.train.num_steps = num_steps
    c.train.log_every = 1
    c.train.eval_every = 0
    c.train.checkpoint_every = num_steps
    c.eval.num_batches = 1
    return c


def main(out: str, workdir: str, meshes: list[str]) -> None:
    results = {}
    for spec in meshes:
        sizes = dict(kv.split("=") for kv in spec.split(","))
        config = small_config()
        config.mesh.data, config.mesh.fsdp = int(sizes["data"]), int(sizes["fsdp"])
        run_dir = os.path.join(workdir, spec.replace(",", "_").replace("=", ""))
        train_and_evaluate(config, run_dir)
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            losses = [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]
        mesh = sharding.make_mesh(config.mesh)
        params, _ = load_params(config, run_dir, make_model(config), mesh)
        shards = {
            jax.tree_util.keystr(path): [x.size, x.addressable_shards[0].data.size]
            for path, x in jax.tree_util.tree_leaves_with_path(params)
        }
        results[spec] = {"losses": losses, "shards": shards, "devices": jax.device_count()}
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
