"""negseq: negative sampling and candidate sequences for generative-recommender training."""

__version__ = "0.1.0"
