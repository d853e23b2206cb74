"""lesiontrack: lesion tracking across longitudinal CT with multi-scale anatomical embeddings."""

__version__ = "0.1.0"
