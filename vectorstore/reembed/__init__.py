"""Changing the embedding model while the site serves: which model made a table's vectors is recorded
(``record``), every row and passage is embedded again beside the old vectors, in a shadow column, by any
number of workers, and one transaction swaps the columns (``shadow``); ``service`` runs it all for
``manage.py reembed`` (and ``--rollback``, ``--drop-old``)."""
