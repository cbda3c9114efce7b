"""One Reformer train step in this project against other Reformer implementations.

The same model (causal byte-level LM, every layer LSH attention, fp32, vocabulary 258,
axial positions, no dropout) is built in each implementation and one whole optimizer step
(forward, loss, backward, Adam update) is timed:

- `ours`: this project's train step as `reformer/training/loop.py` runs it (`steps.jit_train_step`,
  compiled ahead of time by `steps.compile_train_step`: state donated, batch sharded over
  the mesh, the compiler's freed heap returned to the OS); reversible layers. `ours_plain` is the
  same with `model.residual = "two_stream"` (only when asked for).
- `hf`: `transformers.ReformerModelWithLMHead` (reversible in training), `torch.optim.Adam`.
- `lucidrains`: `reformer_pytorch.ReformerLM` (reversible at every length with
  `reverse_thres=0`), `torch.optim.Adam`.
- `trax`: `trax.models.ReformerLM` with `LSHSelfAttention`, stepped with
  `jax.jit(jax.value_and_grad(loss))` and Adam; plain autodiff, so *not* reversible. Trax
  needs its own virtual environment (it pulls TensorFlow): give its interpreter with
  `--trax_python`; without it trax is skipped.

Every implementation runs in its own process (this script with `--worker IMPL`), which
builds the model, runs `--warmup` untimed steps (compilation for JAX) and then answers a
line protocol on stdin/stdout: `step` runs one train step and answers `{"seconds": s}`;
`quit` answers `{"peak_rss_bytes": n}` (the process's peak resident memory) and exits. The
parent starts the workers of one sequence length, takes `--repeats` timed steps from each in
turn (so load from other processes spreads evenly), then moves to the next length.

    python scripts/bench_peers.py --out docs/benchmarks/peers_cpu.json

writes one JSON record per implementation and length ({"impl", "reversible", "seq_len",
"step_seconds" (median), "step_seconds_all", "peak_rss_bytes", "device", the settings, the
library versions, "cpu", "threads", ...}), a PNG beside it, and prints a Markdown table of
our ratios against each peer.

On a GPU (`--device gpu`: JAX's CUDA backend and PyTorch's) the step runs there, and every
record also holds `peak_device_bytes`, the process's peak of allocated GPU memory (PyTorch's
`torch.cuda.max_memory_allocated`, JAX's `peak_bytes_in_use`), which the table and plot then
compare instead of the host's RSS. Float32 products run at one precision in every library,
`--matmul_precision`: `tf32` (the GPU default of JAX; PyTorch is set to match) or `highest`.
The workers of one length share the GPU, so JAX's preallocation is turned off.

    python scripts/bench_peers.py --device gpu --out docs/benchmarks/peers_h200.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMPLS = ("ours", "ours_plain", "hf", "lucidrains", "trax")
JAX_PLATFORMS = {"cpu": "cpu", "gpu": "cuda"}
TORCH_IMPLS = ("hf", "lucidrains")
VOCAB = 258
PACKAGES = {
    "jax": "jax",
    "torch": "torch",
    "transformers": "transformers",
    "reformer_pytorch": "reformer-pytorch",
    "trax": "trax",
}
SETTINGS = ("n_layers", "d_model", "d_ff", "n_heads", "d_head", "chunk", "n_hashes", "batch")


# ---------------------------------------------------------------------------------------
# Shared settings


def axial_shape(seq_len: int) -> tuple[int, int]:
    """`(a, b)` with `a * b == seq_len` and `b` the largest divisor not above sqrt(seq_len)."""
    b = max(d for d in range(1, math.isqrt(seq_len) + 1) if seq_len % d == 0)
    return seq_len // b, b


def axial_dims(d_model: int) -> tuple[int, int]:
    return d_model // 4, d_model - d_model // 4


def n_buckets(args, seq_len: int) -> int:
    """Buckets per hash round: one per chunk, in every implementation."""
    return seq_len // args.chunk


def tokens(args, seq_len: int):
    """The batch every implementation trains on: random byte ids 2..257 (seeded)."""
    import numpy as np

    return np.random.default_rng(0).integers(2, VOCAB, (args.batch, seq_len), dtype=np.int32)


def versions() -> dict:
    out = {}
    for key, dist in PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux.


def peak_device_bytes(impl: str) -> int | None:
    """Peak GPU memory this process allocated (None on a CPU)."""
    if impl in TORCH_IMPLS:
        import torch

        return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
    if "jax" not in sys.modules:
        return None
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    return int((device.memory_stats() or {}).get("peak_bytes_in_use", 0)) or None


def jax_device_name() -> str:
    import jax

    device = jax.devices()[0]
    return "cpu" if device.platform == "cpu" else device.device_kind


def jax_setup(args) -> None:
    """On a GPU: check that JAX has one, and set the precision of float32 products."""
    import jax

    if args.device == "gpu":
        try:
            jax.devices("cuda")
        except (RuntimeError, AssertionError) as e:
            why = f": {e}" if str(e) else ""
            raise RuntimeError(
                "--device gpu: JAX finds no CUDA device (install jax[cuda12] or jax[cuda13] "
                f"on a machine with an NVIDIA GPU){why}"
            ) from None
        jax.config.update(
            "jax_default_matmul_precision",
            "tensorfloat32" if args.matmul_precision == "tf32" else "highest",
        )


# ---------------------------------------------------------------------------------------
# Workers: each returns (step, info); step() runs one train step, waits until it is done
# and returns its loss (nats per token).


def build_ours(args, seq_len: int, reversible: bool):
    sys.path.insert(0, str(REPO))

    import jax

    from reformer.config.schema import default_config, validate
    from reformer.training import sharding
    from reformer.training.optimizer import make_optimizer
    from reformer.training.steps import (
        abstract_state,
        compile_train_step,
        jit_train_step,
        make_init_state,
        make_model,
    )

    jax_setup(args)
    c = default_config()
    m = c.model
    m.vocab_size, m.d_model, m.d_ff = VOCAB, args.d_model, args.d_ff
    m.n_heads, m.d_head, m.n_layers = args.n_heads, args.d_head, args.n_layers
    m.attention_types = ("lsh",)
    m.lsh_chunk_len, m.n_buckets, m.n_hashes = args.chunk, n_buckets(args, seq_len), args.n_hashes
    m.causal, m.residual = True, "reversible" if reversible else "two_stream"
    m.positional = "axial"
    m.axial_shape, m.axial_dims = axial_shape(seq_len), axial_dims(args.d_model)
    m.max_len = seq_len
    m.position_chunk_size = args.ours_ff_chunk
    m.dropout = m.attention_dropout = 0.0
    c.data.name, c.data.seq_len = "enwik8", seq_len
    c.train.batch_size = args.batch
    c.optimizer.name = "adam"
    validate(c, num_devices=jax.device_count())

    # The step as reformer/training/loop.py builds and jits it.
    mesh = sharding.make_mesh(c.mesh)
    model = make_model(c)
    tx = make_optimizer(c.optimizer)
    init_rng, step_rng = jax.random.split(jax.random.key(c.train.seed))
    abstract = abstract_state(c, model, tx, mesh)
    state_sharding = jax.tree.map(lambda a: a.sharding, abstract)
    state = jax.jit(make_init_state(c, model, tx), out_shardings=state_sharding)(init_rng)
    p_train_step = jit_train_step(c, model, tx, mesh, state_sharding)
    import numpy as np

    x = tokens(args, seq_len)
    batch = sharding.global_batch(mesh, {"tokens": x, "weights": np.ones(x.shape, np.float32)})
    p_train_step, _ = compile_train_step(p_train_step, state, batch, step_rng)
    n_params = sum(int(p.size) for p in jax.tree.leaves(state.params))
    holder = {"state": state}

    def step() -> float:
        new_state, metrics = p_train_step(holder["state"], batch, step_rng)
        jax.block_until_ready((new_state, metrics))
        holder["state"] = new_state
        return float(metrics["loss_sum"]) / float(metrics["weight_sum"])

    info = {
        "reversible": reversible,
        "n_params": n_params,
        "device": jax_device_name(),
        "threads": os.cpu_count(),  # XLA's CPU thread pool spans every core.
        "notes": (
            f"reformer.training.steps.jit_train_step + compile_train_step, as the trainer runs it "
            f"(donated state); "
            f"axial positions {m.axial_shape} dims {m.axial_dims} (concatenated); "
            f"position_chunk_size {m.position_chunk_size}; tanh GELU; Adam (b2 0.98, eps 1e-9) "
            f"after global-norm clipping {c.optimizer.clip_norm}"
        ),
    }
    return step, info


def _torch_setup(args) -> tuple[int, str, str]:
    """Threads, the torch device ("cpu" or "cuda") and its name for the records."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    if args.device == "cpu":
        return torch.get_num_threads(), "cpu", "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("--device gpu: this PyTorch sees no CUDA device")
    torch.set_float32_matmul_precision("high" if args.matmul_precision == "tf32" else "highest")
    return torch.get_num_threads(), "cuda", torch.cuda.get_device_name()


def _torch_step(model, opt, loss_of, device: str):
    """One forward, backward and Adam step, waited for on the GPU."""
    import torch

    def step() -> float:
        loss = loss_of(model)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    return step


def build_hf(args, seq_len: int):
    import torch
    from transformers import ReformerConfig, ReformerModelWithLMHead

    threads, device, device_name = _torch_setup(args)
    config = ReformerConfig(
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
    model = ReformerModelWithLMHead(config).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.from_numpy(tokens(args, seq_len).astype("int64")).to(device)
    step = _torch_step(model, opt, lambda m: m(input_ids=x, labels=x).loss, device)

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


def build_lucidrains(args, seq_len: int):
    import functools

    import torch
    import torch.nn.functional as F
    from reformer_pytorch import ReformerLM

    if args.d_ff % args.d_model:
        raise ValueError("lucidrains' ReformerLM needs d_ff to be a multiple of d_model (ff_mult)")
    threads, device, device_name = _torch_setup(args)
    model = ReformerLM(
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
    model = model.to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.from_numpy(tokens(args, seq_len).astype("int64")).to(device)

    def loss_of(m):
        logits = m(x)
        return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))

    step = _torch_step(model, opt, loss_of, device)

    info = {
        "reversible": seq_len > model.reformer.model.layers.reverse_thres,
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


def build_trax(args, seq_len: int):
    import functools

    import jax
    import jax.numpy as jnp
    import trax
    import trax.layers as tl
    from trax.models.reformer.reformer import ReformerLM

    jax_setup(args)
    attention = functools.partial(
        tl.LSHSelfAttention,
        chunk_len=args.chunk,
        n_buckets=n_buckets(args, seq_len),
        n_hashes=args.n_hashes,
        n_chunks_before=1,
        n_chunks_after=0,
    )
    model = ReformerLM(
        vocab_size=VOCAB,
        d_model=args.d_model,
        d_ff=args.d_ff,
        d_attention_key=args.d_head,
        d_attention_value=args.d_head,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        dropout=0.0,
        max_len=seq_len,
        attention_type=attention,
        pos_type="axial",
        pos_axial_shape=axial_shape(seq_len),
        pos_d_axial_embs=axial_dims(args.d_model),
        ff_activation=tl.FastGelu,
        mode="train",
    )
    x = jnp.asarray(tokens(args, seq_len))
    weights, state = model.init(trax.shapes.signature(x), rng=jax.random.PRNGKey(0))
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1e-4

    def loss_fn(w, st, x, rng):
        logits, new_st = model.pure_fn(x, w, st, rng)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, x[..., None], axis=-1)), new_st

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(w, st, opt, x, rng):
        (loss, new_st), g = grad_fn(w, st, x, rng)
        mu, nu, t = opt
        t = t + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, mu, g)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, nu, g)
        scale = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        w = jax.tree.map(lambda p, m, v: p - scale * m / (jnp.sqrt(v) + eps), w, mu, nu)
        return w, new_st, (mu, nu, t), loss

    p_step = jax.jit(train_step, donate_argnums=(0, 1, 2))
    zeros = lambda: jax.tree.map(jnp.zeros_like, weights)  # noqa: E731
    holder = {
        "w": weights,
        "st": state,
        "opt": (zeros(), zeros(), jnp.zeros((), jnp.float32)),
        "rng": jax.random.PRNGKey(1),
    }
    n_params = sum(int(p.size) for p in jax.tree.leaves(weights))

    def step() -> float:
        rng, sub = jax.random.split(holder["rng"])
        w, st, opt, loss = p_step(holder["w"], holder["st"], holder["opt"], x, sub)
        jax.block_until_ready((w, st, opt, loss))
        holder.update(w=w, st=st, opt=opt, rng=rng)
        return float(loss)

    info = {
        "reversible": False,  # jax.grad through trax's ReversibleSerial stores activations.
        "n_params": n_params,
        "device": jax_device_name(),
        "threads": os.cpu_count(),
        "notes": (
            f"trax.models.ReformerLM + LSHSelfAttention (chunk_len {args.chunk}, n_buckets "
            f"{n_buckets(args, seq_len)}, n_parallel_heads 1 default); axial positions "
            f"{axial_shape(seq_len)} dims {axial_dims(args.d_model)}; FastGelu; "
            "jax.jit(jax.value_and_grad(loss)) + Adam: not reversible"
        ),
    }
    return step, info


def build(impl: str, args, seq_len: int):
    if impl == "ours":
        return build_ours(args, seq_len, reversible=True)
    if impl == "ours_plain":
        return build_ours(args, seq_len, reversible=False)
    if impl == "hf":
        return build_hf(args, seq_len)
    if impl == "lucidrains":
        return build_lucidrains(args, seq_len)
    if impl == "trax":
        return build_trax(args, seq_len)
    raise ValueError(f"unknown implementation {impl!r}")


def worker_main(args) -> None:
    """Serves the line protocol; only protocol lines reach the real stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # Library output (Python or C) written to stdout goes to stderr.
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        step, info = build(args.worker, args, args.seq_len)
        warmup, losses = [], []
        for _ in range(args.warmup):
            start = time.perf_counter()
            losses.append(step())
            warmup.append(time.perf_counter() - start)
        info.update(warmup_seconds=warmup, losses=losses, versions=versions())
        send({"ready": True, **info})
    except Exception as e:  # noqa: BLE001  (reported to the parent, which records it)
        import traceback

        traceback.print_exc()
        send({"error": f"{type(e).__name__}: {e}"})
        sys.exit(1)
    for line in sys.stdin:
        command = line.strip()
        if command == "step":
            try:
                start = time.perf_counter()
                loss = step()
                send({"seconds": time.perf_counter() - start, "loss": loss})
            except Exception as e:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                send({"error": f"{type(e).__name__}: {e}"})
                sys.exit(1)
        elif command == "quit":
            break
    send({"peak_rss_bytes": peak_rss_bytes(), "peak_device_bytes": peak_device_bytes(args.worker)})


# ---------------------------------------------------------------------------------------
# Parent


class Worker:
    """One implementation's process; replies are read by a thread into a queue so that
    every wait has a timeout."""

    def __init__(self, impl: str, python: str, args, seq_len: int):
        self.impl, self.seq_len = impl, seq_len
        cmd = [python, os.path.abspath(__file__), "--worker", impl, "--seq_len", str(seq_len)]
        for name in SETTINGS + ("warmup", "ours_ff_chunk", "device", "matmul_precision"):
            cmd += [f"--{name}", str(getattr(args, name))]
        env = {
            **os.environ,
            "JAX_PLATFORMS": JAX_PLATFORMS[args.device],
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        if args.device == "gpu":  # The workers of one length share the GPU.
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=str(REPO),
            env=env,
        )
        self.replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._relay_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                try:
                    self.replies.put(json.loads(line))
                except json.JSONDecodeError:
                    self.replies.put({"error": f"bad protocol line: {line[:200]}"})
        self.replies.put(None)  # End of output: the process exited.

    def _relay_stderr(self) -> None:
        prefix = f"[{self.impl} L={self.seq_len}] "
        for line in self.proc.stderr:
            sys.stderr.write(prefix + line)

    def reply(self, timeout: float) -> dict:
        try:
            msg = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            return {"error": f"no reply within {timeout:.0f} s (killed)"}
        if msg is None:
            code = self.proc.wait()
            return {"error": f"worker exited with code {code}"}
        return msg

    def send(self, command: str) -> bool:
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def trax_available(python: str | None, device: str = "cpu") -> tuple[bool, str]:
    if not python:
        return False, "no --trax_python given (trax lives in its own virtual environment)"
    if not os.path.exists(python):
        return False, f"--trax_python {python} does not exist"
    try:
        proc = subprocess.run(
            [python, "-c", "import trax, jax; print(jax.__version__)"],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "JAX_PLATFORMS": JAX_PLATFORMS[device], "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    except subprocess.TimeoutExpired:
        return False, f"importing trax with {python} took over 600 s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"cannot import trax with {python}: {last}"
    return True, ""


def run_length(args, impls: list[str], seq_len: int, common: dict) -> list[dict]:
    """Starts one worker per implementation, takes `repeats` alternating timed steps from
    each, and returns one record per implementation."""
    workers, info, errors = {}, {}, {}
    load_start = os.getloadavg()[0]
    for impl in impls:
        python = args.trax_python if impl == "trax" else sys.executable
        workers[impl] = Worker(impl, python, args, seq_len)
    for impl, w in workers.items():
        msg = w.reply(args.start_timeout)
        if "error" in msg:
            errors[impl] = f"start-up: {msg['error']}"
            w.kill()
        else:
            info[impl] = msg
            print(
                f"L={seq_len} {impl}: ready, warm-up steps "
                + ", ".join(f"{s:.2f} s" for s in msg.get("warmup_seconds", [])),
                flush=True,
            )
    times: dict[str, list[float]] = {impl: [] for impl in info}
    losses = {impl: list(info[impl].get("losses", [])) for impl in info}
    for r in range(args.repeats):
        for impl in list(times):
            if impl in errors:
                continue
            w = workers[impl]
            if times[impl]:
                timeout = max(args.min_step_timeout, 10 * times[impl][0])
            else:
                slowest = max(info[impl].get("warmup_seconds") or [0.0])
                timeout = max(args.min_step_timeout, 5 * slowest)
            time.sleep(args.pause)  # Lets the previous worker's threads go idle.
            msg = w.reply(0) if not w.send("step") else w.reply(timeout)
            if "error" in msg:
                errors[impl] = f"step {r}: {msg['error']}"
                w.kill()
                continue
            times[impl].append(float(msg["seconds"]))
            losses[impl].append(float(msg["loss"]))
            print(
                f"L={seq_len} repeat {r} {impl}: {msg['seconds']:.3f} s, loss {msg['loss']:.4f}",
                flush=True,
            )
    load_end = os.getloadavg()[0]
    records = []
    for impl in impls:
        w = workers[impl]
        rss = device_bytes = None
        if impl not in errors:
            msg = w.reply(0) if not w.send("quit") else w.reply(120)
            if "error" in msg:
                errors[impl] = f"quit: {msg['error']}"
            else:
                rss, device_bytes = int(msg["peak_rss_bytes"]), msg.get("peak_device_bytes")
        w.kill()
        meta = info.get(impl, {})
        all_times = times.get(impl, [])
        record = {
            "impl": impl,
            "reversible": meta.get("reversible"),
            "seq_len": seq_len,
            "step_seconds": statistics.median(all_times) if all_times else None,
            "step_seconds_all": all_times,
            "peak_rss_bytes": rss,
            "peak_device_bytes": device_bytes,
            "warmup_seconds": meta.get("warmup_seconds", []),
            "n_params": meta.get("n_params"),
            "losses": losses.get(impl, []),
            "device": meta.get("device", "cpu" if args.device == "cpu" else "gpu"),
            **common,
            "n_buckets": n_buckets(args, seq_len),
            "axial_shape": list(axial_shape(seq_len)),
            "threads": meta.get("threads"),
            # 1-minute load average when the length's workers started and after its steps
            # (above cpu_count: other processes shared the cores).
            "load_average": [round(load_start, 2), round(load_end, 2)],
            "versions": meta.get("versions", common["versions"]),
            "notes": meta.get("notes", ""),
        }
        if impl in errors:
            record["error"] = errors[impl]
            print(f"L={seq_len} {impl}: ERROR {errors[impl]}", flush=True)
        records.append(record)
    return records


def memory_key(records: list[dict]) -> tuple[str, str]:
    """The memory the records compare, and its name: GPU memory where there is any."""
    if any(r.get("peak_device_bytes") for r in records):
        return "peak_device_bytes", "peak GPU memory"
    return "peak_rss_bytes", "peak RSS"


def ratio_table(records: list[dict]) -> str:
    """Markdown: each implementation's median step and peak memory per length, and ours
    against it (peer step / our step: >1 means we are faster; our memory / peer memory: <1
    means we use less). Memory is the host's peak RSS on a CPU, peak GPU memory on a GPU."""
    gib = 2.0**30
    key, name = memory_key(records)
    rows = [
        f"| length | impl | reversible | step (s) | {name} (GiB) | "
        "peer step / our step | our memory / peer memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for seq_len in sorted({r["seq_len"] for r in records}):
        at = [r for r in records if r["seq_len"] == seq_len]
        ours = next((r for r in at if r["impl"] == "ours" and r["step_seconds"]), None)
        for r in at:
            if r.get("error"):
                rows.append(f"| {seq_len} | {r['impl']} | - | error | - | - | - |")
                continue
            step_ratio = rss_ratio = "-"
            if ours is not None and r is not ours:
                step_ratio = f"{r['step_seconds'] / ours['step_seconds']:.2f}x"
                if ours.get(key) and r.get(key):
                    rss_ratio = f"{ours[key] / r[key]:.2f}"
            rss = f"{r[key] / gib:.2f}" if r.get(key) else "-"
            rows.append(
                f"| {seq_len} | {r['impl']} | {r['reversible']} | {r['step_seconds']:.3g} | "
                f"{rss} | {step_ratio} | {rss_ratio} |"
            )
    return "\n".join(rows)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if not r.get("error") and r["step_seconds"]]
    lengths = sorted({r["seq_len"] for r in records})
    impls = [i for i in IMPLS if any(r["impl"] == i for r in ok)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.8 / max(len(impls), 1)
    colors = {
        "ours": "tab:blue",
        "ours_plain": "tab:cyan",
        "hf": "tab:orange",
        "lucidrains": "tab:green",
        "trax": "tab:red",
    }
    mem_key, mem_name = memory_key(ok)
    for ax, key, scale, ylabel in (
        (axes[0], "step_seconds", 1.0, "train step (s, median)"),
        (axes[1], mem_key, 2.0**30, f"{mem_name} of the process (GiB)"),
    ):
        for k, impl in enumerate(impls):
            xs, ys = [], []
            for i, seq_len in enumerate(lengths):
                r = next((r for r in ok if r["impl"] == impl and r["seq_len"] == seq_len), None)
                if r is not None and r.get(key):
                    xs.append(i + (k - (len(impls) - 1) / 2) * width)
                    ys.append(r[key] / scale)
            rev = next((r["reversible"] for r in ok if r["impl"] == impl), None)
            label = f"{impl} ({'reversible' if rev else 'not reversible'})"
            bars = ax.bar(xs, ys, width, label=label, color=colors.get(impl))
            ax.bar_label(bars, fmt="%.3g", fontsize=8, padding=2)
        ax.set_xticks(range(len(lengths)), [f"L = {n:,}" for n in lengths])
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.12)
    axes[0].set_title("Time of one train step (forward, backward, Adam)")
    axes[1].set_title(f"{mem_name[0].upper()}{mem_name[1:]}")
    axes[0].legend(fontsize=8, loc="upper left")
    r0 = records[0]
    fig.suptitle(
        f"Reformer LM train step, {r0['n_layers']} LSH layers, d_model {r0['d_model']}, "
        f"d_ff {r0['d_ff']}, {r0['n_heads']}x{r0['d_head']} heads, chunk {r0['chunk']}, "
        f"{r0['n_hashes']} hashes, batch {r0['batch']}, fp32\n"
        + (
            f"{r0['cpu']}, {r0['cpu_count']} cores"
            if r0["device"] == "cpu"
            else f"{r0['device']} ({r0.get('matmul_precision')} products)"
        ),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parent_main(args) -> int:
    impls = [i for i in args.impls.split(",") if i]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        sys.exit(f"unknown --impls {unknown}; choose from {IMPLS}")
    if "trax" in impls:
        ok, why = trax_available(args.trax_python, args.device)
        if not ok:
            print(f"skipping trax: {why}", flush=True)
            impls.remove("trax")
    lengths = [int(t) for t in args.seq_lens.split(",") if t]
    for n in lengths:
        if n % (2 * args.chunk):
            sys.exit(f"--seq_lens: {n} is not a multiple of 2 * --chunk = {2 * args.chunk}")
    common = {
        **{name: getattr(args, name) for name in SETTINGS},
        "vocab_size": VOCAB,
        "dtype": "float32",
        "matmul_precision": args.matmul_precision if args.device == "gpu" else "highest",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "versions": versions(),
    }
    records: list[dict] = []
    out = Path(args.out) if args.out else None
    for seq_len in lengths:
        records += run_length(args, impls, seq_len, common)
        if out is not None:  # Written after every length, so a long run keeps what it has.
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(records, indent=1) + "\n")
    print(ratio_table(records))
    if out is not None and records:
        plot(records, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return 1 if any(r.get("error") for r in records) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n_layers", type=int, default=6)
    parser.add_argument("--d_model", type=int, default=512)
    parser.add_argument("--d_ff", type=int, default=2048)
    parser.add_argument("--n_heads", type=int, default=8)
    parser.add_argument("--d_head", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=64, help="LSH chunk length")
    parser.add_argument("--n_hashes", type=int, default=4)
    parser.add_argument("--seq_lens", default="4096,16384")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--impls", default="ours,hf,lucidrains,trax", help=f"of {IMPLS}")
    parser.add_argument("--trax_python", default=None, help="a Python that can import trax")
    parser.add_argument(
        "--ours_ff_chunk", type=int, default=0, help="model.position_chunk_size of ours (0 = whole)"
    )
    parser.add_argument(
        "--device",
        choices=tuple(JAX_PLATFORMS),
        default="cpu",
        help="where every implementation runs (gpu: JAX's CUDA backend and PyTorch's)",
    )
    parser.add_argument(
        "--matmul_precision",
        choices=("tf32", "highest"),
        default="tf32",
        help="float32 products on the GPU, in every library (on a CPU: full float32)",
    )
    parser.add_argument("--out", default=None, help="JSON file (PNG beside it)")
    parser.add_argument(
        "--start_timeout", type=float, default=3600, help="seconds for build + warm-up"
    )
    parser.add_argument(
        "--min_step_timeout",
        type=float,
        default=300,
        help="least seconds a timed step may take before its worker is killed",
    )
    parser.add_argument(
        "--pause", type=float, default=0.5, help="seconds between timed steps of workers"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seq_len", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    sys.exit(parent_main(args))


if __name__ == "__main__":
    main()
