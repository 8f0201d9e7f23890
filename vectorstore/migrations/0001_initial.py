import django.contrib.postgres.indexes
import django.contrib.postgres.search
import django.utils.timezone
import pgvector.django.indexes
import pgvector.django.vector
from django.db import migrations, models
from pgvector.django import VectorExtension

# The document table follows the DIMENSIONS setting (like AUTH_USER_MODEL); reembed moves the column.
from vectorstore import conf


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        # pgvector first: the vector type must exist before any column uses it.
        VectorExtension(),
        migrations.CreateModel(
            name="Document",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "external_id",
                    models.CharField(
                        blank=True,
                        help_text="Your own identifier for the document (unique when given).",
                        max_length=255,
                        null=True,
                    ),
                ),
                ("text", models.TextField()),
                ("embedding", pgvector.django.vector.VectorField(dimensions=conf.dimensions())),
                ("category", models.CharField(blank=True, default="", max_length=255)),
                ("metadata", models.JSONField(blank=True, default=dict)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "search_vector",
                    models.GeneratedField(
                        db_persist=True,
                        expression=django.contrib.postgres.search.SearchVector("text", config="english"),
                        output_field=django.contrib.postgres.search.SearchVectorField(),
                    ),
                ),
            ],
            options={
                "verbose_name": "document",
                "verbose_name_plural": "documents",
                "abstract": False,
                "indexes": [
                    models.Index(fields=["category"], name="vectorstore_document_cat"),
                    models.Index(fields=["created_at"], name="vectorstore_document_created"),
                ],
                "constraints": [
                    models.UniqueConstraint(fields=("external_id",), name="vectorstore_document_external_id")
                ],
            },
        ),
        migrations.AddIndex(
            model_name="document",
            index=pgvector.django.indexes.HnswIndex(
                ef_construction=64,
                fields=["embedding"],
                m=16,
                name="vectorstore_document_hnsw",
                opclasses=["vector_cosine_ops"],
            ),
        ),
        migrations.AddIndex(
            model_name="document",
            index=django.contrib.postgres.indexes.GinIndex(
                fields=["search_vector"], name="vectorstore_document_fts"
            ),
        ),
        migrations.AddIndex(
            model_name="document",
            index=django.contrib.postgres.indexes.GinIndex(
                fields=["metadata"], name="vectorstore_document_meta"
            ),
        ),
    ]
