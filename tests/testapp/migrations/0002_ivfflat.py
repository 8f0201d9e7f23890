from django.db import migrations

from vectorstore.indexing.operations import AddIvfflatIndex


class Migration(migrations.Migration):
    dependencies = [("testapp", "0001_initial")]

    # An L2 IVFFlat index beside the inherited cosine HNSW one: each metric's
    # queries find their own index.
    operations = [AddIvfflatIndex("hostdocument", name="testapp_hostdoc_l2_ivf", opclass="vector_l2_ops")]
