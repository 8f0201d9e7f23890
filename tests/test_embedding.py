"""The Embedder and embed_parquet with the real bundled model."""

import json
from io import StringIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from sentence_transformers import SentenceTransformer

from tests.helpers import ROOT
from vectorstore.embedding import Embedder, EmbeddingError, bundled_model_path, resolve_device

FIXTURE = ROOT / "fixtures" / "sotu.parquet"


def embed(*args) -> dict:
    out = StringIO()
    call_command("embed_parquet", *map(str, args), "--json", stdout=out)
    return json.loads(out.getvalue().strip().splitlines()[-1])


def test_embed_parquet_round_trips_and_matches_the_model(tmp_path):
    """OUTPUT keeps every input column plus float32 `embedding`; vectors equal SentenceTransformer.encode."""
    table = pq.read_table(FIXTURE).slice(100, 40)
    texts = table.column("text").to_pylist()
    texts[3], texts[7] = None, "   "
    table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts))
    source, output = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(table, source)
    summary = embed(source, output, "--batch-size", "16")
    assert (summary["rows"], summary["embedded"], summary["skipped"]) == (40, 38, 2)
    assert set(summary) >= {"rows", "seconds", "texts_per_s", "device", "model"}
    assert summary["device"] == "cpu"
    result = pq.read_table(output)
    assert result.schema.field("embedding").type == pa.list_(pa.float32())
    assert result.column_names == [*table.column_names, "embedding"]
    kept = [i for i in range(40) if i not in (3, 7)]
    assert result.column("id").to_pylist() == [table.column("id")[i].as_py() for i in kept]
    assert result.column("created_at").to_pylist() == [table.column("created_at")[i].as_py() for i in kept]
    model = SentenceTransformer(bundled_model_path(), device="cpu")
    expected = model.encode([texts[i] for i in kept], batch_size=16, normalize_embeddings=True)
    got = np.asarray(result.column("embedding").to_pylist(), dtype=np.float32)
    assert np.allclose(got, expected, atol=1e-5)


def test_embed_parquet_leaves_no_partial_output(tmp_path):
    """A failure (here: no text column) writes nothing under OUTPUT's name."""
    source, output = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"body": ["a", "b"]}), source)
    with pytest.raises(CommandError, match=r"in.parquet: no text column 'text' \(columns: body\)"):
        embed(source, output)
    assert list(tmp_path.iterdir()) == [source]


def test_truncated_texts_are_counted():
    """A text over the model's 256-token limit is counted as truncated; short ones are not."""
    embedder = Embedder()
    long_text = " ".join(["constitution"] * 400)
    result = embedder.encode_counted(["a short text", long_text])
    assert result.truncated == 1
    assert result.vectors.shape == (2, 384)


def test_model_of_another_dimension_is_refused():
    """The store's column decides: a 384-dimensional model for a 768 column is refused, naming both."""
    with pytest.raises(EmbeddingError, match="makes 384-dimensional vectors but the vector column holds 768"):
        _ = Embedder(dimensions=768).model


def test_device_choice():
    assert resolve_device("auto") == "cpu"  # no GPU on this machine
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(EmbeddingError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(EmbeddingError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_unknown_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(EmbeddingError, match="cannot load embedding model"):
        _ = Embedder(model=str(tmp_path / "no-such-model")).model


def test_embed_parquet_command_refuses_bad_device(tmp_path):
    with pytest.raises(CommandError, match="no CUDA GPU"):
        embed(FIXTURE, tmp_path / "out.parquet", "--device", "cuda")


def test_embed_parquet_names_the_embedding_model_as_the_other_commands_do(tmp_path):
    """--embedding-model is the flag (as in bulk_copy and stream_sim, where --model is the Django model);
    the old --model still works, with a deprecation notice on stderr."""
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(CommandError, match="cannot load embedding model"):
        embed(FIXTURE, tmp_path / "out.parquet", "--embedding-model", missing)
    err = StringIO()
    with pytest.raises(CommandError, match="cannot load embedding model"):
        call_command(
            "embed_parquet", str(FIXTURE), str(tmp_path / "out.parquet"), "--model", missing, stderr=err
        )
    assert "--model is deprecated: use --embedding-model" in err.getvalue()
