"""Document admin.

The vector column is kept out of forms: it would render as a text box of thousands of numbers.
"""

from django.contrib import admin

from vectorstore.models import Document


class DocumentAdmin(admin.ModelAdmin):
    """Reusable for a host site's own subclass of AbstractDocument."""

    list_display = ("id", "external_id", "short_text", "category", "created_at")
    list_filter = ("category", "created_at")
    search_fields = ("external_id", "text")
    date_hierarchy = "created_at"
    exclude = ("embedding",)
    # The text stays read-only until the admin can re-embed on save: an edited
    # text with its old vector would be found by the wrong queries.
    readonly_fields = ("text", "search_vector")
    show_full_result_count = False  # count(*) on a large table on every page is slow

    @admin.display(description="text")
    def short_text(self, obj) -> str:
        return obj.text if len(obj.text) <= 80 else obj.text[:79] + "…"

    def has_add_permission(self, request) -> bool:
        # Adding needs an embedding, which the admin cannot compute yet.
        return False


admin.site.register(Document, DocumentAdmin)
