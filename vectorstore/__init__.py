"""vectorstore: PostgreSQL + pgvector as a store for sentence-transformer embeddings."""

__version__ = "0.1.0"
