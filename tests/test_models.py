"""The document models against the real PostgreSQL: vectors, constraints, generated columns, indexes."""

import math

import numpy as np
import pytest
from django.db import DataError, IntegrityError, connection, transaction
from pgvector.django import CosineDistance, L2Distance

from tests.helpers import unit_vectors
from tests.testapp.models import HostDocument
from vectorstore.models import Document

pytestmark = pytest.mark.django_db


def test_vector_round_trips_exactly():
    """A float32 vector comes back from the database bit for bit."""
    vector = unit_vectors(1, 384, seed=1)[0]
    doc = Document.objects.create(text="round trip", embedding=vector)
    stored = Document.objects.get(pk=doc.pk).embedding
    assert len(stored) == 384
    assert np.array_equal(np.asarray(stored, dtype=np.float32), vector)


def test_wrong_dimension_is_refused():
    """A 3-number vector in a vector(384) column is refused, naming both sizes."""
    with pytest.raises(DataError, match="expected 384 dimensions, not 3"), transaction.atomic():
        Document.objects.create(text="short", embedding=[1.0, 2.0, 3.0])
    assert Document.objects.count() == 0


def test_nan_is_refused():
    """A vector with NaN is refused by pgvector, and nothing is stored."""
    vector = [0.1] * 384
    vector[7] = math.nan
    with pytest.raises(DataError, match="NaN not allowed in vector"), transaction.atomic():
        Document.objects.create(text="nan", embedding=vector)
    assert Document.objects.count() == 0


def test_external_id_unique_but_optional():
    """Documents without an external id coexist; two with the same id do not."""
    v = unit_vectors(3, 384)
    Document.objects.create(text="a", embedding=v[0])
    Document.objects.create(text="b", embedding=v[1])
    Document.objects.create(text="c", embedding=v[2], external_id="B00X")
    with pytest.raises(IntegrityError), transaction.atomic():
        Document.objects.create(text="d", embedding=v[0], external_id="B00X")
    assert Document.objects.count() == 3


def test_search_vector_is_generated_by_postgres():
    """The tsvector column follows the text on every write, stemmed in English."""
    doc = Document.objects.create(text="Tariffs on imported goods", embedding=unit_vectors(1, 384)[0])
    assert Document.objects.filter(pk=doc.pk, search_vector="tariff").exists()
    Document.objects.filter(pk=doc.pk).update(text="Railroads across the continent")
    assert not Document.objects.filter(pk=doc.pk, search_vector="tariff").exists()
    assert Document.objects.filter(pk=doc.pk, search_vector="railroad").exists()


def _load(model, n: int, dims: int) -> np.ndarray:
    vectors = unit_vectors(n, dims, seed=2)
    model.objects.bulk_create(model(text=f"doc {i}", embedding=v) for i, v in enumerate(vectors))
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {model._meta.db_table}")
    return vectors


def test_hnsw_index_serves_order_by_distance_limit():
    """EXPLAIN shows the HNSW index for ORDER BY cosine distance LIMIT k, with the planner's own choice."""
    vectors = _load(Document, 2000, 384)
    query = Document.objects.order_by(CosineDistance("embedding", vectors[0]))[:5]
    plan = query.explain()
    assert "Index Scan using vectorstore_document_hnsw" in plan, plan
    assert query[0].text == "doc 0"  # the vector itself is its own nearest neighbour


def test_ivfflat_index_from_migration_serves_its_metric():
    """The host model's migration-made IVFFlat (L2) index serves L2 queries; cosine ones use its HNSW."""
    vectors = _load(HostDocument, 2000, 8)
    # 8-number rows are so cheap to scan that the planner may rightly prefer a
    # sequential scan; forbid it, to see which index each metric can use.
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    l2 = HostDocument.objects.order_by(L2Distance("embedding", vectors[3]))[:5]
    assert "Index Scan using testapp_hostdoc_l2_ivf" in l2.explain()
    cosine = HostDocument.objects.order_by(CosineDistance("embedding", vectors[3]))[:5]
    assert "Index Scan using testapp_hostdocument_hnsw" in cosine.explain()
    assert l2[0].text == "doc 3"


def test_host_model_has_its_own_dimension():
    """A subclass of AbstractDocument gets its own table with its own vector size."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'testapp_hostdocument'::regclass AND attname = 'embedding'"
        )
        assert cursor.fetchone()[0] == "vector(8)"
    with pytest.raises(DataError, match="expected 8 dimensions"), transaction.atomic():
        HostDocument.objects.create(text="x", embedding=unit_vectors(1, 384)[0])


def test_saving_a_text_embeds_it_in_the_orm_not_only_in_the_admin():
    """objects.create(text=...) embeds with the configured model; an edited text gets a new vector (also
    when the vector was deferred); a vector given with the text, or with a new text, is kept as given;
    other edits do not embed again."""
    from vectorstore.embedding import Embedder

    model = Embedder(dimensions=384)
    doc = Document.objects.create(text="The tariff on imported iron")
    assert np.allclose(doc.embedding, model.encode(["The tariff on imported iron"])[0], atol=1e-5)

    doc = Document.objects.get(pk=doc.pk)
    doc.text = "Railroads across the continent"
    doc.save()
    stored = Document.objects.get(pk=doc.pk)
    assert np.allclose(stored.embedding, model.encode(["Railroads across the continent"])[0], atol=1e-5)

    deferred = Document.objects.defer("embedding").get(pk=doc.pk)
    deferred.text = "A canal between two oceans"
    deferred.save()
    canal = model.encode(["A canal between two oceans"])[0]
    assert np.allclose(Document.objects.get(pk=doc.pk).embedding, canal, atol=1e-5)

    given = unit_vectors(1, 384, seed=4)[0]
    mine = Document.objects.create(text="anything", embedding=given)
    mine.text, mine.embedding = "something else", given[::-1].copy()
    mine.save()
    assert np.allclose(Document.objects.get(pk=mine.pk).embedding, given[::-1], atol=1e-6)

    untouched = Document.objects.get(pk=doc.pk)
    untouched.category = "transport"
    untouched.save()
    assert np.allclose(Document.objects.get(pk=doc.pk).embedding, canal, atol=1e-5)


def test_a_model_of_another_dimension_says_so_instead_of_embedding_wrongly():
    """The 8-dimension host model with the 384-dimension default model: a clear EmbeddingError naming
    both sizes, and nothing stored."""
    from vectorstore.embedding import EmbeddingError

    with pytest.raises(EmbeddingError, match="384") as raised:
        HostDocument.objects.create(text="no vector for me")
    assert "8" in str(raised.value)
    assert not HostDocument.objects.exists()


def test_a_model_with_its_own_embedding_model_embeds_with_it_everywhere(tmp_path, monkeypatch):
    """HostDocument (vector(8)) naming an 8-dimension model: saving, the API's write path and text search
    all embed with that model (the system check passes), never with the 384-dimension default."""
    from tests.helpers import small_model
    from vectorstore import search
    from vectorstore.checks import check_embedding_models
    from vectorstore.embedding import Embedder
    from vectorstore.loading import writes

    path = small_model(tmp_path / "eight", 8)
    monkeypatch.setattr(HostDocument, "embedding_model", path, raising=False)
    assert check_embedding_models() == []
    eight = Embedder(model=path)
    saved = HostDocument.objects.create(text="Railroads across the continent")
    assert np.allclose(saved.embedding, eight.encode(["Railroads across the continent"])[0], atol=1e-5)
    (pk,) = writes.insert_documents([{"text": "The tariff on imported iron"}], model=HostDocument)
    stored = HostDocument.objects.get(pk=pk).embedding
    assert np.allclose(stored, eight.encode(["The tariff on imported iron"])[0], atol=1e-5)
    hit = search.search("The tariff on imported iron", k=1, queryset=HostDocument.objects.all()).hits[0]
    assert hit.values["id"] == pk and hit.distance == pytest.approx(0, abs=1e-5)
    Document.objects.create(text="The tariff on imported iron")  # the default model's query, cached apart
    assert search.search("The tariff on imported iron", k=1).hits[0].distance == pytest.approx(0, abs=1e-5)


def test_an_edited_text_gets_a_new_vector_however_the_instance_was_refreshed_or_copied():
    """Change detection compares vectors by value: after refresh_from_db (whole or of some fields), a
    copy, a deep copy, a pickle round trip, a ModelForm that posts the stored vector back, a serializer
    setting the same vector again, or a deferred vector loaded on access, an edited text is embedded
    again; a different vector set with the text is still the caller's."""
    import copy
    import pickle

    from django import forms

    from vectorstore.embedding import Embedder

    model = Embedder(dimensions=384)

    def edited(doc, text: str) -> bool:
        doc.text = text
        doc.save()
        stored = np.asarray(Document.objects.get(pk=doc.pk).embedding)
        return np.allclose(stored, model.encode([text])[0], atol=1e-5)

    a = Document.objects.create(text="The tariff on imported iron")
    a.refresh_from_db()
    assert edited(a, "Railroads across the continent")  # the case
    a.refresh_from_db(fields=["text", "embedding"])
    assert edited(a, "A canal between two oceans")
    fresh = Document.objects.get(pk=a.pk)
    assert edited(copy.copy(fresh), "Gold and silver coinage")
    assert edited(copy.deepcopy(Document.objects.get(pk=a.pk)), "The war with Mexico")
    assert edited(pickle.loads(pickle.dumps(Document.objects.get(pk=a.pk))), "Indian treaties")

    class DocumentForm(forms.ModelForm):
        class Meta:
            model = Document
            fields = ["text", "embedding"]

    stored = Document.objects.get(pk=a.pk)
    posted = {"text": "Pensions for the veterans", "embedding": str(list(map(float, stored.embedding)))}
    form = DocumentForm(data=posted, instance=stored)
    assert form.is_valid(), form.errors
    form.save()
    saved = np.asarray(Document.objects.get(pk=a.pk).embedding)
    assert np.allclose(saved, model.encode(["Pensions for the veterans"])[0], atol=1e-5)

    serialized = Document.objects.get(pk=a.pk)
    for name, value in {
        "text": "The national debt",
        "embedding": list(map(float, serialized.embedding)),
    }.items():
        setattr(serialized, name, value)
    serialized.save()
    assert np.allclose(
        Document.objects.get(pk=a.pk).embedding, model.encode(["The national debt"])[0], atol=1e-5
    )

    lazy = Document.objects.defer("embedding").get(pk=a.pk)
    assert lazy.embedding is not None  # loaded on access (Django's refresh_from_db of that field)
    assert edited(lazy, "Civil service reform")

    theirs = Document.objects.get(pk=a.pk)
    given = unit_vectors(1, 384, seed=8)[0]
    theirs.text, theirs.embedding = "something of theirs", given
    theirs.save()
    assert np.allclose(Document.objects.get(pk=a.pk).embedding, given, atol=1e-6)


@pytest.mark.parametrize("how", ["embedded", "list", "numpy", "pgvector", "loaded"])
def test_full_clean_after_every_way_a_vector_arrives(how):
    """full_clean() (what forms and serializers run) passes after each way an instance gets its vector,
    and leaves it a list of the same numbers."""
    from pgvector import Vector

    vector = unit_vectors(1, 384, seed=3)[0]
    given = {"embedded": None, "list": vector.tolist(), "numpy": vector, "pgvector": Vector(vector)}
    doc = Document(text="validated after saving", embedding=given.get(how))
    doc.save()
    if how == "loaded":
        doc = Document.objects.get(pk=doc.pk)
    before = np.asarray(Document.objects.get(pk=doc.pk).embedding, dtype=np.float32)
    doc.full_clean()
    assert isinstance(doc.embedding, list)
    assert np.array_equal(np.asarray(doc.embedding, dtype=np.float32), before)
    doc.text = "validated after saving, then edited"
    doc.save()  # the cleaned list is still the read vector: an edited text is embedded again
    assert not np.array_equal(np.asarray(doc.embedding, dtype=np.float32), before)


def test_full_clean_names_a_wrong_vector_by_field():
    """A vector of the wrong size, or with NaN, is a ValidationError on the field, not a 500."""
    from django.core.exceptions import ValidationError

    doc = Document(text="bad vectors", embedding=np.ones(3, dtype=np.float32))
    with pytest.raises(ValidationError) as exc:
        doc.full_clean()
    assert exc.value.message_dict == {"embedding": ["expected 384 dimensions, got 3"]}
    vector = unit_vectors(1, 384)[0]
    vector[5] = np.nan
    doc.embedding = vector
    with pytest.raises(ValidationError, match="NaN or infinity"):
        doc.full_clean()


def test_full_clean_of_passages_and_a_form_after_saving(settings):
    """A passage (made by save()) and a model form over a saved document validate too."""
    from django import forms

    from tests.testapp.models import LongArticle

    article = LongArticle(text=" ".join(["passage words"] * 400))
    article.save()
    passage = article.passages.first()
    passage.embedding = np.asarray(passage.embedding, dtype=np.float32)
    passage.full_clean()
    Form = forms.modelform_factory(LongArticle, fields=["text", "category", "embedding"])
    typed = "[" + ", ".join(str(float(x)) for x in article.embedding) + "]"
    form = Form(data={"text": article.text, "category": "x", "embedding": typed}, instance=article)
    assert form.is_valid(), form.errors
    form = Form(instance=article, data={"text": "short", "category": "y", "embedding": "[1, two]"})
    assert not form.is_valid()
    assert "not a vector" in form.errors["embedding"][0]
    # Left empty, the vector is the model's of the new text, made on save (or by the worker, deferred).
    form = Form(instance=article, data={"text": "a short text", "category": "y", "embedding": ""})
    assert form.is_valid(), form.errors
    saved = form.save()
    saved.refresh_from_db()
    assert saved.embedding is not None and saved.passages.count() == 1


def test_half_and_bit_values_normalised():
    """The other vector field kinds take numpy arrays and pgvector objects in validation."""
    from pgvector import HalfVector
    from pgvector.django import BitField, HalfVectorField

    from vectorstore.vector_values import python_vector

    half = HalfVectorField(dimensions=3)
    assert half.to_python(python_vector(half, np.array([1, 2, 3], dtype=np.float16))) == [1.0, 2.0, 3.0]
    assert python_vector(half, HalfVector([1, 2, 3])) == [1.0, 2.0, 3.0]
    assert python_vector(BitField(length=4), np.array([True, False, True, True])) == "1011"
