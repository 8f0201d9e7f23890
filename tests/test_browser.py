"""The admin in a real browser: Playwright driving Debian's Chromium against a live server."""

import os
import shutil

import pytest

from tests.helpers import CHROMIUM, ROOT, admin_login, sotu_passages
from vectorstore.loading import ingest
from vectorstore.models import Document

ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not shutil.which(CHROMIUM), reason=f"needs {CHROMIUM} (.ci/run installs Debian's chromium)"
    ),
]


@pytest.mark.django_db(transaction=True)
def test_admin_semantic_search_and_similar_documents(live_server, admin_user, monkeypatch):
    """Log in, search by meaning in the change list, open the top result, follow a similar document."""
    ingest.load(sotu_passages(slice(300, 360)), progress=False)
    target = Document.objects.get(external_id="sotu-1808-jefferson-021")
    # Playwright's sync API runs an event loop in this thread; the ORM calls left are set-up and teardown.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser, page = admin_login(p, live_server.url, "admin", "password")

        page.goto(f"{live_server.url}/admin/vectorstore/document/")
        page.fill("#searchbar", "soldiers guarding the northern frontier to enforce the embargo laws")
        page.press("#searchbar", "Enter")
        rows = page.locator("#result_list tbody tr")
        expect(rows.first).to_be_visible()
        assert rows.first.locator("td.field-external_id").inner_text() == target.external_id
        distances = [float(t) for t in page.locator("td.field-distance_shown").all_inner_texts()]
        assert distances == sorted(distances)
        page.screenshot(path=str(ARTIFACTS / "admin-semantic-search.png"), full_page=True)

        rows.first.locator("th.field-id a").click()
        expect(page.locator(".field-vector_summary")).to_contain_text("384 dimensions, norm 1.0000")
        similar = page.locator("ol.vectorstore-similar a")
        expect(similar).to_have_count(5)
        first_similar = similar.first.inner_text()
        href = similar.first.get_attribute("href")
        similar.first.click()
        expect(page).to_have_url(f"{live_server.url}{href}")
        expect(page.locator("#id_external_id")).to_have_value(first_similar.split(":")[0])
        assert f"/{target.pk}/change/" not in page.url
        page.screenshot(path=str(ARTIFACTS / "admin-similar-document.png"), full_page=True)
        browser.close()
    assert os.path.getsize(ARTIFACTS / "admin-semantic-search.png") > 10_000
