"""Changing the embedding model while the site serves, against the real PostgreSQL and real models (the
bundled all-MiniLM-L6-v2, and models made here from it: a 256-dimension and a 384-dimension head):
a table records its model; a changed setting is caught by the check and never mixes models in a search;
reembed moves a table with searches and writes running, survives SIGKILL and goes on where it stopped,
swaps back (--rollback) and drops the old vectors; passages move with their documents; a host's own
model follows the documented order for another dimension; a load of another model's vectors is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections
from django.test import override_settings

from tests.helpers import ROOT, TOPICS, database_url, small_model
from tests.testapp.models import LongArticle
from vectorstore import search
from vectorstore.checks import check_vector_columns
from vectorstore.embedding import Embedder, bundled_model_path
from vectorstore.models import Document, EmbeddingRecord
from vectorstore.reembed import record, service, shadow

pytestmark = pytest.mark.django_db(transaction=True)  # workers, threads and subprocesses see commits

TEXTS = TOPICS


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return {"256": small_model(base / "m256", 256, seed=1), "384": small_model(base / "m384", 384, seed=2)}


def _column_dims(model) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'embedding'",
            [model._meta.db_table],
        )
        return cursor.fetchone()[0]


@pytest.fixture(autouse=True)
def _restore_tables():
    """The tables as their migrations made them (384 dimensions, no shadow), whatever a test moved."""
    yield
    record.forget()
    from django.db import transaction

    for model in (Document, LongArticle):
        with transaction.atomic():
            shadow.drop(model, "default")
            for table in shadow.tables(model):
                table._default_manager.all().delete()
        for table in shadow.tables(model):  # apart: the deletes' deferred foreign-key checks are done
            with transaction.atomic():
                if _column_dims(table) != 384:
                    with connection.cursor() as cursor:
                        cursor.execute(
                            f'ALTER TABLE "{table._meta.db_table}" ALTER COLUMN embedding TYPE vector(384)'
                        )
    EmbeddingRecord.objects.all().delete()
    record.forget()


def _encode(path: str | None, texts: list[str]) -> np.ndarray:
    return Embedder(model=path or bundled_model_path()).encode(texts)


def _stored(model=Document) -> dict[int, np.ndarray]:
    return {pk: np.asarray(v, np.float32) for pk, v in model.objects.values_list("pk", "embedding")}


def _assert_vectors_are(path: str | None, model=Document) -> None:
    rows = list(model.objects.order_by("pk"))
    expected = _encode(path, [d.text for d in rows])
    for doc, vector in zip(rows, expected, strict=True):
        assert np.allclose(np.asarray(doc.embedding, np.float32), vector, atol=1e-5), doc.text


def test_a_table_records_its_model_and_a_changed_setting_is_caught(models_dir):
    """The first write records the model; with MODEL changed, the check warns, and searches and saves go
    on with the recorded model (never a query of one model against vectors of another)."""
    docs = [Document.objects.create(text=t) for t in TEXTS[:4]]
    stored = EmbeddingRecord.objects.get(db_table="vectorstore_document")
    assert stored.model == "" and stored.dimensions == 384 and stored.fingerprint == record.fingerprint("")
    with override_settings(VECTORSTORE={"MODEL": models_dir["384"], "DIMENSIONS": 384}):
        record.forget()
        warnings = [w for w in check_vector_columns(databases=["default"]) if w.obj is Document]
        assert [w.id for w in warnings] == ["vectorstore.W050"]
        assert "all-MiniLM-L6-v2" in warnings[0].msg and "reembed" in warnings[0].hint
        assert np.allclose(search.embed_query(TEXTS[0], Document), _encode(None, [TEXTS[0]])[0], atol=1e-5)
        hit = search.search(TEXTS[0], k=1).hits[0]
        assert hit.values["id"] == docs[0].pk and hit.distance == pytest.approx(0, abs=1e-5)
        new = Document.objects.create(text=TEXTS[5])
        assert np.allclose(new.embedding, _encode(None, [TEXTS[5]])[0], atol=1e-5)


def test_a_load_of_another_models_vectors_is_refused_naming_both(models_dir, tmp_path):
    Document.objects.create(text=TEXTS[0])
    source = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": TEXTS[1:4]}), source)
    out = tmp_path / "vectors.parquet"
    call_command("embed_parquet", str(source), str(out), "--embedding-model", models_dir["384"])
    with pytest.raises(CommandError, match=r"all-MiniLM-L6-v2.*m384.*reembed"):
        call_command("bulk_copy", str(out))
    assert Document.objects.count() == 1  # nothing of the load written


def test_reembed_to_another_dimension_with_searches_and_writes_running(models_dir):
    """Searches of stored texts find themselves at distance 0 all along (one model's query against the
    same model's vectors); writes meanwhile end with the new model's vectors; then rollback, drop-old."""
    docs = [Document.objects.create(text=t) for t in TEXTS]
    new_path = models_dir["256"]
    failures: list[str] = []
    answers = {"before": 0, "after": 0}
    written: list[int] = []
    stop = threading.Event()

    def searcher() -> None:
        i = 0
        try:
            while not stop.is_set():
                text = TEXTS[i % len(TEXTS)]
                try:
                    result = search.search(text, k=1)
                    hit = result.hits[0]
                    if hit.values["text"] != text or hit.distance > 1e-4:
                        failures.append(f"{text!r}: {hit.values['text']!r} at {hit.distance}")
                    version = record.current(Document).version
                    answers["after" if record.current(Document).dimensions == 256 else "before"] += 1
                    assert version >= 1
                    if i % 5 == 0:  # a write meanwhile, by save()
                        doc = Document.objects.create(text=f"written meanwhile number {i}")
                        written.append(doc.pk)
                        doc.text = f"written and edited meanwhile number {i}"
                        doc.save()
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                i += 1
        finally:
            connections.close_all()

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while answers["before"] < 3 and not failures and time.monotonic() < deadline:
            time.sleep(0.05)  # until some searches were answered before the swap (observed, not hoped)
        report = service.reembed(Document, model=new_path, progress=False)
        deadline = time.monotonic() + 30
        while answers["after"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert report.swapped and report.dimensions == 256 and report.documents >= len(TEXTS)
    assert answers["before"] > 0 and answers["after"] >= 5
    assert _column_dims(Document) == 256 and written
    _assert_vectors_are(new_path)
    r = record.read(Document)
    assert (r.dimensions, r.fingerprint, r.shadow_state) == (256, record.fingerprint(new_path), "previous")

    # Written after the swap: the kept old vectors follow too, so the rollback is exact.
    docs[0].text = "a text changed after the swap"
    docs[0].save()
    Document.objects.filter(pk=docs[1].pk).update(text="changed by update() after the swap")
    back = service.reembed(Document, rollback=True, progress=False)
    assert back.swapped and back.rolled_back and _column_dims(Document) == 384
    record.forget()
    _assert_vectors_are(None)
    hit = search.search("a text changed after the swap", k=1).hits[0]
    assert hit.values["id"] == docs[0].pk and hit.distance == pytest.approx(0, abs=1e-5)
    dropped = service.drop_old(Document)
    assert "dropped" in dropped.note and not shadow.exists(Document, "default")
    with pytest.raises(service.ReembedError, match="nothing to roll back"):
        service.reembed(Document, rollback=True, progress=False)


def test_reembed_killed_midway_goes_on_where_it_stopped(models_dir):
    """SIGKILL of manage.py reembed after some chunks: what it wrote stays, nothing swapped; run again
    (two workers) it embeds only the rest and swaps. Each row its own chunk (ids 1,024 apart)."""
    rows = 64  # enough that the kill lands mid-way: each row is a chunk of its own
    ids = [(i + 1) * shadow.CHUNK for i in range(rows)]
    for pk, i in zip(ids, range(rows), strict=True):
        Document.objects.create(pk=pk, text=f"{TEXTS[i % len(TEXTS)]}, item {i}")
    new_path = models_dir["384"]
    env = {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "HF_HUB_OFFLINE": "1",
    }
    child = subprocess.Popen(
        [sys.executable, "manage.py", "reembed", "--embedding-model", new_path, "--batch-size", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    filled = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if shadow.exists(Document, "default"):
            filled = rows - shadow.empty_rows(Document, "default")
            if filled >= 3:
                break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert filled >= 3, child.stderr.read().decode()[-2000:]
    left = shadow.empty_rows(Document, "default")
    assert 0 < left < rows  # killed mid-way; what it wrote stays
    assert record.read(Document).fingerprint == record.fingerprint("")  # not swapped
    report = service.reembed(Document, model=new_path, workers=2, progress=False)
    assert report.swapped and report.documents == left  # only the rest, shared by two workers
    record.forget()
    _assert_vectors_are(new_path)


def test_passages_move_with_their_documents_on_a_host_model(models_dir):
    """A host's model that keeps passages: reembed moves its passages' vectors too (same cut)."""
    long_text = " ".join(
        f"{t}, and then the next sentence of the message, number {i}." for i, t in enumerate(TEXTS * 6)
    )
    LongArticle.objects.create(text=long_text)
    LongArticle.objects.create(text=TEXTS[0])
    passage = LongArticle._passage_model
    before = passage.objects.count()
    assert before > 2
    new_path = models_dir["384"]
    report = service.reembed(LongArticle, model=new_path, progress=False)
    assert report.swapped and report.passages == before
    _assert_vectors_are(new_path, LongArticle)
    rows = list(passage.objects.select_related("document").order_by("pk"))
    spans = [p.document.text[p.start : p.end] for p in rows]
    for p, vector in zip(rows, _encode(new_path, spans), strict=True):
        assert np.allclose(np.asarray(p.embedding, np.float32), vector, atol=1e-5)
    hit = search.search(TEXTS[0], k=1, queryset=LongArticle.objects.all()).hits[0]
    assert hit.distance == pytest.approx(0, abs=1e-5)


def test_another_dimension_in_the_documented_order_on_a_host_model(models_dir):
    """A host model at 384: reembed to a 256 model, then the field's migration (AlterField to 256) runs on
    the moved column without a rewrite of the vectors; before reembed the same migration fails."""
    from django.db import transaction
    from pgvector.django import VectorField

    LongArticle.objects.create(text=TEXTS[0])
    old = LongArticle._meta.get_field("embedding")
    new = VectorField(dimensions=256, null=True, blank=True)
    new.set_attributes_from_name("embedding")
    new.model = LongArticle
    with (
        pytest.raises(Exception, match="dimensions"),
        transaction.atomic(),
        connection.schema_editor(atomic=False) as editor,
    ):
        editor.alter_field(LongArticle, old, new)
    service.reembed(LongArticle, model=models_dir["256"], progress=False)
    warnings = [w.id for w in check_vector_columns(databases=["default"]) if w.obj is LongArticle]
    assert "vectorstore.W051" in warnings  # the field is still 384: the check says what comes next
    with connection.schema_editor() as editor:
        editor.alter_field(LongArticle, old, new)
    assert _column_dims(LongArticle) == 256
    hit = search.search(TEXTS[0], k=1, queryset=LongArticle.objects.all()).hits[0]
    assert hit.distance == pytest.approx(0, abs=1e-5)


def test_the_apps_document_follows_dimensions_from_the_environment(clean_env, models_dir):
    """VECTORSTORE_MODEL and VECTORSTORE_DIMENSIONS set the site's; the app's Document (and its
    migrations) follow DIMENSIONS, so the site writes no migration of its own."""
    env = {
        **clean_env,
        "VECTORSTORE_MODEL": models_dir["256"],
        "VECTORSTORE_DIMENSIONS": "256",
        "DJANGO_SETTINGS_MODULE": "project.settings",
    }
    code = (
        "import django; django.setup();"
        "from vectorstore.models import Document; from vectorstore import conf;"
        "print(Document._meta.get_field('embedding').dimensions, conf.dimensions(), conf.model_name())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["256", "256", models_dir["256"]], out.stderr[-2000:]
    check = subprocess.run(
        [sys.executable, "manage.py", "makemigrations", "vectorstore", "--check", "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_reembed_json_summary_and_nothing_to_do(models_dir, capsys):
    Document.objects.create(text=TEXTS[0])
    call_command("reembed", "--json")
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["swapped"] is False and "nothing to do" in data["note"]
    with pytest.raises(CommandError, match="exclude each other"):
        call_command("reembed", "--rollback", "--drop-old")


def test_a_fill_writes_nothing_once_another_reembed_swapped(models_dir):
    """A worker still filling when another (another machine's) swapped: its writes are refused in their
    own transaction, nothing lands in what is now the previous model's column."""
    Document.objects.create(text=TEXTS[0])
    path = models_dir["384"]
    assert service._prepare(Document, "default", path, 384, record.fingerprint(path)) == "new"
    EmbeddingRecord.objects.filter(db_table="vectorstore_document").update(shadow_state="previous")
    with pytest.raises(record.ModelChanged):
        shadow.fill(Document, lambda texts: np.zeros((len(texts), 384), np.float32), "default")
    assert shadow.empty_rows(Document, "default") == 1
