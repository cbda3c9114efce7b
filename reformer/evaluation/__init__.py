"""Evaluation, above training and decoding: the evaluation step (also through the decoding
caches), a checkpoint scored on a whole split, translation with BLEU."""
