"""The document models: an abstract base a host site can subclass, and the app's own Document."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.db import DataError, models, router, transaction
from django.db.models.signals import class_prepared
from django.utils import timezone
from pgvector import HalfVector, Vector
from pgvector.django import HnswIndex, VectorField

from vectorstore import conf
from vectorstore.freshness.triggers import FreshVectors
from vectorstore.limits import HNSW_EF_CONSTRUCTION, HNSW_M, TEXT_SEARCH_CONFIG
from vectorstore.query import DocumentManager
from vectorstore.reembed import record
from vectorstore.vector_values import VectorValues


class _Deferred:
    """A field not read from the database (deferred) when the instance was loaded; pickles as itself."""

    def __reduce__(self) -> str:
        return "_DEFERRED"

    def __repr__(self) -> str:
        return "<deferred>"


_DEFERRED = _Deferred()


def vector_digest(vector: Any) -> bytes | None:
    """A vector's value, as a short digest: what change detection compares (identity is no test: a
    refresh, a copy, a form or a serializer hands back an equal vector in another object)."""
    if vector is None:
        return None
    if isinstance(vector, Vector | HalfVector):
        vector = vector.to_numpy()
    array = np.ascontiguousarray(np.asarray(vector, dtype=np.float32))
    return hashlib.blake2b(array.tobytes(), digest_size=16).digest()


class AbstractDocument(VectorValues):
    """A text, its embedding and its metadata.

    Subclass it to store documents in your own table; override ``embedding``
    to change the dimension (``embedding = VectorField(dimensions=768, null=True, blank=True)``).
    Index names are derived from the app label and class name; a subclass whose
    ``<app_label>_<class>_hnsw`` exceeds 30 characters declares its own
    ``Meta.indexes``.
    """

    # NULL, not "", for documents without an id: many may coexist under the unique constraint.
    external_id = models.CharField(  # noqa: DJ001
        max_length=255,
        null=True,
        blank=True,
        help_text="Your own identifier for the document (unique when given).",
    )
    text = models.TextField()
    # NULL until embedded where a write leaves embedding to the worker (EMBED_ON_SAVE "deferred", raw SQL):
    # the freshness triggers mark such a row stale, and search does not find it by meaning until then.
    embedding = VectorField(dimensions=384, null=True, blank=True)
    category = models.CharField(max_length=255, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Maintained by PostgreSQL itself, so every write path (ORM, COPY, raw SQL)
    # keeps full-text search in step with the text.
    search_vector = models.GeneratedField(
        expression=SearchVector("text", config=TEXT_SEARCH_CONFIG),
        output_field=SearchVectorField(),
        db_persist=True,
    )

    objects = DocumentManager()

    class Meta:
        abstract = True
        # Constraints and indexes are declared here rather than with unique=True
        # or db_index=True, which would add a second varchar_pattern_ops index to
        # every write (and every bulk load) for nothing.
        constraints = [
            models.UniqueConstraint(fields=["external_id"], name="%(app_label)s_%(class)s_external_id"),
            # Triggers, as a constraint so that makemigrations writes them for every document model:
            # a row whose text changed without its vector, by any path, is marked stale (freshness).
            FreshVectors(name="%(app_label)s_%(class)s_fresh"),
        ]
        indexes = [
            HnswIndex(
                name="%(app_label)s_%(class)s_hnsw",
                fields=["embedding"],
                m=HNSW_M,
                ef_construction=HNSW_EF_CONSTRUCTION,
                opclasses=["vector_cosine_ops"],
            ),
            GinIndex(name="%(app_label)s_%(class)s_fts", fields=["search_vector"]),
            GinIndex(name="%(app_label)s_%(class)s_meta", fields=["metadata"]),
            models.Index(name="%(app_label)s_%(class)s_cat", fields=["category"]),
            models.Index(name="%(app_label)s_%(class)s_created", fields=["created_at"]),
        ]

    # The embedding model for this document class (a sentence-transformers name or local path); None: the
    # VECTORSTORE MODEL setting. Its output size must be the ``embedding`` field's.
    embedding_model: str | None = None

    # True: long texts are kept as passages too (vectorstore.passages): a passage model <Class>Passage is
    # made beside this one (makemigrations writes its table), every save of a new or changed text writes
    # its passages in the same transaction, and searches rank documents by their best passage. None: the
    # table exists and the PASSAGES setting says whether it is used (the app's own Document).
    keep_passages: bool | None = False

    def __str__(self) -> str:
        label = self.external_id or f"#{self.pk}"
        return f"{label}: {self.text[:60]}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, embedding the text first when ``needs_embedding()`` (so a new or edited text keeps its vector
        right) and writing a new or changed text's passages (a model that keeps them) in the same transaction.
        With ``EMBED_ON_SAVE = "deferred"`` the worker embeds it. ``bulk_create`` and ``update()`` do not call
        this: the database marks the rows they leave without a matching vector, and the worker embeds them."""
        from vectorstore import passages  # the passages module imports this one

        update_fields = kwargs.get("update_fields")
        writes_text = update_fields is None or "text" in update_fields
        embed = self.needs_embedding() and writes_text
        # Passages with a new or changed text, and with a vector computed again (one cleared to be renewed).
        split = passages.enabled(type(self)) and writes_text and (self.text_changed() or embed)
        if conf.embed_on_save() == "deferred" and (embed or split):
            # The text is written now; the database marks the row stale (its vector unchanged, or none),
            # and the embedding worker embeds it and its passages.
            embed = split = False
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        if not (embed or split):
            with transaction.atomic(using=using):
                super().save(*args, **kwargs)
            return self._remember_loaded()
        # By the model that made the table's vectors (its record), checked in the write's transaction.
        pk, adding = self.pk, self._state.adding
        for attempt in (1, 2):
            embedder = record.embedder(type(self), using)
            if embed:
                self.embedding = embedder.encode([self.text])[0]
                if update_fields is not None:
                    kwargs["update_fields"] = {*update_fields, "embedding"}
            if split:  # a text that fits one passage: its vector (the caller's too) is the passage's
                parts = passages.split_texts([self.text], embedder)[0]
                (part_vectors,) = passages.passage_vectors([parts], [self.embedding], embedder)
            try:
                with transaction.atomic(using=using):
                    super().save(*args, **kwargs)
                    if split:
                        passages.replace_passages(self, parts, part_vectors, using)
                    record.hold(type(self), using, embedder.recorded)
                break
            except (record.ModelChanged, DataError) as exc:
                # A vector of the old size refused by the new column is the same news, told by PostgreSQL.
                if attempt == 2 or not record.moved(type(self), using, embedder.recorded, exc):
                    raise
                self.pk, self._state.adding = pk, adding  # as before the write that was rolled back
        self._remember_loaded()

    def text_changed(self) -> bool:
        """A text never saved, or changed since it was read (or assigned after being deferred)."""
        loaded = getattr(self, "_loaded_text", None)
        if loaded is None:
            return True
        return "text" in self.__dict__ and (loaded is _DEFERRED or self.text != loaded)

    def _remember_loaded(self, fields: Any = None) -> None:
        """What save() compares against: the text and (by value) the vector as the database has them."""
        if fields is None or "text" in fields:
            self._loaded_text = self.__dict__.get("text", _DEFERRED)
        if fields is None or "embedding" in fields:
            vector = self.__dict__.get("embedding", _DEFERRED)
            self._loaded_vector = _DEFERRED if vector is _DEFERRED else vector_digest(vector)

    @classmethod
    def from_db(cls, db, field_names, values):
        instance = super().from_db(db, field_names, values)
        instance._remember_loaded()
        return instance

    def refresh_from_db(self, using: Any = None, fields: Any = None, from_queryset: Any = None) -> None:
        """Django's refresh, and what the database now holds remembered (a refreshed vector is the stored
        one: an edited text must still get a new one)."""
        super().refresh_from_db(using=using, fields=fields, from_queryset=from_queryset)
        self._remember_loaded(None if fields is None else {self._meta.get_field(f).name for f in fields})

    def needs_embedding(self) -> bool:
        """No vector yet, or a text changed since it was read while the vector is still the one read with
        it (compared by value)."""
        loaded = getattr(self, "_loaded_text", None)
        if loaded is None:  # never saved: only a missing vector needs one
            return self.__dict__.get("embedding") is None
        # A text read and changed, or deferred and then assigned, is a new text.
        changed = "text" in self.__dict__ and (loaded is _DEFERRED or self.text != loaded)
        if "embedding" not in self.__dict__:  # deferred: the stored vector is the old text's
            return changed
        if self.embedding is None:
            return True
        loaded_vector = getattr(self, "_loaded_vector", _DEFERRED)
        if loaded_vector is _DEFERRED:  # read deferred, then assigned by the caller: theirs
            return False
        return changed and vector_digest(self.embedding) == loaded_vector


def _add_passage_model(sender: type, **kwargs: Any) -> None:
    """Give a concrete document model that keeps passages its passage model, as Django prepares it."""
    if (
        issubclass(sender, AbstractDocument)
        and not sender._meta.abstract
        and not sender._meta.proxy
        and getattr(sender, "keep_passages", False) is not False
        and "_passage_model" not in sender.__dict__
    ):
        from vectorstore.passages import make_passage_model

        sender._passage_model = make_passage_model(sender)


class_prepared.connect(_add_passage_model)


class Document(AbstractDocument):
    """The app's own document table; its vectors have the DIMENSIONS setting's size (384 by default, for
    all-MiniLM-L6-v2). Its migrations read the setting too, so a site that changes it writes no migration:
    ``manage.py reembed`` moves the column to the new size (docs: Changing the embedding model)."""

    embedding = VectorField(dimensions=conf.dimensions(), null=True, blank=True)
    keep_passages = None  # a passage table; the PASSAGES setting turns its use on

    class Meta(AbstractDocument.Meta):
        verbose_name = "document"
        verbose_name_plural = "documents"


class ApiToken(models.Model):
    """A bearer token for the REST API's writes. Only its SHA-256 is stored; the key is shown once."""

    PREFIX = "vs_"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="vectorstore_tokens"
    )
    name = models.CharField(max_length=100, blank=True, default="")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    hint = models.CharField(
        max_length=12, editable=False, help_text="The key's first characters, to tell it apart."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.hint}… ({self.user}, {self.name or 'unnamed'})"

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def issue(cls, user: Any, name: str = "") -> tuple[ApiToken, str]:
        """A new token for user; returns it and its key, which is not stored anywhere."""
        key = cls.PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name, key_hash=cls.digest(key), hint=key[:10])
        return token, key

    @classmethod
    def user_for(cls, key: str) -> Any | None:
        """The active user a key belongs to, or None."""
        if not key.startswith(cls.PREFIX) or len(key) > 200:
            return None
        token = cls.objects.select_related("user").filter(key_hash=cls.digest(key)).first()
        if token is None or not token.user.is_active:
            return None
        cls.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
        return token.user


class LoadDecision(models.Model):
    """The commit decision of a parallel load (``bulk_copy --workers N``), written once every stream
    is prepared and before the first COMMIT PREPARED.

    Two-phase commit needs it: if the loading process dies among its COMMIT PREPAREDs, the
    prepared transactions left behind are committed when this row exists and rolled back when it
    does not (``copy.recover_prepared_loads``, run by every load and by ``manage.py recover_loads``).
    """

    load_id = models.CharField(max_length=64, primary_key=True)
    db_table = models.CharField(max_length=255)
    streams = models.PositiveSmallIntegerField()
    decided_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "parallel load commit decision"

    def __str__(self) -> str:
        return f"load {self.load_id} into {self.db_table} ({self.streams} streams)"


class SearchTuning(models.Model):
    """The index settings ``manage.py tune_search`` chose for a document table's vector index: the smallest
    ``hnsw.ef_search`` (or ``ivfflat.probes``) whose measured recall@k reached the target. Every search of
    that table that sets neither uses them."""

    db_table = models.CharField(max_length=255)
    index_name = models.CharField(max_length=255, unique=True)
    method = models.CharField(max_length=16)  # hnsw | ivfflat
    ef_search = models.PositiveIntegerField(null=True, blank=True)
    probes = models.PositiveIntegerField(null=True, blank=True)
    rerank = models.PositiveIntegerField(
        null=True, blank=True, help_text="binary-quantized index: candidates re-ranked, as a multiple of k"
    )
    recall = models.FloatField(
        null=True,
        blank=True,
        help_text="recall@k measured at these settings: an estimate (none: not measured)",
    )
    recall_low = models.FloatField(
        null=True,
        blank=True,
        help_text="the estimate's 90% lower bound",
    )
    query_model = models.CharField(
        max_length=16,
        default="none",
        help_text="the queries measured: log or pseudo (noise: stored by an earlier version); none: the"
        " setting was not measured on this table",
    )
    target_recall = models.FloatField()
    k = models.PositiveSmallIntegerField()
    queries = models.PositiveIntegerField()
    rows = models.BigIntegerField(help_text="rows in the table when tuned")
    tuned_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "search tuning"

    def __str__(self) -> str:
        setting = f"ef_search {self.ef_search}" if self.method == "hnsw" else f"probes {self.probes}"
        if self.rerank:
            setting = f"rerank {self.rerank}"
        if self.recall is None:
            return f"{self.index_name}: {setting} (no recall measured on this table)"
        return (
            f"{self.index_name}: {setting} (recall@{self.k} ~{self.recall:.3f}, {self.query_model} queries)"
        )


class QueryLog(models.Model):
    """A sampled query vector of a search of one document table (``vectorstore.search.query_log``):
    vectors only, never the query's text; at most QUERY_LOG_SIZE slots a table, none older than
    QUERY_LOG_DAYS read."""

    db_table = models.CharField(max_length=255)
    slot = models.PositiveIntegerField()
    vector = VectorField()  # any dimension: each document table has its own
    created_at = models.DateTimeField()

    class Meta:
        verbose_name = "logged query"
        constraints = [models.UniqueConstraint(fields=["db_table", "slot"], name="vectorstore_querylog_slot")]
        indexes = [models.Index(name="vectorstore_querylog_age", fields=["db_table", "created_at"])]

    def __str__(self) -> str:
        return f"{self.db_table} slot {self.slot} ({self.created_at:%Y-%m-%d})"


class WriteMark(models.Model):
    """Where in the primary's WAL a client's last write ended, for read-your-writes with replicas: its
    reads stay on the primary until a replica has replayed that far (vectorstore.replicas.routers)."""

    # "t:" + the SHA-256 of a bearer token, or "s:" + that of a session key: never the secret itself.
    client = models.CharField(max_length=80, primary_key=True)
    lsn = models.BigIntegerField(help_text="pg_current_wal_insert_lsn() after the write, in bytes")
    written_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "write mark"

    def __str__(self) -> str:
        return f"{self.client[:10]}... at {self.lsn}"


class StaleVector(models.Model):
    """A document row whose vector does not follow its text yet: marked by the table's freshness
    triggers (``vectorstore.freshness.triggers``), renewed and removed by the embedding worker
    (``manage.py embed_worker``). ``attempts`` and ``next_try`` space out the retries of a text that
    fails to embed; after MAX_ATTEMPTS it waits, reported, until its text changes."""

    db_table = models.CharField(max_length=255)
    row_id = models.BigIntegerField()
    marked_at = models.DateTimeField(default=timezone.now)
    attempts = models.PositiveIntegerField(default=0)
    next_try = models.DateTimeField(default=timezone.now)
    error = models.TextField(blank=True, default="")

    class Meta:
        verbose_name = "stale vector"
        constraints = [models.UniqueConstraint(fields=["db_table", "row_id"], name="vectorstore_stale_row")]
        indexes = [models.Index(name="vectorstore_stale_due", fields=["db_table", "next_try"])]

    def __str__(self) -> str:
        return f"{self.db_table} #{self.row_id} (marked {self.marked_at:%Y-%m-%d %H:%M:%S})"


class EmbedWorker(models.Model):
    """An embedding worker's heartbeat: the system check warns of a backlog no worker has taken."""

    name = models.CharField(max_length=200, primary_key=True)
    last_seen = models.DateTimeField()
    rows = models.BigIntegerField(default=0, help_text="rows it has embedded since it started")

    class Meta:
        verbose_name = "embedding worker"

    def __str__(self) -> str:
        return f"{self.name} (seen {self.last_seen:%Y-%m-%d %H:%M:%S})"


class EmbeddingRecord(models.Model):
    """Which embedding model made a table's vectors, and the other model's in its shadow column (the next
    while ``reembed`` fills it, the previous after a swap): ``vectorstore.reembed.record``."""

    db_table = models.CharField(max_length=255, unique=True)
    model = models.TextField(blank=True, default="", help_text='name or path; "" is the bundled default')
    dimensions = models.PositiveIntegerField()
    fingerprint = models.CharField(max_length=64)
    version = models.PositiveIntegerField(default=1)
    updated_at = models.DateTimeField(default=timezone.now)
    shadow_state = models.CharField(max_length=16, blank=True, default="")  # "" | filling | previous
    shadow_model = models.TextField(blank=True, default="")
    shadow_dimensions = models.PositiveIntegerField(null=True, blank=True)
    shadow_fingerprint = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        verbose_name = "embedding model record"

    def __str__(self) -> str:
        return f"{self.db_table}: {self.model or 'bundled all-MiniLM-L6-v2'} (version {self.version})"
