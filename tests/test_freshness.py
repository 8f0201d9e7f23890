"""Vectors that never go stale, against the real PostgreSQL: every write path marks a row whose text changed
without its vector (the database's triggers) or writes a matching one; the embedding worker renews what
is marked (checked against the model's own vector of the new text), shares a backlog, survives SIGKILL,
retries and reports a text that fails; deferred embedding on save; the backlog visible."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from tests.helpers import ROOT, database_url, unit_vectors
from vectorstore.embedding import Embedder
from vectorstore.freshness import backlog, worker
from vectorstore.models import Document, EmbedWorker, StaleVector

pytestmark = pytest.mark.django_db(transaction=True)  # workers and triggers see committed rows

TEXTS = [
    "the tariff on imported iron and steel",
    "railroads across the western plains",
    "a treaty of peace with Spain",
    "the navy's new steam frigates",
]


def _vector(text: str) -> np.ndarray:
    return Embedder.for_model(Document).encode([text])[0]


def _matches(doc: Document) -> bool:
    doc.refresh_from_db()
    return doc.embedding is not None and np.allclose(
        np.asarray(doc.embedding, np.float32), _vector(doc.text), atol=1e-5
    )


def _stale_ids() -> set[int]:
    return set(StaleVector.objects.filter(db_table="vectorstore_document").values_list("row_id", flat=True))


@pytest.fixture
def docs():
    made = [Document.objects.create(text=t, external_id=f"f{i}") for i, t in enumerate(TEXTS)]
    assert _stale_ids() == set() and all(_matches(d) for d in made)
    return made


def test_every_write_path_marks_or_embeds(docs, tmp_path):
    """save() with the read vector and a new text embeds it; update(), bulk_update() and raw SQL that
    change the text leave the vector and mark the row; a raw INSERT without a vector is marked; a new
    vector with the text (save() that embeds, a load's merge, bulk_copy) leaves nothing marked; then the
    worker gives every marked row the model's own vector of its text: no silent stale row."""
    a, b, c, d = docs
    a.text = "a canal between two oceans"
    a.save()  # the vector read with it, the text changed: embedded on the way
    Document.objects.filter(pk=b.pk).update(text="the census of the population")
    c.text = "gold and silver coinage"
    Document.objects.bulk_update([c], ["text"])
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE vectorstore_document SET text = 'the lighthouse service' WHERE id = %s", [d.pk]
        )
        cursor.execute(
            "INSERT INTO vectorstore_document (text, category, metadata, created_at)"
            " VALUES ('the postal roads', '', '{}', now()) RETURNING id"
        )
        raw = cursor.fetchone()[0]
        cursor.execute("UPDATE vectorstore_document SET metadata = '{\"n\": 1}' WHERE id = %s", [a.pk])
    assert _stale_ids() == {b.pk, c.pk, d.pk, raw} and _matches(a)
    # A load that brings text and vector together: a merge updating a marked row with both unmarks it.
    path = tmp_path / "merge.parquet"
    vector = _vector("the census of the population, by states")
    pq.write_table(
        pa.table(
            {
                "id": ["f1"],
                "text": ["the census of the population, by states"],
                "embedding": pa.array([vector], pa.list_(pa.float32())),
            }
        ),
        path,
    )
    call_command("bulk_copy", str(path), "--on-conflict", "update", "--no-tune")
    assert _stale_ids() == {c.pk, d.pk, raw}
    report = worker.embed_batch(Document)
    assert (report.taken, report.embedded, report.failed, report.changed) == (3, 3, 0, 0)
    assert _stale_ids() == set()
    assert all(_matches(Document.objects.get(pk=pk)) for pk in (a.pk, b.pk, c.pk, d.pk, raw))
    assert worker.embed_batch(Document).taken == 0


def test_a_migration_that_changes_the_columns_types_keeps_the_triggers():
    """AlterField of the vector's dimension (and back) runs under the triggers, which name no column for
    PostgreSQL to refuse ALTER COLUMN TYPE over, and they mark rows of the altered table after it."""
    from pgvector.django import VectorField

    old = Document._meta.get_field("embedding")
    wider = VectorField(dimensions=512, null=True, blank=True)
    wider.set_attributes_from_name("embedding")
    wider.model = Document
    with connection.schema_editor() as editor:
        editor.alter_field(Document, old, wider)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO vectorstore_document (text, category, metadata, created_at)"
                " VALUES ('the postal roads', '', '{}', now()) RETURNING id"
            )
            raw = cursor.fetchone()[0]
            cursor.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = 'vectorstore_document'::regclass AND attname = 'embedding'"
            )
            assert cursor.fetchone()[0] == "vector(512)"
        assert _stale_ids() == {raw}
        Document.objects.filter(pk=raw).update(embedding=[0.5] * 512)
        assert _stale_ids() == set()
        Document.objects.all().delete()
    finally:
        with connection.schema_editor() as editor:
            editor.alter_field(Document, wider, old)


def test_a_row_changed_while_its_batch_is_embedded_is_embedded_again(docs):
    """The text changes (by another connection, committed) while the model reads the old one: the old
    text's vector is not written on the new text, the row stays marked, and the next batch embeds it."""
    import psycopg

    target = docs[1]
    Document.objects.filter(pk=target.pk).update(text="the postal service")
    embedder = Embedder.for_model(Document)

    class Meanwhile:
        """The real embedder; while it embeds, someone edits the row."""

        def __init__(self) -> None:
            self.max_tokens = embedder.max_tokens

        def encode(self, texts):
            with psycopg.connect(database_url(connection.settings_dict), autocommit=True) as other:
                other.execute(
                    "UPDATE vectorstore_document SET text = 'the postal service and its roads' WHERE id = %s",
                    [target.pk],
                )
            return embedder.encode(texts)

    first = worker.embed_batch(Document, embedder=Meanwhile())
    assert (first.taken, first.embedded, first.changed) == (1, 0, 1)
    assert _stale_ids() == {target.pk}
    target.refresh_from_db()
    assert target.text == "the postal service and its roads" and not _matches(target)
    second = worker.embed_batch(Document)
    assert second.embedded == 1 and _stale_ids() == set() and _matches(target)


def test_a_text_that_fails_is_retried_later_then_reported_without_blocking_the_rest(docs):
    """A text the model cannot embed fails alone (the others are embedded), is tried again after a
    backoff, and after MAX_ATTEMPTS waits, reported by the backlog, until its text changes."""
    embedder = Embedder.for_model(Document)

    class Refuses:
        max_tokens = embedder.max_tokens

        def encode(self, texts):
            if any("poison" in t for t in texts):
                raise ValueError("this text poisons the model")
            return embedder.encode(texts)

    for doc, text in zip(docs[:3], ("poison pill", "a harbour survey", "the mint's silver"), strict=True):
        Document.objects.filter(pk=doc.pk).update(text=text)
    report = worker.embed_batch(Document, embedder=Refuses())
    assert (report.embedded, report.failed) == (2, 1) and "poisons the model" in report.errors[0]
    mark = StaleVector.objects.get(row_id=docs[0].pk)
    assert mark.attempts == 1 and mark.next_try > timezone.now() and "poisons" in mark.error
    assert worker.embed_batch(Document, embedder=Refuses()).taken == 0  # not due yet
    for attempt in range(2, worker.MAX_ATTEMPTS + 1):
        StaleVector.objects.filter(pk=mark.pk).update(next_try=timezone.now() - timedelta(seconds=1))
        assert worker.embed_batch(Document, embedder=Refuses()).failed == 1
        assert StaleVector.objects.get(pk=mark.pk).attempts == attempt
    left = backlog(Document)
    assert (left["stale"], left["failed"], left["due"]) == (1, 1, 0)
    Document.objects.filter(pk=docs[0].pk).update(text="a cure for the poison, at last")
    assert StaleVector.objects.get(row_id=docs[0].pk).attempts == 0  # a new text: tried afresh
    assert worker.embed_batch(Document).embedded == 1 and _stale_ids() == set()


def _backlog_of(n: int) -> list[int]:
    vectors = unit_vectors(n, 384, seed=3)
    made = Document.objects.bulk_create(
        Document(text=f"{TEXTS[i % 4]}, number {i}", embedding=v) for i, v in enumerate(vectors)
    )
    ids = [d.pk for d in made]
    with connection.cursor() as cursor:  # by hand, as another service would: the texts change
        cursor.execute(
            "UPDATE vectorstore_document SET text = text || ' (revised)' WHERE id = ANY(%s)", [ids]
        )
    assert _stale_ids() == set(ids)
    return ids


def _worker(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "embed_worker", *args, "--json"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _env(clean_env: dict) -> dict:
    return {**clean_env, "DATABASE_URL": database_url(connection.settings_dict), "HF_HUB_OFFLINE": "1"}


def _wait(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_workers_share_one_backlog_and_embed_each_row_once(clean_env):
    """Two embed_worker processes, both up and waiting, then a backlog written behind the site's back:
    woken by the triggers' NOTIFY, they embed it with no row embedded twice (their counts add up to the
    backlog), and every vector is the model's own for its text."""
    procs = [_worker("--batch-size", "4", "--max-seconds", "600", env=_env(clean_env)) for _ in range(2)]
    try:
        _wait(lambda: EmbedWorker.objects.count() == 2, "both workers to start")
        ids = _backlog_of(160)
        _wait(lambda: not _stale_ids(), "the backlog to be embedded")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)
    counts = sorted(EmbedWorker.objects.values_list("rows", flat=True))
    # Each row once: the workers' counts add up to the backlog (which of them took more is the scheduler's).
    assert len(counts) == 2 and sum(counts) == 160, counts
    assert all(_matches(d) for d in Document.objects.filter(pk__in=ids[::40]))


def test_a_worker_killed_mid_batch_loses_nothing_and_the_next_run_finishes(clean_env):
    """SIGKILL while the worker is in its batches: nothing it held stays claimed (its locks go with its
    connection), and `embed_worker --once` right after finishes every row, each matching its text."""
    ids = _backlog_of(400)
    proc = _worker("--batch-size", "16", env=_env(clean_env))
    deadline = time.monotonic() + 300
    while len(_stale_ids()) == 400:  # wait until it has written some (observed, not slept on)
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    left = _stale_ids()
    assert 0 < len(left) < 400
    rerun = _worker("--once", env=_env(clean_env))
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["embedded"] == len(left)
    assert _stale_ids() == set()
    assert all(_matches(d) for d in Document.objects.filter(pk__in=[*list(left)[:5], ids[0], ids[-1]]))


def test_deferred_save_and_api_write_return_at_once_and_the_worker_embeds(settings, client, writer_token):
    """EMBED_ON_SAVE "deferred": save() and POST /api/documents write the text without embedding it (the
    row is marked, and has no vector yet, or its old one), /api/health shows the backlog and search flags
    the hit as stale; the worker embeds them, passages too."""
    settings.VECTORSTORE = {**settings.VECTORSTORE, "EMBED_ON_SAVE": "deferred"}
    new = Document.objects.create(text="a lighthouse on the northern cape")
    assert new.embedding is None
    posted = client.post(
        "/api/documents",
        [{"text": "railroads across the continent", "external_id": "api-1"}],
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {writer_token}",
    )
    assert posted.status_code == 201, posted.content
    api_doc = Document.objects.get(external_id="api-1")
    assert api_doc.embedding is None
    settings.VECTORSTORE = {**settings.VECTORSTORE, "EMBED_ON_SAVE": "inline"}
    old = Document.objects.create(text="the tariff on imported iron")
    settings.VECTORSTORE = {**settings.VECTORSTORE, "EMBED_ON_SAVE": "deferred"}
    old.text = "the tariff on imported wool"
    old.save()
    assert _stale_ids() == {new.pk, api_doc.pk, old.pk}
    health = client.get("/api/health").json()["freshness"]
    assert health["stale"] == 3 and health["due"] == 3 and health["oldest_seconds"] >= 0
    hits = client.post("/api/search", {"query": "tariff on wool", "k": 5}, content_type="application/json")
    stale = {h["id"]: h["stale"] for h in hits.json()["results"]}
    assert stale[old.pk] is True
    call_command("embed_worker", "--once")
    assert _stale_ids() == set() and all(_matches(d) for d in (new, api_doc, old))
    assert client.get("/api/health").json()["freshness"]["stale"] == 0


def test_the_admin_shows_stale_rows_and_the_check_warns_of_a_backlog_no_worker_takes(admin_client, docs):
    """The admin's list says which rows wait for a vector, and filters them; a backlog with no worker
    seen for WORKER_MISSING_AFTER is the system check W040, and a worker's heartbeat quiets it."""
    from vectorstore.checks import check_embedding_backlog

    Document.objects.filter(pk=docs[2].pk).update(text="changed behind the site's back")
    page = admin_client.get("/admin/vectorstore/document/", {"vector": "stale"}).content.decode()
    assert page.count('name="_selected_action"') == 1 and f'value="{docs[2].pk}"' in page
    assert 'alt="False"' in page  # the "vector up to date" column
    (warning,) = check_embedding_backlog(databases=["default"])
    assert warning.id == "vectorstore.W040" and "embed_worker" in warning.hint
    worker.embed_batch(Document)
    Document.objects.filter(pk=docs[3].pk).update(text="changed again")
    assert check_embedding_backlog(databases=["default"]) == []  # a worker ran just now
