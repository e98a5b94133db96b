"""The transformers-backed PRMs: scalar reward model, step PRM and causal-LM judge (see ``workers.scoring.prm_kinds``).

Every one loads its model once, scores a call's requests in batches of ``batch_size`` (similar lengths
together, one forward pass per batch) and returns the scores in request order. Position ids follow the
attention mask, so a request scores the same alone, in any batch and with either padding side.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from schemas.errors import ConfigError, ModelLoadError, PermanentError
from workers.scoring.base import InferRequest, Score, validate_scores
from workers.scoring.prm_common import (
    HFPRM,
    accepts,
    batches,
    check_inputs,
    context_of,
    last_user_turn,
    load_pretrained,
    padded_forward,
    pick_device,
    prepare_torch,
    read_config,
    render,
    resolve_prm_path,
    unique,
)

log = logging.getLogger(__name__)
_COMMON = ("kind", "batch_size", "max_length", "device")


class SeqClsPRM(HFPRM):
    """Scalar reward model (GRM-llama3.2 style, as swift uses): any ``AutoModelForSequenceClassification``.

    The prompt turns plus the candidate are rendered with the tokenizer's chat template (plain
    ``role: content`` lines when it has none). Score: ``logits[:, 0]`` with one label, the probability of
    class 1 with two. Inputs longer than ``max_length`` (default: the model's context) lose their end.
    """

    kind = "seqcls"
    options = _COMMON + ("padding_side", "trust_remote_code")

    def __init__(self, model: str, *, batch_size: int = 8, max_length: int | None = None,
                 padding_side: str | None = None, device: str | None = None, torch_dtype: str = "auto",
                 trust_remote_code: bool = False) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name, path = model, resolve_prm_path(model)
        self.batch_size, self.device = batch_size, pick_device(device)
        self.tokenizer = load_pretrained(model, path, AutoTokenizer, trust_remote_code=trust_remote_code)
        dtype = prepare_torch(model, path, self.device, torch_dtype)
        self.model = load_pretrained(model, path, AutoModelForSequenceClassification, dtype=dtype,
                                     trust_remote_code=trust_remote_code).to(self.device).eval()
        self.num_labels = self.model.config.num_labels
        if self.num_labels not in (1, 2):
            raise ModelLoadError(f"--prm_model {model!r}: a reward model has 1 or 2 labels; {path} has {self.num_labels}")
        config = self.model.config.get_text_config()
        # The model finds each row's last token by this id; it must be the id we pad with.
        tok = self.tokenizer
        self.pad_id = next(i for i in (config.pad_token_id, tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
        config.pad_token_id = self.model.config.pad_token_id = self.pad_id
        self.padding_side = padding_side or getattr(tok, "padding_side", None) or "right"
        self.max_length = max_length or context_of(self.model)

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[Score]:
        import torch

        self._ready()
        check_inputs(self.name, infer_requests, ground_truths)
        seqs, owner = unique([render(self.tokenizer, r.messages, add_generation_prompt=False)[:self.max_length]
                              for r in infer_requests])
        scores: list[Score] = [0.0] * len(seqs)
        with torch.inference_mode():
            for batch in batches([len(s) for s in seqs], self.batch_size):
                logits, _ = padded_forward(self.model, [seqs[i] for i in batch], self.pad_id, self.padding_side,
                                           self.device)
                values = logits[:, 0] if self.num_labels == 1 else torch.softmax(logits, dim=-1)[:, 1]
                for i, v in zip(batch, values.tolist()):
                    scores[i] = v
        return validate_scores(self.name, [scores[o] for o in owner], len(infer_requests))


class StepPRM(HFPRM):
    """Step PRM in the Qwen2.5-Math-PRM style: one probability per reasoning step.

    The candidate is cut into steps on ``step_split`` (default a blank line); each step is followed by
    ``step_token`` (default ``<extra_0>``, which must be one token), and the conversation is rendered as
    Qwen2.5-Math-PRM expects: its system prompt, the prompt's last user turn, then the steps. One forward
    pass per batch of candidates; a step's score is the softmax probability of class 1 at its separator,
    from a token-classification head or from a remote-code model (``trust_remote_code``) whose output is
    ``logits`` of shape (batch, length, 2). Steps cut off by ``max_length`` score 0.0: they were not seen.
    """

    kind = "step"
    options = _COMMON + ("padding_side", "trust_remote_code", "step_split", "step_token")
    SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

    def __init__(self, model: str, *, batch_size: int = 8, max_length: int | None = None,
                 padding_side: str | None = None, device: str | None = None, torch_dtype: str = "auto",
                 trust_remote_code: bool = False, step_split: str = "\n\n", step_token: str = "<extra_0>") -> None:
        from transformers import AutoModel, AutoModelForTokenClassification, AutoTokenizer

        self.name, path = model, resolve_prm_path(model)
        self.batch_size, self.device = batch_size, pick_device(device)
        self.step_split, self.step_token = step_split, step_token
        self.tokenizer = load_pretrained(model, path, AutoTokenizer, trust_remote_code=trust_remote_code)
        sep = self.tokenizer.encode(step_token, add_special_tokens=False)
        if len(sep) != 1:
            raise ConfigError(f"--prm_kwargs 'step_token': {step_token!r} is {len(sep)} tokens for the tokenizer of "
                              f"{path}; it must be exactly one (Qwen2.5-Math-PRM uses <extra_0>)")
        self.sep_id = sep[0]
        archs = read_config(model, path).get("architectures") or []
        token_head = not any("ProcessRewardModel" in a for a in archs)
        loader = AutoModelForTokenClassification if token_head else AutoModel
        dtype = prepare_torch(model, path, self.device, torch_dtype)
        self.model = load_pretrained(model, path, loader, dtype=dtype,
                                     trust_remote_code=trust_remote_code).to(self.device).eval()
        if token_head and self.model.config.num_labels != 2:
            raise ModelLoadError(f"--prm_model {model!r}: a step PRM's token head has 2 labels; "
                                 f"{path} has {self.model.config.num_labels}")
        tok = self.tokenizer
        self.pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
        self.padding_side = padding_side or getattr(tok, "padding_side", None) or "right"
        self.max_length = max_length or context_of(self.model)

    def steps(self, candidate: str) -> list[str]:
        """The candidate's steps (separator tokens in the text removed: they would count as extra steps)."""
        parts = [p.strip() for p in candidate.replace(self.step_token, "").split(self.step_split)]
        return [p for p in parts if p] or [candidate.replace(self.step_token, "").strip()]

    def encode(self, request: InferRequest) -> tuple[list[int], int]:
        """(token ids, number of steps) of one request."""
        steps = self.steps(request.response)
        question = last_user_turn(request.messages).replace(self.step_token, "")
        messages = [{"role": "system", "content": self.SYSTEM}, {"role": "user", "content": question},
                    {"role": "assistant", "content": self.step_token.join(steps) + self.step_token}]
        return render(self.tokenizer, messages, add_generation_prompt=False), len(steps)

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[Score]:
        import torch

        self._ready()
        check_inputs(self.name, infer_requests, ground_truths)
        encoded = [self.encode(r) for r in infer_requests]
        for i, (ids, n) in enumerate(encoded):
            found = ids.count(self.sep_id)
            if found != n:
                raise PermanentError(f"PRM {self.name!r}: request {i} has {n} steps but {found} {self.step_token!r} "
                                     "tokens after tokenization; the step token must be a special token")
        full, owner = unique([ids for ids, _ in encoded])
        seqs = [ids[:self.max_length] for ids in full]
        scores: list[list[float]] = [[] for _ in seqs]
        with torch.inference_mode():
            for batch in batches([len(s) for s in seqs], self.batch_size):
                rows = [seqs[i] for i in batch]
                logits, starts = padded_forward(self.model, rows, self.pad_id, self.padding_side, self.device)
                if logits.dim() != 3 or logits.shape[-1] != 2:
                    raise PermanentError(f"PRM {self.name!r}: expected logits (batch, length, 2), got {tuple(logits.shape)}")
                probs = torch.softmax(logits, dim=-1)[..., 1]
                for r, i in enumerate(batch):
                    cols = [starts[r] + j for j, t in enumerate(rows[r]) if t == self.sep_id]
                    scores[i] = probs[r, cols].tolist() + [0.0] * (full[i].count(self.sep_id) - len(cols))
        short = sum(len(s) < len(f) for s, f in zip(seqs, full))
        if short:
            log.warning("PRM %s: %d candidates longer than max_length %s; their unseen steps score 0.0",
                        self.name, short, self.max_length)
        return validate_scores(self.name, [list(scores[o]) for o in owner], len(infer_requests))


class JudgePRM(HFPRM):
    """A causal LM asked whether the candidate is correct: score = P(Yes) / (P(Yes) + P(No)).

    The judge prompt (``PROMPT``) holds the question (the prompt's last user turn), the reference answer
    when there is one, and the candidate; it is rendered with the model's chat template and a generation
    prompt, and the next-token distribution is read once, batched with left padding and ``logits_to_keep=1``.
    "Yes" counts the single-token spellings Yes / yes with and without a leading space (likewise No).
    A candidate too long for ``max_length`` (default: the model's context) loses its middle.
    A vLLM judge would read the same two numbers from the top logprobs of a 1-token generation; not built.
    """

    kind = "judge"
    options = _COMMON
    PROMPT = ("Decide whether the proposed solution to the problem is correct.\n\n"
              "Problem:\n{question}\n\n{reference}Proposed solution:\n{candidate}\n\n"
              "Is the proposed solution correct? Answer Yes or No.")
    REFERENCE = "Reference answer:\n{answer}\n\n"

    def __init__(self, model: str, *, batch_size: int = 8, max_length: int | None = None,
                 device: str | None = None, torch_dtype: str = "auto") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name, path = model, resolve_prm_path(model)
        self.batch_size, self.device = batch_size, pick_device(device)
        self.tokenizer = load_pretrained(model, path, AutoTokenizer)
        dtype = prepare_torch(model, path, self.device, torch_dtype)
        self.model = load_pretrained(model, path, AutoModelForCausalLM, dtype=dtype).to(self.device).eval()
        self.yes_ids, self.no_ids = self._word_ids(("Yes", "yes")), self._word_ids(("No", "no"))
        if not self.yes_ids or not self.no_ids:
            raise ModelLoadError(f"--prm_model {model!r}: the tokenizer of {path} has no single token for Yes or No")
        tok = self.tokenizer
        self.pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
        self.max_length = max_length or context_of(self.model)
        self._keep = {"logits_to_keep": 1} if accepts(self.model, "logits_to_keep") else {}

    def _word_ids(self, words: Sequence[str]) -> list[int]:
        """The ids of the spellings of a word that are one token each."""
        out = set()
        for w in [*words, *(" " + w for w in words)]:
            ids = self.tokenizer.encode(w, add_special_tokens=False)
            if len(ids) == 1:
                out.add(ids[0])
        return sorted(out)

    def _render(self, question: str, answer: str | None, candidate: str) -> list[int]:
        reference = self.REFERENCE.format(answer=answer) if answer is not None else ""
        text = self.PROMPT.format(question=question, reference=reference, candidate=candidate)
        return render(self.tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)

    def encode(self, request: InferRequest, answer: str | None) -> list[int]:
        question, candidate = last_user_turn(request.messages), request.response
        ids = self._render(question, answer, candidate)
        over = len(ids) - (self.max_length or len(ids))
        if over > 0:
            cand = self.tokenizer.encode(candidate, add_special_tokens=False)
            keep = max(0, len(cand) - over - 8)  # a little slack: re-tokenizing around the cut may add a few
            head, tail = cand[:keep // 2], cand[len(cand) - (keep - keep // 2):][:keep - keep // 2]
            ids = self._render(question, answer, self.tokenizer.decode(head) + " [...] " + self.tokenizer.decode(tail))
            ids = ids[-self.max_length:]
        return ids

    def __call__(self, infer_requests: list[InferRequest], ground_truths: list[str | None],
                 **kwargs: Any) -> list[Score]:
        import torch

        self._ready()
        check_inputs(self.name, infer_requests, ground_truths)
        seqs, owner = unique([self.encode(r, gt) for r, gt in zip(infer_requests, ground_truths)])
        scores: list[Score] = [0.0] * len(seqs)
        with torch.inference_mode():
            for batch in batches([len(s) for s in seqs], self.batch_size):
                logits, _ = padded_forward(self.model, [seqs[i] for i in batch], self.pad_id, "left", self.device,
                                           **self._keep)
                logp = torch.log_softmax(logits[:, -1, :], dim=-1)
                yes = torch.logsumexp(logp[:, self.yes_ids], dim=-1)
                no = torch.logsumexp(logp[:, self.no_ids], dim=-1)
                for i, v in zip(batch, torch.sigmoid(yes - no).tolist()):  # = P(Yes) / (P(Yes) + P(No))
                    scores[i] = v
        return validate_scores(self.name, [scores[o] for o in owner], len(infer_requests))
