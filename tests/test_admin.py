"""The Document admin with the real model: semantic search, vector summary, similar documents, re-embed."""

import re

import numpy as np
import pytest

from tests.helpers import sotu_passages
from vectorstore import search
from vectorstore.embedding import Embedder
from vectorstore.loading import ingest
from vectorstore.models import Document

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/vectorstore/document/"


@pytest.fixture
def passages():
    ingest.load(sotu_passages(slice(300, 360)), progress=False)
    return Document.objects.order_by("pk")


def _row_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'name="_selected_action" value="(\d+)"', html)]


def test_semantic_search_ranks_by_distance(admin_client, passages):
    target = passages[17]
    response = admin_client.get(CHANGELIST, {"q": target.text[:150]})
    html = response.content.decode()
    assert response.status_code == 200
    ids = _row_ids(html)
    assert ids[0] == target.pk
    distances = [float(d) for d in re.findall(r'<td class="field-distance_shown">([0-9.]+)</td>', html)]
    assert distances == sorted(distances) and len(distances) == len(ids)


def test_plain_text_search_on_request(admin_client, passages):
    word = "Congress"
    response = admin_client.get(CHANGELIST, {"q": word, "search_mode": "text"})
    ids = _row_ids(response.content.decode())
    assert ids and set(ids) == set(passages.filter(text__icontains=word).values_list("pk", flat=True))
    assert re.findall(r'field-distance_shown">([0-9.]+)<', response.content.decode()) == []  # no ranking


def test_change_page_summarises_the_vector_and_links_similar_documents(admin_client, passages):
    doc = passages[3]
    html = admin_client.get(f"{CHANGELIST}{doc.pk}/change/").content.decode()
    assert "384 dimensions, norm 1.0000" in html
    assert 'name="embedding"' not in html
    links = re.findall(r"href='/admin/vectorstore/document/(\d+)/change/'", html)
    assert len(links) == 5 and str(doc.pk) not in links


def test_saving_changed_text_re_embeds(admin_client, passages):
    doc = passages[5]
    new_text = "Railroads will soon cross the whole continent from ocean to ocean."
    response = admin_client.post(
        f"{CHANGELIST}{doc.pk}/change/",
        {
            "text": new_text,
            "external_id": doc.external_id,
            "category": doc.category,
            "metadata": "{}",
            "created_at_0": "2020-01-01",
            "created_at_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    doc.refresh_from_db()
    assert doc.text == new_text
    assert np.allclose(np.asarray(doc.embedding), Embedder().encode([new_text])[0], atol=1e-5)


@pytest.mark.parametrize(
    ("field", "value"),
    [("metadata", '{"k": "a\\u0000b"}'), ("metadata", '{"k": "\\ud800"}'), ("text", "nul \x00 here")],
)
def test_what_postgres_cannot_store_is_a_form_error(admin_client, passages, field, value):
    doc = passages[6]
    data = {
        "text": doc.text,
        "external_id": doc.external_id,
        "category": doc.category,
        "metadata": "{}",
        "created_at_0": "2020-01-01",
        "created_at_1": "00:00:00",
        field: value,
    }
    response = admin_client.post(f"{CHANGELIST}{doc.pk}/change/", data)
    assert response.status_code == 200  # the form again, with its error
    assert response.context["adminform"].form.errors[field]
    assert Document.objects.get(pk=doc.pk).text == doc.text


def test_reembed_action(admin_client, passages):
    chosen = list(passages[:3])
    Document.objects.filter(pk__in=[d.pk for d in chosen]).update(embedding=[0.5] * 384)
    admin_client.post(CHANGELIST, {"action": "reembed", "_selected_action": [d.pk for d in chosen]})
    expected = Embedder().encode([d.text for d in chosen])
    for doc, vector in zip(chosen, expected, strict=True):
        doc.refresh_from_db()
        assert np.allclose(np.asarray(doc.embedding), vector, atol=1e-5)


def test_api_tokens_are_listed_and_revoked_in_the_admin(admin_client, django_user_model):
    """The admin lists tokens by their hint (never a key) and its revoke action ends them: the key no
    longer authenticates."""
    from vectorstore.models import ApiToken

    user = django_user_model.objects.create_user("ingester")
    token, key = ApiToken.issue(user, "nightly import")
    page = admin_client.get("/admin/vectorstore/apitoken/")
    assert page.status_code == 200
    assert token.hint in page.content.decode() and key not in page.content.decode()
    assert admin_client.get("/admin/vectorstore/apitoken/add/").status_code == 403
    assert ApiToken.user_for(key) == user
    response = admin_client.post(
        "/admin/vectorstore/apitoken/",
        {"action": "revoke", "_selected_action": [token.pk]},
        follow=True,
    )
    assert response.status_code == 200 and "Revoked 1 token" in response.content.decode()
    assert ApiToken.user_for(key) is None


def test_a_model_that_cannot_embed_is_a_form_message_not_a_500(admin_client, settings):
    """With an embedding model that cannot be loaded (as with one of another dimension, or none
    installed), the Add page answers with the reason on the text field and stores nothing; the change
    list's search falls back to plain text with a warning."""
    settings.VECTORSTORE = {**settings.VECTORSTORE, "MODEL": "/nonexistent/embedding-model"}
    response = admin_client.post(
        f"{CHANGELIST}add/",
        {
            "text": "A new passage",
            "category": "",
            "metadata": "{}",
            "created_at_0": "2020-01-01",
            "created_at_1": "00:00:00",
        },
    )
    assert response.status_code == 200
    assert "could not be embedded" in response.content.decode()
    assert not Document.objects.filter(text="A new passage").exists()
    search = admin_client.get(CHANGELIST, {"q": "railroads"})
    assert search.status_code == 200 and "plain text search instead" in search.content.decode()


def test_hybrid_and_diverse_search_modes(admin_client, passages):
    """Hybrid puts a passage holding the query's rare word first though its vector is far; diverse (MMR)
    keeps the nearest passage first and shows the search's own order, not the distance's."""
    far = -search.embed_query("zyzzogeton lighthouse")
    keyword = Document.objects.create(text="Zyzzogeton lighthouse appropriations", embedding=far)
    query = {"q": "zyzzogeton lighthouse"}
    hybrid = _row_ids(admin_client.get(CHANGELIST, {**query, "search_mode": "hybrid"}).content.decode())
    assert hybrid[0] == keyword.pk
    assert _row_ids(admin_client.get(CHANGELIST, query).content.decode())[0] != keyword.pk

    target = passages[17]
    html = admin_client.get(CHANGELIST, {"q": target.text[:150], "search_mode": "diverse"}).content.decode()
    diverse = _row_ids(html)
    assert diverse[0] == target.pk and len(diverse) == len(set(diverse)) > 10
    distances = [float(d) for d in re.findall(r'<td class="field-distance_shown">([0-9.]+)</td>', html)]
    assert distances != sorted(distances)  # MMR's order: a near duplicate waits behind a different passage


def test_the_change_list_fits_an_archive_of_two_centuries(admin_client):
    """No date hierarchy of every year above the results, no "Today / Past 7 days" for dated archives:
    the created filter offers the decades the documents span, and one narrows the list to its years."""
    ingest.load(sotu_passages(list(range(0, 3954, 40))), progress=False)  # 1790 to 2021
    passages = list(Document.objects.all())
    response = admin_client.get(CHANGELIST)
    html = response.content.decode()
    assert 'class="xfull"' not in html and "Past 7 days" not in html and "date_hierarchy" not in html
    years = sorted({d.created_at.year for d in passages})
    decade = years[0] // 10 * 10
    assert f"?created={decade}-{decade + 9}" in html and f"{decade}s" in html
    narrowed = _row_ids(admin_client.get(CHANGELIST, {"created": f"{decade}-{decade + 9}"}).content.decode())
    assert narrowed and set(narrowed) == {d.pk for d in passages if decade <= d.created_at.year <= decade + 9}


def test_an_external_id_typed_in_the_search_box_comes_first(admin_client, passages):
    """The semantic search box given an external id puts that document first, whatever its meaning."""
    target = passages[41]
    ids = _row_ids(admin_client.get(CHANGELIST, {"q": target.external_id}).content.decode())
    assert ids[0] == target.pk and len(ids) > 1


def test_plain_text_search_falls_back_to_the_most_words(admin_client, passages):
    """Plain text search with words no document holds all of shows those holding the most of them (and
    says so), where it used to show nothing."""
    words = ["Congress", "zyzzogeton"]
    response = admin_client.get(CHANGELIST, {"q": " ".join(words), "search_mode": "text"})
    html = response.content.decode()
    ids = _row_ids(html)
    assert ids and "No document holds every word" in html
    assert set(ids) == {d.pk for d in passages if "congress" in d.text.lower()}
