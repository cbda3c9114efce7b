"""A tiny model on a short duplication task, for tests: compiles and runs in seconds."""

from reformer.config import default_config


def get_config():
    c = default_config()
    c.model.vocab_size = 16
    c.model.d_model = 32
    c.model.d_ff = 64
    c.model.n_heads = 2
    c.model.d_head = 16
    c.model.n_layers = 2
    c.model.max_len = 64
    c.data.word_len = 15
    c.data.seq_len = 32
    c.train.num_steps = 20
    c.train.batch_size = 8
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 5
    c.eval.num_batches = 2
    c.eval.batch_size = 8
    return c
