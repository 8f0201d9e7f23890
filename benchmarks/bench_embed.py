"""embed_parquet against SentenceTransformer.encode on the same texts, batch size and device.

    .venv/bin/python -m benchmarks.bench_embed --device cpu --count 768
    python3 -m benchmarks.bench_embed --device cuda --count 20000 --batch-size 256   # on a GPU machine

Texts are the fixture's passages, cycled to --count. Each side runs twice,
alternating, and the better run of each counts. No database is used.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.harness import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", help="path or name (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--count", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    # Embedding needs no database: never start the embedded one for this.
    os.environ.setdefault("DATABASE_URL", "postgres://unused@127.0.0.1:1/unused")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    import torch

    from vectorstore.embedding import Embedder
    from vectorstore.loading.embed_parquet import embed_parquet

    fixture = pq.read_table(ROOT / "fixtures" / "sotu.parquet")
    table = fixture.take(pa.array(np.arange(args.count) % fixture.num_rows))
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    source = work / "texts.parquet"
    pq.write_table(table, source)
    texts = table.column("text").to_pylist()

    embedder = Embedder(model=args.model, device=args.device, batch_size=args.batch_size)
    model = embedder.model
    model.encode(texts[: args.batch_size * 2], batch_size=args.batch_size)  # warm-up
    direct, ours, report = [], [], None
    for _ in range(2):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        expected = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        direct.append(len(texts) / (time.perf_counter() - start))
        report = embed_parquet(source, work / "out.parquet", embedder=embedder, progress=False)
        ours.append(report.texts_per_s)
    written = np.asarray(
        pq.read_table(work / "out.parquet").column("embedding").to_pylist(), dtype=np.float32
    )
    name = torch.cuda.get_device_name() if model.device.type == "cuda" else model.device.type
    print(f"device {name}; model {embedder.label}; {len(texts)} texts, batch {args.batch_size}")
    print(f"SentenceTransformer.encode: {max(direct):,.1f} texts/s")
    print(f"embed_parquet:              {max(ours):,.1f} texts/s (read, embed, write parquet)")
    print(f"ratio embed_parquet / encode: {max(ours) / max(direct):.3f} (goal >= 0.95)")
    print(f"max |difference| between the two sides' vectors: {np.abs(written - expected).max():.2e}")


if __name__ == "__main__":
    main()
