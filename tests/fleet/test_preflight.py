"""Reward-model settings fail before any work: ORM/PRM names, plugin files, --orm_kwargs / --prm_kwargs,
weights and thresholds are refused (exit code 2, one ``producer: error:`` line) before the dataset is counted,
a model loads, a progress bar shows or an output folder is made; in the embedded run and in a fleet submit.

The dataset of most cases is a named pipe: opening it blocks until someone writes, so a run that read its
data before refusing the option would hang here instead of returning.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, write_jsonl
from producer.cli import main
from schemas import JobSpec
from schemas.errors import ConfigError

NOT_A_CALLER = "from swift.rewards import orms\n\nclass NoCall:\n    pass\n\norms['nocall'] = NoCall\n"
RAISES_AT_IMPORT = "raise ImportError('needs a package this machine lacks')\n"
PLUGIN_ORM = ("from swift.rewards import orms\n\nclass Mine:\n    def __call__(self, completions, **kw):\n"
              "        return [1.0] * len(completions)\n\norms['mine'] = Mine\n")

CASES = [
    (["--orm_model", "nope"], "--orm_model 'nope': unknown ORM; known: accuracy"),
    (["--orm_model", "math,nope"], "--orm_model 'nope': unknown ORM"),
    (["--prm_model", "nope"], "--prm_model 'nope': unknown PRM (no such model folder either); known: client"),
    (["--orm_model", "math", "--orm_kwargs", '{"timeout": -1}'], "--orm_kwargs timeout=-1: must be"),
    (["--orm_model", "format", "--orm_kwargs", '{"pattern": "("}'], "--orm_kwargs pattern '(': not a valid regular"),
    (["--orm_model", "math,format", "--orm_kwargs", '{"timeout": 5}'], "--orm_kwargs 'timeout': with several ORMs"),
    (["--orm_model", "math,format", "--orm_weights", "nan", "1"], "--orm_weights [nan, 1.0]: must be a finite number"),
    (["--orm_model", "math", "--prm_threshold", "inf"], "--prm_threshold inf: must be a finite number"),
    (["--orm_model", "soft_overlong"], "--orm_model soft_overlong needs --orm_kwargs"),
    (["--prm_model", "embedding", "--prm_kwargs", '{"step_token": "x"}'], "--prm_kwargs 'step_token': not an option"),
    (["--prm_model", "client", "--prm_kwargs", '{"temperature": "hot"}'], "--prm_kwargs 'temperature': 'hot' is not"),
    (["--prm_model", "qwen_max"], "--prm_model qwen_max: judging at DashScope"),
    (["--external_plugins", "gone.py", "--orm_model", "math"], "--external_plugins gone.py: no such file"),
    (["--external_plugins", "nocall.py", "--orm_model", "nocall"], "--external_plugins nocall.py: reward model 'nocall': NoCall has no __call__"),
    (["--external_plugins", "broken.py", "--orm_model", "math"],
     "--external_plugins broken.py: failed to import: ImportError: needs a package this machine lacks"),
    (["--external_plugins", "mine.py", "--orm_model", "mine", "--orm_kwargs", '{"k": 1}'],
     "--orm_kwargs ['k']: ORM 'mine' is a plugin class, built with no arguments"),
]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with a named-pipe dataset and the plugin files of the cases."""
    os.mkfifo(tmp_path / "pipe.jsonl")
    (tmp_path / "nocall.py").write_text(NOT_A_CALLER)
    (tmp_path / "broken.py").write_text(RAISES_AT_IMPORT)
    (tmp_path / "mine.py").write_text(PLUGIN_ORM)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    return tmp_path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("options, message", CASES, ids=[" ".join(o)[:40] for o, _ in CASES])
def test_a_bad_reward_model_setting_stops_the_embedded_run_before_any_work(folder, capsys, options, message):
    code = main(["submit", "pipe.jsonl", "--model", "smollm2-135m-instruct", "--output_file", "o.jsonl", *options])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith(f"producer: error: {message}") and err.count("\n") == 1, err
    assert out == "" and not (folder / "sample_output").exists()


@pytest.mark.timeout(60)
def test_a_fleet_submit_refuses_it_before_reaching_the_broker(folder, capsys):
    code = main(["submit", "pipe.jsonl", "--model", "m", "--orm_model", "nope", "--broker",
                 "redis://127.0.0.1:9/0"])  # nothing listens there: reaching it would be another error
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("producer: error: --orm_model 'nope': unknown ORM"), err


@pytest.mark.timeout(60)
def test_the_fleet_library_call_records_nothing(folder, redis_server):
    import redis

    from producer.fleet import Fleet

    spec = JobSpec.model_validate({"model": "m", "datasets": [{"source": str(folder / "pipe.jsonl")}],
                                   "output_file": "o.jsonl", "external_plugins": [str(folder / "nocall.py")],
                                   "orm_model": "nocall"})
    with pytest.raises(ConfigError, match="NoCall has no __call__ or infer method"):
        Fleet(redis_server.url).submit(spec, open_timeout=1)
    assert redis.Redis.from_url(redis_server.url).dbsize() == 0


def test_an_unknown_orm_on_a_big_dataset_shows_no_progress_and_makes_no_folder(tmp_path):
    """As a user types it, progress bar on: the one line comes before the dataset's 200,000 rows are counted."""
    write_jsonl(tmp_path / "big.jsonl", ({"query": f"question {i}", "response": str(i)} for i in range(200_000)))
    run = subprocess.run([sys.executable, "-m", "producer", "submit", "big.jsonl", "--model", "smollm2-135m-instruct",
                          "--orm_model", "mathh"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == ("producer: error: --orm_model 'mathh': unknown ORM; known: "
                          f"{run.stderr.split('known: ')[1]}") and run.stderr.count("\n") == 1
    assert "prompts" not in run.stderr and "%" not in run.stderr  # no bar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl"]


def test_a_good_setting_passes_the_checks_and_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", [{"query": "q", "response": "1"}])
    write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "q"},
                                                     {"role": "assistant", "content": a}]} for a in ("1", "2")])
    (tmp_path / "mine.py").write_text(textwrap.dedent(PLUGIN_ORM))
    assert main(["submit", "--no_progress", "d.jsonl", "--sampler_engine", "no", "--cache_files", "c.jsonl",
                 "--external_plugins", "mine.py", "--orm_model", "mine,toolbench,react_format",
                 "--orm_weights", "1", "2", "3", "--num_return_sequences", "2", "--output_file", "o.jsonl"]) == 0
