"""Evaluation: scoring a checkpoint on a whole split, and BLEU."""
