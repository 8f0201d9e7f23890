"""Adapters for retrieval frameworks, each behind its own extra (``pip install vectorstore[langchain]``).

Nothing here is imported by the app itself: a site without the extras never loads these frameworks.
"""
