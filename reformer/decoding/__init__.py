"""Decoding through the models' caches: sampling (`generate`) and beam search."""

from reformer.decoding.beam import beam_search  # noqa: F401
from reformer.decoding.sampling import Sampling, generate  # noqa: F401
