"""Document admin: semantic search in the change list, a readable vector, similar documents, re-embedding.

The configured document model (``VECTORSTORE["DOCUMENT_MODEL"]``) is registered here; ``DocumentAdmin``
works for any other subclass of ``AbstractDocument`` too: ``admin.site.register(MyDocument, DocumentAdmin)``.
"""

from __future__ import annotations

import contextlib

import numpy as np
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Case, FloatField, IntegerField, QuerySet, Value, When
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from vectorstore import conf, passages, search
from vectorstore.embedding import EmbeddingError
from vectorstore.freshness import stale_flag
from vectorstore.models import ApiToken
from vectorstore.reembed import record
from vectorstore.validation import storable_json

SEMANTIC_RESULTS = 200  # how many nearest documents a semantic search in the change list shows


class SearchModeFilter(admin.SimpleListFilter):
    """Chooses what the search box does: by meaning (the default), by meaning and words (hybrid), by
    meaning with diverse results (MMR), or Django's plain text search."""

    title = "search mode"
    parameter_name = "search_mode"

    def lookups(self, request, model_admin):
        return [
            ("semantic", "Semantic (by meaning)"),
            ("hybrid", "Hybrid (meaning and words)"),
            ("diverse", "Diverse (by meaning, MMR)"),
            ("text", "Plain text"),
        ]

    def choices(self, changelist):
        current = self.value() or "semantic"
        for value, label in self.lookup_choices:
            yield {
                "selected": current == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }

    def queryset(self, request, queryset):
        return queryset  # the mode is read by get_search_results


class VectorFilter(admin.SimpleListFilter):
    """Rows whose vector is stale (their text changed since, by any path; the embedding worker has not
    embedded them yet), or fresh ones."""

    title = "vector"
    parameter_name = "vector"

    def lookups(self, request, model_admin):
        return [("stale", "Stale (to embed)"), ("fresh", "Fresh")]

    def queryset(self, request, queryset):
        if self.value() in ("stale", "fresh"):
            return queryset.filter(vector_stale=self.value() == "stale")
        return queryset


class CreatedFilter(admin.SimpleListFilter):
    """Date ranges that fit the table's dates: decades for an archive spanning centuries, years for one of
    a few decades, recent days for a live table (Django's date filter offers "Today" and "Past 7 days"
    whatever the data, and a date hierarchy of an archive lists every year above the results)."""

    title = "created"
    parameter_name = "created"

    def lookups(self, request, model_admin):
        from django.db.models import Max, Min

        span = model_admin.model._default_manager.aggregate(first=Min("created_at"), last=Max("created_at"))
        first, last = span["first"], span["last"]
        if first is None:
            return []
        if last.year - first.year >= 20:
            decades = range(first.year // 10 * 10, last.year + 1, 10)
            return [(f"{d}-{d + 9}", f"{d}s") for d in reversed(decades)]
        if last.year - first.year >= 1:
            return [(f"{y}-{y}", str(y)) for y in range(last.year, first.year - 1, -1)]
        return [("7d", "Past 7 days"), ("30d", "Past 30 days"), ("365d", "Past year")]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if value.endswith("d") and value[:-1].isdigit():
            from datetime import timedelta

            from django.utils import timezone

            return queryset.filter(created_at__gte=timezone.now() - timedelta(days=int(value[:-1])))
        first, _, last = value.partition("-")
        if first.isdigit() and last.isdigit():
            return queryset.filter(created_at__year__gte=int(first), created_at__year__lte=int(last))
        return queryset


def _embed(texts: list[str], model) -> np.ndarray:
    return record.embedder(model).encode(texts)


class _EscapingEncoder(DjangoJSONEncoder):
    """Django's JSON form field shows values with ensure_ascii=False, which cannot render half a
    surrogate pair; escaped, the form can show the value it refuses."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["ensure_ascii"] = True
        super().__init__(*args, **kwargs)


class DocumentForm(forms.ModelForm):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if "metadata" in self.fields:
            self.fields["metadata"].encoder = _EscapingEncoder

    def clean_metadata(self):
        # JSON can carry what jsonb cannot store (\u0000, half a surrogate pair): a form error, not a 500.
        value = self.cleaned_data["metadata"]
        try:
            return storable_json(value)
        except ValueError as exc:
            raise forms.ValidationError(f"PostgreSQL cannot store this: {exc}") from exc

    def clean(self):
        # Embedded here, not in save_model: a model that cannot embed (not installed, not found, another
        # dimension than the field's) is a message on the form, not a 500.
        cleaned = super().clean()
        text = cleaned.get("text")
        instance = self.instance
        stale = (
            instance.pk is None or "text" in self.changed_data or instance.__dict__.get("embedding") is None
        )
        if text and stale and not self.errors:
            try:
                instance.embedding = _embed([text], self._meta.model)[0]
            except EmbeddingError as exc:
                self.add_error("text", f"This text could not be embedded: {exc}")
        return cleaned


class DocumentAdmin(admin.ModelAdmin):
    form = DocumentForm
    list_display = ("id", "external_id", "short_text", "category", "created_at", "distance_shown", "fresh")
    list_filter = (SearchModeFilter, "category", CreatedFilter, VectorFilter)
    search_fields = ("text", "external_id")
    search_help_text = "Searches by meaning, nearest first (choose 'plain text' on the right for words)."
    exclude = ("embedding",)
    readonly_fields = ("vector_summary", "similar_documents")
    show_full_result_count = False  # count(*) on a large table on every page is slow
    actions = ["reembed"]

    @admin.display(description="text")
    def short_text(self, obj) -> str:
        start = getattr(obj, "passage_start", None)
        if start is not None:  # a model that keeps passages: the one that matched, where it lies
            passage = obj.text[start : obj.passage_end]
            shown = passage if len(passage) <= 80 else passage[:79] + "…"
            return f"[passage {obj.passage_ordinal}, characters {start}-{obj.passage_end}] {shown}"
        return obj.text if len(obj.text) <= 80 else obj.text[:79] + "…"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Each row's freshness: one index probe of the stale-vector queue a row of the page.
        return super().get_queryset(request).annotate(vector_stale=stale_flag(self.model))

    @admin.display(description="vector up to date", boolean=True)
    def fresh(self, obj) -> bool:
        return not getattr(obj, "vector_stale", False)

    @admin.display(description="distance")
    def distance_shown(self, obj) -> str:
        distance = getattr(obj, "distance", None)
        return "" if distance is None else f"{distance:.4f}"

    def _search_mode(self, request: HttpRequest, search_term: str) -> str:
        """semantic, hybrid, diverse or text (Django's own search); semantic when the value is unknown."""
        if not search_term:
            return "text"
        mode = request.GET.get(SearchModeFilter.parameter_name, "semantic")
        return mode if mode in ("hybrid", "diverse", "text") else "semantic"

    def changelist_view(self, request: HttpRequest, extra_context=None):
        # The change list's queries (its count, its search, its page, run when the page renders) are
        # bounded by the search timeout: a search that runs past it is a 503, not a worker held.
        try:
            with search.bounded(using=self.model._default_manager.db):
                response = super().changelist_view(request, extra_context)
                if hasattr(response, "render"):
                    response.render()
                return response
        except search.SearchTimeout as exc:
            response = HttpResponse(f"{exc}.", status=503, content_type="text/plain; charset=utf-8")
            response["Retry-After"] = exc.retry_after
            return response

    def _text_results(self, request, queryset: QuerySet, search_term: str):
        """Django's text search (every word, in the text or the external id); where no document holds
        them all, the documents holding the most of them, said so (nothing at all was the answer)."""
        found, distinct = super().get_search_results(request, queryset, search_term)
        words = [w for w in search_term.split() if w]
        if len(words) < 2 or found.exists():
            return found, distinct
        held = [Case(When(text__icontains=w, then=Value(1)), default=Value(0)) for w in words]
        holding = queryset.annotate(words_held=sum(held[1:], held[0])).filter(words_held__gt=0)
        messages.info(request, "No document holds every word: showing those that hold the most of them.")
        return holding.order_by("-words_held", "pk"), False

    def get_search_results(self, request, queryset: QuerySet, search_term: str):
        mode = self._search_mode(request, search_term)
        if mode == "text":
            return self._text_results(request, queryset, search_term)
        options = {"mode": "hybrid"} if mode == "hybrid" else {}
        if mode == "diverse":
            options["mmr"] = {"fetch_k": SEMANTIC_RESULTS * 2}
        try:
            result = search.search(search_term, k=SEMANTIC_RESULTS, queryset=queryset, **options)
        except (search.SearchError, EmbeddingError) as exc:
            messages.warning(request, f"Semantic search: {exc}; showing a plain text search instead.")
            return super().get_search_results(request, queryset, search_term)
        # An external id typed in the box is looked up as such first: its document leads the list.
        exact = list(queryset.filter(external_id=search_term.strip()).values_list("pk", flat=True)[:1])
        if exact:
            result.hits = [h for h in result.hits if h.document.pk != exact[0]]
        ids = exact + [hit.document.pk for hit in result.hits]

        def per_hit(value, field) -> Case:
            # The change list orders before it searches: the search's own order, distances and matched
            # passages are carried over as they were found (a passage search's distance is its passage's).
            whens = [When(pk=h.document.pk, then=Value(value(i, h))) for i, h in enumerate(result.hits)]
            return Case(*whens, default=Value(None), output_field=field)

        span = {
            f"passage_{key}": per_hit(
                lambda i, h, key=key: h.passage[key] if h.passage else None, IntegerField()
            )
            for key in ("ordinal", "start", "end")
        }
        rank = per_hit(lambda i, h: i + 1, IntegerField())
        if exact:  # rank 0, ahead of every hit; its distance left blank
            rank = Case(When(pk=exact[0], then=Value(0)), default=rank, output_field=IntegerField())
        ranked = queryset.filter(pk__in=ids).annotate(
            distance=per_hit(lambda i, h: h.distance, FloatField()), search_rank=rank, **span
        )
        return ranked.order_by("search_rank"), False

    @admin.display(description="vector")
    def vector_summary(self, obj) -> str:
        if obj is None or obj.embedding is None:
            return "none yet: it is computed from the text when you save"
        vector = np.asarray(obj.embedding, dtype=np.float32)
        first = ", ".join(f"{v:+.4f}" for v in vector[:8])
        # format_html escapes its arguments into strings first, so numbers are formatted here.
        norm = f"{float(np.linalg.norm(vector)):.4f}"
        return format_html("{} dimensions, norm {}<br><code>[{}, …]</code>", len(vector), norm, first)

    @admin.display(description="similar documents")
    def similar_documents(self, obj) -> str:
        if obj is None or obj.pk is None or obj.embedding is None:
            return "-"
        hits = search.similar(obj, k=5, queryset=self.model._default_manager.all()).hits
        if not hits:
            return "-"
        opts = self.model._meta
        return format_html(
            "<ol class='vectorstore-similar'>{}</ol>",
            format_html_join(
                "",
                "<li><a href='{}'>{}</a> <span class='quiet'>(distance {})</span></li>",
                (
                    (
                        reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[h.document.pk]),
                        str(h.document),
                        f"{h.distance:.4f}",
                    )
                    for h in hits
                ),
            ),
        )

    @admin.action(description="Re-embed the selected documents")
    def reembed(self, request, queryset) -> None:
        docs = list(queryset.only("pk", "text"))
        embedder = record.embedder(self.model)
        for start in range(0, len(docs), 256):
            chunk = docs[start : start + 256]
            vectors, parts, part_vectors = passages.embed_with_passages(
                [d.text for d in chunk], embedder, self.model
            )
            for doc, vector in zip(chunk, vectors, strict=True):
                doc.embedding = vector
            # The passages with their document, in its transaction: a renewed vector beside old passages
            # would answer passage searches from the old text.
            with transaction.atomic(using=self.model._default_manager.db):
                self.model._default_manager.bulk_update(chunk, ["embedding"])
                for i, doc in enumerate(chunk if parts is not None else ()):
                    passages.replace_passages(doc, parts[i], part_vectors[i])
        self.message_user(request, f"Re-embedded {len(docs)} documents.", messages.SUCCESS)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """API tokens: listed (never their keys: only a hash is stored) and revoked by deleting them. New ones
    come from ``manage.py create_api_token``, which shows the key once."""

    list_display = ("hint", "user", "name", "created_at", "last_used_at")
    list_filter = ("user",)
    search_fields = ("name", "hint", "user__username")
    readonly_fields = ("user", "hint", "created_at", "last_used_at")
    fields = ("user", "name", "hint", "created_at", "last_used_at")
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens", permissions=["delete"])
    def revoke(self, request, queryset) -> None:
        count, _ = queryset.delete()
        self.message_user(
            request, f"Revoked {count} token(s): they no longer authenticate.", messages.SUCCESS
        )


# The configured document model (VECTORSTORE["DOCUMENT_MODEL"]), whichever app defines it; one that names
# no installed model is left out here, so that Django's commands run and the system check (E004) says why.
with contextlib.suppress(ImproperlyConfigured):
    admin.site.register(conf.document_model(), DocumentAdmin)
