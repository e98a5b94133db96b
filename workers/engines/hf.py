"""The `transformers` engine (alias `pt`): batched sampling with no work spent on finished rows.

Why not ``model.generate``: a padded static batch keeps stepping every row until
the longest one ends, and on this project's reference runs that was about half
of all row-steps. This loop instead
  * sorts prompts by length and packs them into batches bounded by
    ``--max_batch_size`` sequences and ``--max_batch_tokens`` tokens,
  * runs the prompt once (prefill) and copies its KV cache N times, instead of
    prefilling N identical copies,
  * drops a row from the batch (and from the KV cache) the step it finishes.
Sampling uses transformers' own logits warpers, so temperature/top-k/top-p/
repetition penalty mean exactly what they mean in ``generate``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from schemas import Candidate, Generation, JobSpec, Prompt, SamplingParams
from schemas.errors import ConfigError, ModelLoadError
from workers.dtypes import DtypeChoice, resolve_dtype, torch_dtype as to_torch
from workers.engines.base import Engine
from workers.models import resolve_model
from workers.threads import apply_torch_threads

log = logging.getLogger(__name__)


@dataclass
class _Row:
    """One sequence being sampled: which prompt it answers and what it has produced so far."""

    prompt: int
    limit: int
    tokens: list[int] = field(default_factory=list)


class TransformersEngine(Engine):
    """Holds one HF causal LM and its tokenizer for the life of the process."""

    name = "transformers"

    def __init__(self, model: str, *, torch_dtype: str = "auto", max_batch_size: int = 128,
                 max_batch_tokens: int | None = None, engine_kwargs: dict | None = None) -> None:
        path = resolve_model(model)
        apply_torch_threads()
        kwargs = dict(engine_kwargs or {})
        # The first GPU the process sees (one worker per GPU via CUDA_VISIBLE_DEVICES), else the CPU;
        # --engine_kwargs '{"device_map": ...}' leaves placement to accelerate instead.
        device = kwargs.pop("device", "cuda" if torch.cuda.is_available() else "cpu")
        given = kwargs.get("dtype", kwargs.get("torch_dtype"))
        self.dtype_choice = (DtypeChoice(str(given), "--engine_kwargs") if given is not None
                             else resolve_dtype(torch_dtype, path, str(device), what=f"--model {model}"))
        if given is None:
            kwargs["dtype"] = to_torch(self.dtype_choice.dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
            if "device_map" not in kwargs:
                self.model.to(device)
        except TypeError as exc:
            raise ConfigError(f"--engine_kwargs {engine_kwargs}: rejected by transformers: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"--model {model!r}: cannot load: {exc}") from exc
        self.model_name = model
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.context = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]

    @classmethod
    def from_spec(cls, spec: JobSpec) -> "TransformersEngine":
        return cls(spec.model, torch_dtype=spec.torch_dtype, max_batch_size=spec.max_batch_size,
                   max_batch_tokens=spec.max_batch_tokens, engine_kwargs=spec.engine_kwargs)

    def describe(self) -> dict[str, str]:
        import transformers

        return {"engine": self.name, "model": self.model_name, "transformers": transformers.__version__,
                "torch": torch.__version__, "dtype": str(self.model.dtype).removeprefix("torch."),
                "dtype_reason": self.dtype_choice.reason, "threads": str(torch.get_num_threads())}

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        if not ids:
            raise ModelLoadError(f"--model {self.model_name!r}: neither the model nor its tokenizer names an EOS token")
        return ids

    def encode(self, prompt: Prompt) -> list[int]:
        """The prompt's token ids under the model's own chat template."""
        messages = [m.model_dump() for m in prompt.messages]
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, seed: int) -> list[Generation]:
        encoded = [self.encode(p) for p in prompts]
        out: list[list[Candidate]] = [[] for _ in prompts]
        skipped: dict[int, str] = {}
        todo = []
        for i, ids in enumerate(encoded):
            if len(ids) >= self.context:
                skipped[i] = f"prompt has {len(ids)} tokens; the model's context is {self.context}"
            else:
                todo.append(i)
        generator = torch.Generator(device=self.model.device).manual_seed(seed)
        with torch.inference_mode():
            for batch in self._batches(todo, encoded, params):
                for prompt_index, candidate in self._sample(batch, encoded, params, generator):
                    out[prompt_index].append(candidate)
        return [Generation(prompt=p, candidates=out[i], skipped=skipped.get(i)) for i, p in enumerate(prompts)]

    def _batches(self, todo: list[int], encoded: list[list[int]], params: SamplingParams) -> list[list[tuple[int, int]]]:
        """Pack (prompt, copies) pieces, shortest prompts first, within the sequence and token budgets."""
        n = params.num_return_sequences
        per_piece = max(1, min(n, self.max_batch_size))
        batches: list[list[tuple[int, int]]] = []
        current: list[tuple[int, int]] = []
        rows = width = 0
        for i in sorted(todo, key=lambda j: len(encoded[j])):
            left = n
            # one prompt's copies alone may exceed the token budget: split them too (at least one per batch)
            fit = (max(1, self.max_batch_tokens // (len(encoded[i]) + params.max_new_tokens))
                   if self.max_batch_tokens is not None else per_piece)
            while left:
                copies = min(left, per_piece, fit)
                new_width = max(width, len(encoded[i])) + params.max_new_tokens
                too_many = rows + copies > self.max_batch_size
                too_big = self.max_batch_tokens is not None and (rows + copies) * new_width > self.max_batch_tokens
                if current and (too_many or too_big):
                    batches.append(current)
                    current, rows, width = [], 0, 0
                current.append((i, copies))
                rows += copies
                width = max(width, len(encoded[i]))
                left -= copies
        if current:
            batches.append(current)
        return batches

    def _processors(self, params: SamplingParams) -> LogitsProcessorList:
        procs = LogitsProcessorList()
        if params.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if params.temperature > 0:
            if params.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k > 0:
                procs.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                procs.append(TopPLogitsWarper(params.top_p))
        return procs

    def _sample(self, batch: list[tuple[int, int]], encoded: list[list[int]], params: SamplingParams,
                generator: torch.Generator) -> list[tuple[int, Candidate]]:
        """Prefill each prompt once, fan its cache out to its copies, decode until every row ends."""
        width = max(len(encoded[i]) for i, _ in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (i, _) in enumerate(batch):
            ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[r, width - len(encoded[i]):] = 1
        ids, mask = ids.to(self.model.device), mask.to(self.model.device)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, cache, logits_to_keep=1)
        fan_out = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor([c for _, c in batch]))
        fan_out = fan_out.to(self.model.device)
        cache.batch_select_indices(fan_out)
        logits, mask = logits[fan_out], mask[fan_out]
        penalise = params.repetition_penalty != 1.0
        history = ids[fan_out] if penalise else None  # only the repetition penalty reads past tokens
        rows = [_Row(prompt=batch[b][0], limit=min(params.max_new_tokens, self.context - len(encoded[batch[b][0]])))
                for b in fan_out.tolist()]
        procs = self._processors(params)
        done: list[tuple[int, Candidate]] = []
        while True:
            scores = procs(history, logits)
            if params.temperature > 0:
                nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(1)
            else:
                nxt = scores.argmax(dim=-1)
            keep: list[int] = []
            for r, (row, token) in enumerate(zip(rows, nxt.tolist())):
                row.tokens.append(token)
                finished = self._finished(row, token, params)
                if finished:
                    done.append((row.prompt, finished))
                else:
                    keep.append(r)
            if self.on_progress is not None:
                self.on_progress(len(rows), len(rows) - len(keep))
            if not keep:
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=self.model.device)
                cache.batch_select_indices(index)
                rows, nxt, mask = [rows[k] for k in keep], nxt[index], mask[index]
                history = history[index] if penalise else None
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            if penalise:
                history = torch.cat([history, nxt[:, None]], dim=1)
            logits = self._forward(nxt[:, None], mask, cache)
        return done

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache, logits_to_keep: int = 1) -> torch.Tensor:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, logits_to_keep=logits_to_keep)
        return out.logits[:, -1, :].float()

    def _finished(self, row: _Row, token: int, params: SamplingParams) -> Candidate | None:
        """The row's Candidate if this token ends it (EOS, stop word, length), else None."""
        if token in self.eos_ids:
            return Candidate(text=self._decode(row.tokens[:-1]), tokens=len(row.tokens), finish_reason="stop")
        if params.stop_words:
            tail = self._decode(row.tokens[-(max(len(s) for s in params.stop_words) + 2):])
            if any(s in tail for s in params.stop_words):
                text = self._decode(row.tokens)
                cut = min(text.find(s) for s in params.stop_words if s in text)
                return Candidate(text=text[:cut], tokens=len(row.tokens), finish_reason="stop")
        if len(row.tokens) >= row.limit:
            return Candidate(text=self._decode(row.tokens), tokens=len(row.tokens), finish_reason="length")
        return None

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
