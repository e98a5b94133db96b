"""swift's judge PRMs, ``--prm_model client`` and ``--prm_model qwen_max``: the judge's prompt and how its reply
is read (pure), and the whole path against a real ``vllm serve`` on 127.0.0.1 (tests/kits/vllm.py), in the
reference's stage-2 command."""
from __future__ import annotations

import json

import httpx
import pytest

from conftest import read_jsonl, write_jsonl
from producer.cli import main
from schemas import JobSpec
from schemas.errors import ConfigError
from workers.scoring import InferRequest, prms
from workers.scoring.prm_client import DASHSCOPE_URL, SYSTEM, ClientPRM, QwenMaxPRM, judge_messages, read_reward

TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3+4?"}]


def spec(prm: str, **kw) -> JobSpec:
    return JobSpec.model_validate({"model": "m", "datasets": [{"source": "d.jsonl"}], "output_file": "o.jsonl",
                                   "prm_model": prm, **kw})


def test_the_judge_sees_the_conversation_without_its_system_turn_the_reference_and_the_candidate():
    system, user = judge_messages(InferRequest(messages=[*TURNS, {"role": "assistant", "content": "It is 7."}]), "7")
    assert system == {"role": "system", "content": SYSTEM} and "**Reward: your-reward-value**" in SYSTEM
    assert json.dumps([TURNS[1]]) in user["content"] and "Be brief" not in user["content"]
    assert user["content"].index("What is 3+4?") < user["content"].index("\n7\n") < user["content"].index("It is 7.")


@pytest.mark.parametrize("reply, reward", [
    ("Clear and correct.\n\n**Reward: 0.8**", 0.8),
    ("Reward: -1.0", -1.0),
    ("Reward:0.25", 0.25),
    ("**Reward:** 1", 1.0),
    ("Wrong.\nReward: -0.5\n", -0.5),
    ("The form is Reward: your-reward-value, so: **Reward: 0.3**", 0.3),  # swift: 0.0 (the first one is read)
    ("Reward: 2e-1", 0.2),
    ("no reward given", 0.0),
    ("Reward: high", 0.0),
    ("Reward: nan", 0.0),
    ("", 0.0),
    (None, 0.0),
])
def test_the_reward_is_the_number_after_the_last_reward_label(reply, reward):
    assert read_reward(reply) == pytest.approx(reward)


def test_endpoints_models_and_keys(monkeypatch):
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    local = prms.create("client", spec("client", base_url="http://127.0.0.1:1/v1"))
    assert local.engine.url == "http://127.0.0.1:1/v1/chat/completions" and local.model == "qwen-plus"
    mine = prms.create("client", spec("client", base_url="http://a/v1", prm_kwargs={"base_url": "http://b/v1",
                                                                                      "model": "judge"}))
    assert mine.engine.url == "http://b/v1/chat/completions" and mine.model == "judge"
    with pytest.raises(ConfigError, match=r"--prm_model client: judging at DashScope .* needs its API key in "
                                          r"\$OPENAI_API_KEY"):
        prms.create("client", spec("client"))
    with pytest.raises(ConfigError, match=r"qwen_max: .* \$DASHSCOPE_API_KEY"):
        prms.create("qwen_max", spec("qwen_max"))
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-test")
    qwen = prms.create("qwen_max", spec("qwen_max", base_url="http://ignored/v1"))
    assert isinstance(qwen, QwenMaxPRM) and qwen.model == "qwen-max"
    assert qwen.engine.url == DASHSCOPE_URL + "/chat/completions" and qwen.engine.headers == {
        "Authorization": "Bearer sk-test"}
    assert isinstance(prms.create("client", spec("client")), ClientPRM)  # DashScope's key serves client too


@pytest.mark.parametrize("kwargs, message", [({"timeout": 0}, "'timeout': 0 is not seconds > 0"),
                                             ({"base_url": "ftp://x"}, "'base_url': 'ftp://x' is not an http"),
                                             ({"batch_size": 8}, "'batch_size': not an option of --prm_model client")])
def test_bad_options_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        prms.create("client", spec("client", base_url="http://127.0.0.1:1/v1", prm_kwargs=kwargs))


@pytest.mark.model
def test_client_prm_judges_through_a_real_server(vllm_server, tmp_path, monkeypatch):
    judge = {"model": "smol", "max_tokens": 24, "concurrency": 2, "max_retries": 1}
    prm = ClientPRM(vllm_server, **judge)
    requests = [InferRequest(messages=[*TURNS, {"role": "assistant", "content": text}])
                for text in ("It is 7.", "It is 8, because 3+4=8.")]
    scores = prm(requests, ["7", "7"])
    # what the server itself says to the same prompt, read the same way
    replies = [httpx.post(f"{vllm_server}/chat/completions", timeout=120, json={
        "model": "smol", "messages": judge_messages(r, "7"), "max_tokens": 24, "temperature": 0.0,
        "top_p": 1.0, "n": 1}).json()["choices"][0]["message"]["content"] for r in requests]
    assert scores == [read_reward(reply) for reply in replies]

    # the reference's stage 2 with --prm_model client at --base_url, and qwen_max pointed at the same server
    write_jsonl(tmp_path / "d.jsonl", [{"query": "What is 3+4?", "response": "7"}])
    write_jsonl(tmp_path / "stage1.jsonl", [{"messages": [{"role": "user", "content": "What is 3+4?"},
                                                          {"role": "assistant", "content": a}]}
                                            for a in ("7", "It is 7.", "8")])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DASHSCOPE_API_KEY", "unused-by-this-server")
    for name, where in (("client", ["--base_url", vllm_server]),
                        ("qwen_max", ["--prm_kwargs", json.dumps({**judge, "base_url": vllm_server})])):
        extra = where if name == "qwen_max" else [*where, "--prm_kwargs", json.dumps(judge)]
        code = main(["submit", "--no_progress", "--sampler_engine", "no", "--cache_files", "stage1.jsonl",
                     "--dataset", "d.jsonl", "--prm_model", name, *extra, "--prm_threshold", "-2",
                     "--num_return_sequences", "3", "--n_best_to_keep", "2", "--write_scores", "true",
                     "--output_file", f"{name}.jsonl"])
        assert code == 0
        manifest = json.loads((tmp_path / "sample_output" / f"{name}.manifest.json").read_text())
        assert sum(manifest["histograms"]["prm"].values()) == 3
        assert all(-1e6 < r["scores"]["prm"] < 1e6 for r in read_jsonl(tmp_path / "sample_output" / f"{name}.jsonl"))
