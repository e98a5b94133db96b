"""producer.options: swift-style command lines -> a validated JobSpec, or an error that names the option."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest

if __name__ == "__main__":  # run as a script (it prints the table): conftest and the kits are in tests/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT  # noqa: E402
from producer.options import add_job_options, spec_from_args
from schemas import DatasetSpec, JobSpec
from schemas.errors import ConfigError

BASE = ["data.jsonl", "--model", "m"]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_job_options(parser)
    return parser.parse_args(list(argv))


def spec(*argv: str) -> JobSpec:
    return spec_from_args(parse(*argv))


def dump(s: JobSpec) -> dict:
    return s.model_dump(exclude={"output_file"})


def dashed(argv: list[str]) -> list[str]:
    return [a.replace("_", "-") if a.startswith("--") else a for a in argv]


def value(s: JobSpec, path: str):
    obj = s
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


# --- values reach the spec, in both spellings ------------------------------------------------------------------

OPTIONS = [
    (["--num_return_sequences", "8"], "sampling.num_return_sequences", 8),
    (["--max_new_tokens", "16"], "sampling.max_new_tokens", 16),
    (["--temperature", "0.7"], "sampling.temperature", 0.7),
    (["--top_k", "0"], "sampling.top_k", 0),
    (["--top_p", "0.9"], "sampling.top_p", 0.9),
    (["--repetition_penalty", "1.1"], "sampling.repetition_penalty", 1.1),
    (["--stop_words", "</s>", "###"], "sampling.stop_words", ["</s>", "###"]),
    (["--seed", "3"], "sampling.seed", 3),
    (["--sampler_engine", "pt"], "sampler_engine", "pt"),
    (["--dataset_shuffle", "false"], "dataset_shuffle", False),
    (["--shuffle_buffer", "5"], "shuffle_buffer", 5),
    (["--data_seed", "7"], "data_seed", 7),
    (["--system", "Be brief."], "system", "Be brief."),
    (["--num_return_sequences", "8", "--n_best_to_keep", "2"], "n_best_to_keep", 2),
    (["--output_dir", "out"], "output_dir", "out"),
    (["--output_file", "run.jsonl"], "output_file", "run.jsonl"),
    (["--override_exist_file", "true"], "override_exist_file", True),
    (["--override_exist_file"], "override_exist_file", True),
    (["--skip_bad_rows", "yes"], "skip_bad_rows", True),
    (["--shard_size", "4"], "shard_size", 4),
    (["--data_range", "1", "3"], "data_range", (1, 3)),
    (["--max_batch_size", "9"], "max_batch_size", 9),
    (["--max_batch_tokens", "4096"], "max_batch_tokens", 4096),
    (["--torch_dtype", "bfloat16"], "torch_dtype", "bfloat16"),
    (["--engine_kwargs", '{"a": 1, "b": [true]}'], "engine_kwargs", {"a": 1, "b": [True]}),
]


@pytest.mark.parametrize("argv, path, expected", OPTIONS)
def test_option_sets_field(argv, path, expected):
    assert value(spec(*BASE, *argv), path) == expected


@pytest.mark.parametrize("argv, path, expected", OPTIONS)
def test_dash_spelling_sets_field(argv, path, expected):
    assert value(spec(*BASE, *dashed(argv)), path) == expected


def test_underscore_and_dash_spellings_give_equal_specs():
    argv = ["--num_return_sequences", "4", "--max_new_tokens", "32", "--data_seed", "1", "--n_best_to_keep", "2",
            "--override_exist_file", "true", "--skip_bad_rows", "--data_range", "0", "2", "--engine_kwargs", '{"x": 1}',
            "--stop_words", "END", "--max_batch_tokens", "100", "--torch_dtype", "float16"]
    assert dump(spec(*BASE, *argv)) == dump(spec(*BASE, *dashed(argv)))


def test_defaults():
    s = spec(*BASE)
    assert dump(s) == dump(JobSpec(model="m", output_file="x.jsonl", datasets=[DatasetSpec.parse("data.jsonl")]))
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}\.jsonl", s.output_file)


@pytest.mark.parametrize("text, expected", [("true", True), ("True", True), ("1", True), ("on", True),
                                            ("false", False), ("FALSE", False), ("0", False), ("no", False)])
def test_boolean_spellings(text, expected):
    assert spec(*BASE, "--skip_bad_rows", text).skip_bad_rows is expected


def test_num_sampling_batch_size_sets_shard_size():
    assert spec(*BASE, "--num_sampling_batch_size", "7").shard_size == 7


def test_stop_is_stop_words():
    assert spec(*BASE, "--stop", "a", "b").sampling.stop_words == ["a", "b"]


def test_bare_resume_with_output_file():
    s = spec(*BASE, "--resume", "--output_file", "run.jsonl")
    assert s.resume is True and s.output_file == "run.jsonl"


# --- datasets ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["a.jsonl", "--model", "m"], ["a.jsonl"]),
    (["--model", "m", "a.jsonl#5"], ["a.jsonl#5"]),
    (["--model", "m", "--dataset", "a.jsonl", "b.jsonl#2"], ["a.jsonl", "b.jsonl#2"]),
    (["--dataset", "a.jsonl", "--model", "m", "--dataset", "id:sub#3"], ["a.jsonl", "id:sub#3"]),
    (["p.jsonl", "--model", "m", "--dataset", "a.jsonl"], ["p.jsonl", "a.jsonl"]),
])
def test_datasets_positional_and_option(argv, expected):
    assert spec(*argv).datasets == [DatasetSpec.parse(d) for d in expected]


# --- bad values -> ConfigError naming the option ------------------------------------------------------------------

@pytest.mark.parametrize("argv, names", [
    (["--n_best_to_keep", "5", "--num_return_sequences", "2"], ["--n_best_to_keep", "--num_return_sequences"]),
    (["--temperature", "-1"], ["--temperature"]),
    (["--top_p", "0"], ["--top_p"]),
    (["--num_return_sequences", "0"], ["--num_return_sequences"]),
    (["--torch_dtype", "int3"], ["--torch_dtype", "int3"]),
    (["--data_range", "3", "2"], ["--data_range"]),
    (["--data_range", "0", "0"], ["--data_range"]),
    (["--shard_size", "0"], ["--shard_size"]),
    (["--output_file", "a/b.jsonl"], ["--output_file"]),
    (["--stop_words", ""], ["--stop_words"]),
])
def test_bad_value_names_option(argv, names):
    with pytest.raises(ConfigError) as err:
        spec(*BASE, *argv)
    for name in names:
        assert name in str(err.value)


def test_resume_without_output_file():
    with pytest.raises(ConfigError, match="--resume.*--output_file"):
        spec(*BASE, "--resume")


def test_resume_false_needs_no_output_file():
    assert spec(*BASE, "--resume", "false").resume is False


def test_no_dataset():
    with pytest.raises(ConfigError, match="no dataset"):
        spec("--model", "m")


def test_missing_model():
    with pytest.raises(ConfigError, match="--model"):
        spec("data.jsonl")


@pytest.mark.parametrize("dataset", ["data.jsonl#abc", "data.jsonl#0", "data.jsonl#"])
def test_bad_row_count(dataset):
    with pytest.raises(ConfigError, match=re.escape(dataset.partition("#")[1] + dataset.partition("#")[2])):
        spec(dataset, "--model", "m")


# --- argparse-level errors exit with status 2 ---------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--engine_kwargs", "{not json"],
    ["--engine_kwargs", "[1, 2]"],
    ["--dataset_shuffle", "maybe"],
    ["--num_return_sequences", "many"],
    ["--top_k", "1.5"],
    ["--data_range", "1"],
    ["--no_such_option", "1"],
])
def test_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as err:
        parse(*BASE, *argv)
    assert err.value.code == 2
    assert "error" in capsys.readouterr().err


def test_help_lists_swift_names(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    out = capsys.readouterr().out
    for name in ("--num_return_sequences", "--n_best_to_keep", "--dataset_shuffle", "--num_sampling_batch_size",
                 "--data_range", "--engine_kwargs", "--override_exist_file", "--resume"):
        assert name in out


# --- swift's command lines: repeated lists, typos, options we do not take ------------------------------------------

def _main(*argv: str, capsys) -> tuple[int, str]:
    from producer.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("flag, field", [("--cache_files", "cache_files"), ("--external_plugins", "external_plugins"),
                                          ("--stop_words", "stop_words"), ("--stop", "stop_words")])
def test_repeated_list_options_extend(flag, field):
    s = spec(*BASE, flag, "a", "b", flag, "c", *(["--sampler_engine", "no"] if flag == "--cache_files" else []))
    got = s.sampling.stop_words if field == "stop_words" else getattr(s, field)
    assert got == ["a", "b", "c"]


@pytest.mark.parametrize("typo, suggestion", [("--num_return_sequence", "--num_return_sequences"),
                                              ("--max_new_token", "--max_new_tokens"),
                                              ("--n_best_to_kep", "--n_best_to_keep"),
                                              ("--output-fil", "--output-file")])
def test_a_prefix_or_typo_is_refused_with_the_close_name(typo, suggestion, capsys):
    code, err = _main("submit", "d.jsonl", "--model", "m", typo, "3", capsys=capsys)
    assert code == 2
    assert f"{typo}: unknown option; did you mean {suggestion}?" in err


def test_no_subcommand_matches_a_prefix(capsys):
    code, err = _main("status", "job-1", "--brok", "redis://x", capsys=capsys)
    assert code == 2 and "--brok: unknown option; did you mean --broker?" in err


def test_a_far_off_flag_gets_no_guess(capsys):
    code, err = _main("submit", "d.jsonl", "--model", "m", "--frobnicate", capsys=capsys)
    assert code == 2 and "--frobnicate: unknown option\n" in err + "\n"


SWIFT_DOC = ROOT / "docs" / "SWIFT_OPTIONS.md"
SWIFT_BEGIN = "<!-- options: generated by `python tests/unit/test_options.py`; do not edit by hand -->"
SWIFT_END = "<!-- end of options -->"


def swift_table() -> str:
    from producer.options import SWIFT_OPTIONS

    rows = ["| swift sample option | what to do instead |", "| --- | --- |"]
    rows += [f"| `{name}` | {note.replace('|', '/')} |" for name, note in SWIFT_OPTIONS.items()]
    return "\n".join(rows)


def test_the_swift_options_doc_lists_exactly_the_table():
    text = SWIFT_DOC.read_text(encoding="utf-8")
    assert text.split(SWIFT_BEGIN)[1].split(SWIFT_END)[0].strip() == swift_table(), \
        "regenerate: python tests/unit/test_options.py"


def _swift_names() -> list[str]:
    from producer.options import SWIFT_OPTIONS

    return list(SWIFT_OPTIONS)


@pytest.mark.parametrize("name", _swift_names())
def test_every_swift_option_we_do_not_take_says_what_to_do(name, capsys):
    from producer.options import SWIFT_OPTIONS

    for spelling in (name, name.replace("_", "-")):
        code, err = _main("submit", "d.jsonl", "--model", "m", spelling, "x", capsys=capsys)
        assert code == 2, err
        assert f"{spelling}: a swift sample option samplefleet does not take: {SWIFT_OPTIONS[name]}" in err


def test_swift_yaml_config_and_client_base_url_in_engine_kwargs(capsys):
    code, err = _main("submit", "sample.yaml", capsys=capsys)
    assert code == 2 and "sample.yaml: swift's YAML config form is not read" in err
    code, err = _main("submit", "d.jsonl", "--model", "m", "--sampler_engine", "client", "--engine_kwargs",
                      '{"base_url": "http://h:8000/v1"}', capsys=capsys)
    assert code == 2 and "move it to --base_url URL" in err


def test_use_hf_true_is_the_default_and_false_is_modelscope():
    assert dump(spec(*BASE, "--use_hf", "true")) == dump(spec(*BASE)) == dump(spec(*BASE, "--use-hf"))
    assert spec(*BASE).use_hf is True and spec(*BASE, "--use_hf", "false").use_hf is False  # see test_modelscope.py


def test_swift_per_gpu_batch_size_is_the_shard_size():
    assert spec(*BASE, "--num_sampling_per_gpu_batch_size", "6").shard_size == 6


if __name__ == "__main__":
    sys.stdout.write(swift_table() + "\n")
