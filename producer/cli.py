"""The ``producer`` command: parses options and calls the library; nothing else lives here."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from producer.options import add_job_options, spec_from_args
from producer.submit import run_local
from schemas.errors import ConfigError, SampleFleetError

log = logging.getLogger("producer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="producer", description="samplefleet: sample N candidates per prompt "
                                     "of a dataset and write them as chat jsonl (swift sample's job).")
    sub = parser.add_subparsers(dest="command", required=True)
    submit = sub.add_parser("submit", help="sample a dataset (in this process when no broker is given)",
                            description="Sample N candidates for each prompt of DATASET and write them as jsonl. "
                            "Option names follow `swift sample`.")
    add_job_options(submit)
    submit.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar")
    submit.add_argument("--log_level", "--log-level", default="WARNING", help="logging level (default WARNING)")
    return parser


# swift sample options that have no meaning here, with what to do instead.
SWIFT_ONLY = {
    "--model_type": "samplefleet reads the architecture from the model folder; drop it",
    "--template": "samplefleet always uses the model's own chat template; drop it",
    "--sampler_type": "only plain sampling exists so far; drop it",
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        hints = [f"{u.split('=')[0]}: {SWIFT_ONLY[u.split('=')[0]]}" for u in unknown if u.split("=")[0] in SWIFT_ONLY]
        parser.error(f"unrecognized arguments: {' '.join(unknown)}" + ("".join(f"\n  {h}" for h in hints)))
    return args


def _quiet_libraries() -> None:
    """Keep transformers/datasets' own bars and warnings out of the user's terminal."""
    for key, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("TOKENIZERS_PARALLELISM", "false"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(key, value)


def submit(args: argparse.Namespace) -> int:
    progress = not args.__dict__.pop("no_progress")
    spec = spec_from_args(args)
    result = run_local(spec, progress=progress)
    counts = result.manifest["counts"]
    notes = [f"{counts[k]} {label}" for k, label in (
        ("skipped_prompts", "prompts skipped"), ("dropped_prompts", "prompts without a row (see the manifest)"),
        ("short_prompts", "prompts with fewer than N candidates"), ("bad_rows", "bad rows skipped")) if counts[k]]
    print(f"wrote {counts['rows']} rows for {counts['prompts']} prompts ({counts['candidates']} samples, "
          f"{counts['tokens']} tokens{''.join(', ' + n for n in notes)}) to {result.path} in {result.seconds:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=args.__dict__.pop("log_level").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    try:
        return submit(args)
    except ConfigError as exc:
        print(f"producer: error: {exc}", file=sys.stderr)
        return 2
    except SampleFleetError as exc:
        print(f"producer: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("producer: interrupted; finished shards are kept, continue with --resume true", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
