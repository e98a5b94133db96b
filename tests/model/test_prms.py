"""The built-in PRMs of ``workers.scoring.prm_kinds``.

The judge runs on the real SmolLM2-135M model and the embedding PRM on the real all-MiniLM-L6-v2. The scalar
RM and the step PRM run on TINY random checkpoints made here (a 2-layer, 32-wide Llama with a
sequence-classification / token-classification head, saved with the SmolLM2 tokenizer): their scores are
meaningless, only the plumbing is checked: shapes, one score (list) per candidate with one score per step,
batched == one at a time and left == right padding within 1e-4. The random weights are drawn large
(``initializer_range`` 1.0) so that scores differ between inputs and a padding mistake would show.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from schemas import DatasetSpec, JobSpec
from schemas.errors import ConfigError, ModelLoadError, PermanentError
from workers.scoring.base import InferRequest

QUESTIONS = ["What is 2+3?", "Tom has 4 apples and buys 3 more. How many apples does he have now?",
             "What is 12*3?", "Hi"]
CANDIDATES = ["5", "Tom starts with 4 apples.\n\nHe buys 3 more, so 4 + 3 = 7.\n\nThe answer is \\boxed{7}.",
              "12*3 = 36.\n\n\\boxed{36}", "Hello! How can I help you today?\n\nAsk me anything."]
ANSWERS = ["5", "7", "36", None]


def _requests(questions=QUESTIONS, candidates=CANDIDATES, system: str | None = None) -> list[InferRequest]:
    head = [{"role": "system", "content": system}] if system else []
    return [InferRequest(messages=head + [{"role": "user", "content": q}, {"role": "assistant", "content": c}])
            for q, c in zip(questions, candidates)]


def _spec(prm_model: str, **prm_kwargs) -> JobSpec:
    # fp32 pinned: the 1e-4 invariance checks below hold in fp32; in bf16 (what auto picks on a CPU with native
    # bf16) the judge's batched and single scores differ by up to 0.03, as rounding depends on the batch shape
    return JobSpec(model="smollm2-135m-instruct", datasets=[DatasetSpec(source="data.jsonl")],
                   output_file="out.jsonl", prm_model=prm_model, prm_kwargs=prm_kwargs,
                   torch_dtype="float32")


def _close(a, b, tol: float = 1e-4) -> bool:
    flat = lambda xs: [v for x in xs for v in (x if isinstance(x, list) else [x])]  # noqa: E731
    return [len(x) if isinstance(x, list) else 0 for x in a] == [len(x) if isinstance(x, list) else 0 for x in b] \
        and all(abs(x - y) <= tol for x, y in zip(flat(a), flat(b)))


def _tiny(folder: Path, head: str, source: str, num_labels: int = 2, extra_tokens=(), template: bool = True) -> str:
    """A random 2-layer Llama with a ``head`` ('seqcls' / 'tokcls') and the SmolLM2 tokenizer, saved to ``folder``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification, LlamaForTokenClassification

    tok = AutoTokenizer.from_pretrained(source)
    if extra_tokens:
        tok.add_tokens(list(extra_tokens), special_tokens=True)
    if not template:
        tok.chat_template = None
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         num_labels=num_labels, pad_token_id=tok.pad_token_id, initializer_range=1.0)
    torch.manual_seed(0)
    cls = LlamaForSequenceClassification if head == "seqcls" else LlamaForTokenClassification
    cls(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, model_path) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny")
    return {"seqcls1": _tiny(root / "seqcls1", "seqcls", model_path, num_labels=1),
            "seqcls2": _tiny(root / "seqcls2", "seqcls", model_path, num_labels=2),
            "plain": _tiny(root / "plain", "seqcls", model_path, num_labels=1, template=False),
            "step": _tiny(root / "step", "tokcls", model_path, extra_tokens=["<extra_0>"])}


@pytest.fixture(scope="module")
def judge(model_path):
    from workers.scoring.prm_kinds import JudgePRM, load_prm

    prm = load_prm(_spec("smollm2-135m-instruct", batch_size=4))  # the alias, detected as a causal LM
    assert isinstance(prm, JudgePRM)
    yield prm
    prm.close()


# ------------------------------------------------------------------------------------------------ judge
@pytest.mark.model
def test_judge_scores_are_probabilities_and_batching_changes_nothing(judge):
    reqs = _requests(system="Answer briefly.")
    batched = judge(reqs, ANSWERS)
    assert len(batched) == 4 and all(0.0 <= s <= 1.0 for s in batched)
    judge.batch_size = 1
    try:
        single = judge(reqs, ANSWERS)
    finally:
        judge.batch_size = 4
    assert _close(batched, single), (batched, single)
    assert judge(reqs[1:2], ANSWERS[1:2]) == pytest.approx(batched[1:2], abs=1e-4)


@pytest.mark.model
def test_judge_prompt_holds_question_reference_and_candidate(judge):
    text = judge.tokenizer.decode(judge.encode(_requests()[1], "7"))
    assert QUESTIONS[1] in text and "Reference answer:\n7" in text and "\\boxed{7}" in text
    assert "Reference answer" not in judge.tokenizer.decode(judge.encode(_requests()[1], None))


@pytest.mark.model
def test_judge_cuts_the_middle_of_a_candidate_too_long_for_max_length(judge):
    long = _requests(candidates=["step one. " * 400] + CANDIDATES[1:])
    judge.max_length = 256
    try:
        ids = judge.encode(long[0], "5")
        scores = judge(long, ANSWERS)
    finally:
        judge.max_length = 8192
    assert len(ids) <= 256 and "Is the proposed solution correct?" in judge.tokenizer.decode(ids)
    assert all(0.0 <= s <= 1.0 for s in scores)


# -------------------------------------------------------------------------------------------- embedding
def test_embedding_prm_from_the_registry_prefers_a_paraphrase():
    from workers.scoring import prms
    from workers.scoring.prm_kinds import EmbeddingPRM

    prm = prms.create("embedding", _spec("embedding", batch_size=2))
    try:
        assert isinstance(prm, EmbeddingPRM) and prm.needs_ground_truth
        reference = "The cat is sleeping on the sofa."
        reqs = _requests(["Where is the cat?"] * 3, ["A cat naps on the couch.", "Stock prices fell sharply today.",
                                                     "The cat is sleeping on the sofa."])
        paraphrase, unrelated, same = prm(reqs, [reference] * 3)
        assert paraphrase > unrelated + 0.2 and same == pytest.approx(1.0, abs=1e-4)
        assert prm(reqs[:1], [None]) == [0.0]
    finally:
        prm.close()


# ------------------------------------------------------------------------------------------- scalar RM
@pytest.mark.parametrize("variant", ["seqcls1", "seqcls2", "plain"])
def test_seqcls_plumbing_batched_and_padding_invariant(tiny, variant):
    from workers.scoring.prm_kinds import SeqClsPRM, load_prm

    prm = load_prm(_spec(tiny[variant], batch_size=3))
    assert isinstance(prm, SeqClsPRM)
    reqs = _requests(system="You are careful.")
    try:
        right = prm(reqs, ANSWERS)
        assert len(right) == 4 and all(isinstance(s, float) and math.isfinite(s) for s in right)
        assert len({round(s, 6) for s in right}) > 1  # the random model does look at its input
        if variant == "seqcls2":
            assert all(0.0 <= s <= 1.0 for s in right)
        prm.padding_side = "left"
        left = prm(reqs, ANSWERS)
        prm.batch_size = 1
        single = prm(reqs, ANSWERS)
        again = prm(reqs[2:] + reqs + reqs[:1], ANSWERS[2:] + ANSWERS + ANSWERS[:1])  # repeats are scored once
    finally:
        prm.close()
    assert _close(right, left) and _close(right, single), (right, left, single)
    assert _close(again, right[2:] + right + right[:1])
    assert prm.model is None
    with pytest.raises(PermanentError, match="closed"):
        prm(reqs, ANSWERS)


# ------------------------------------------------------------------------------------------------ step
def test_step_prm_one_probability_per_step_batched_and_padding_invariant(tiny):
    from workers.scoring.prm_kinds import StepPRM, load_prm

    prm = load_prm(_spec(tiny["step"], batch_size=4, padding_side="right"))
    assert isinstance(prm, StepPRM)
    reqs = _requests(candidates=CANDIDATES[:3] + ["one<extra_0>two\n\n\n\nthree"])
    try:
        text = prm.tokenizer.decode(prm.encode(reqs[1])[0])
        assert StepPRM.SYSTEM in text and QUESTIONS[1] in text and text.count("<extra_0>") == 3
        right = prm(reqs, ANSWERS)
        assert [len(s) for s in right] == [1, 3, 2, 2]  # a step token in the text is not a step; blank steps go
        assert all(0.0 <= v <= 1.0 for s in right for v in s)
        assert len({round(v, 6) for s in right for v in s}) > 1
        prm.padding_side = "left"
        left = prm(reqs, ANSWERS)
        prm.batch_size = 1
        single = prm(reqs, ANSWERS)
        prm.max_length = len(prm.encode(reqs[1])[0]) - 8  # the last separator no longer fits
        cut = prm(reqs[1:2], ANSWERS[1:2])
    finally:
        prm.close()
    assert _close(right, left) and _close(right, single), (right, left, single)
    assert cut[0][:2] == pytest.approx(right[1][:2], abs=1e-4) and cut[0][2] == 0.0


def test_step_token_must_be_one_token(tiny):
    from workers.scoring.prm_kinds import load_prm

    with pytest.raises(ConfigError, match=r"--prm_kwargs 'step_token'.*<extra_9>.*exactly one"):
        load_prm(_spec(tiny["step"], step_token="<extra_9>"))


# ------------------------------------------------------------------------------------ detection, errors
def test_kind_is_told_by_the_model_files(tiny, model_path, tmp_path):
    from workers.scoring.prm_kinds import default_embedding_model, prm_kind

    assert prm_kind(tiny["seqcls1"]) == "seqcls"
    assert prm_kind(tiny["step"]) == "step"
    assert prm_kind(model_path) == prm_kind("smollm2-135m-instruct") == "judge"
    assert prm_kind(default_embedding_model()) == prm_kind("embedding") == "embedding"
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForProcessRewardModel"]}))
    assert prm_kind(str(tmp_path / "qwen")) == "step"
    assert prm_kind(tiny["seqcls1"], {"kind": "judge"}) == "judge"
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ModelLoadError, match=r"--prm_model .*odd.*BertForMaskedLM.*kind"):
        prm_kind(str(tmp_path / "odd"))


@pytest.mark.parametrize("kwargs, message", [
    ({"batchsize": 4}, r"--prm_kwargs 'batchsize': not an option of the seqcls PRM; allowed: batch_size, device"),
    ({"step_token": "<extra_0>"}, r"--prm_kwargs 'step_token': not an option of the seqcls PRM"),
    ({"batch_size": 0}, r"--prm_kwargs 'batch_size': 0 is not a whole number >= 1"),
    ({"padding_side": "middle"}, r"--prm_kwargs 'padding_side'"),
    ({"kind": "oracle"}, r"--prm_kwargs 'kind': 'oracle' is not one of seqcls, step, judge, embedding"),
])
def test_bad_prm_kwargs_are_refused_before_loading(tiny, kwargs, message):
    from workers.scoring.prm_kinds import load_prm

    with pytest.raises(ConfigError, match=message):
        load_prm(_spec(tiny["seqcls1"], **kwargs))


def test_embedding_refuses_options_of_other_kinds():
    from workers.scoring import prms

    with pytest.raises(ConfigError, match=r"'max_length': not an option of the embedding PRM; allowed: batch_size"):
        prms.create("embedding", _spec("embedding", max_length=64))


def test_missing_model_is_a_model_load_error(tmp_path):
    from workers.scoring.prm_kinds import load_prm

    missing = tmp_path / "no-such-prm"
    with pytest.raises(ModelLoadError, match=re.escape(f"--prm_model {str(missing)!r}: no such model folder")):
        load_prm(_spec(str(missing)))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ModelLoadError, match=r"--prm_model '.*broken': cannot load .*broken"):
        load_prm(_spec(str(tmp_path / "broken")))


def test_validate_scores_names_the_model_and_the_problem():
    from workers.scoring.base import validate_scores

    assert validate_scores("m", [1, [0.5, 0.25]], 2) == [1.0, [0.5, 0.25]]
    with pytest.raises(PermanentError, match=r"PRM 'm': returned 1 scores for 2 requests"):
        validate_scores("m", [0.1], 2)
    with pytest.raises(PermanentError, match=r"PRM 'm': score of request 1 is NaN"):
        validate_scores("m", [0.1, [0.2, float("nan")]], 2)
    with pytest.raises(PermanentError, match=r"request 0 got an empty list"):
        validate_scores("m", [[]], 1)
    with pytest.raises(PermanentError, match=r"request 0 is not a number: 'x'"):
        validate_scores("m", ["x"], 1)


def test_an_uncached_prm_hub_id_fails_at_once_when_offline(monkeypatch):
    from workers.scoring.prm_common import resolve_prm_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache, and the hub is offline"):
        resolve_prm_path("some-org/some-prm")
    assert time.monotonic() - started < 5  # not after the hub client's retries
