"""The ``producer`` command: parses options and calls the library; nothing else lives here."""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

from producer.options import SWIFT_OPTIONS, add_job_options, spec_from_args
from producer.submit import check_scoring, run_local
from schemas import JobSpec
from schemas.errors import ConfigError, SampleFleetError
from schemas.output_names import OutputNames
from schemas.jobstate import Status
from schemas.settings import settings
from workers.broker import tls_options

log = logging.getLogger("producer")

# Exit codes: 2 for a bad command line, option or setting (argparse's errors, ConfigError); 1 for everything
# that fails while working (bad data, output in the way, a model that cannot load, a service, a disk);
# 130 after Ctrl-C.
EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def _common(parser: argparse.ArgumentParser, *, broker_help: str) -> None:
    parser.add_argument("--broker", help=broker_help)
    parser.add_argument("--log_level", "--log-level", default="WARNING", help="logging level (default WARNING)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (also "
                        "SAMPLEFLEET_DEBUG=1)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="producer", allow_abbrev=False, description="samplefleet: sample N "
                                     "candidates per prompt of a dataset and write them as chat jsonl (swift "
                                     "sample's job), in this process or over a fleet of Celery workers.")
    sub = parser.add_subparsers(dest="command", required=True)
    submit = sub.add_parser("submit", help="sample a dataset (in this process when no broker is given)",
                            description="Sample N candidates for each prompt of DATASET and write them as jsonl. "
                            "Option names follow `swift sample`.")
    add_job_options(submit)
    submit.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar")
    submit.add_argument("--wait", action="store_true", help="with --broker: show progress until the job ends")
    _common(submit, broker_help="Redis URL of a fleet (default $SAMPLEFLEET_BROKER_URL); without one the job "
            "runs in this process")
    for name, text in (("status", "a job's progress, failed shards and throughput"),
                       ("cancel", "stop a job: workers skip its remaining shards"),
                       ("resume", "re-enqueue a job's shards that are neither done nor in flight"),
                       ("wait", "show a job's progress until it ends")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("job", help="job id (see `producer list`)")
        if name == "resume":
            cmd.add_argument("--wait", action="store_true", help="show progress until the job ends")
        cmd.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar")
        _common(cmd, broker_help="Redis URL of the fleet (default $SAMPLEFLEET_BROKER_URL)")
    listing = sub.add_parser("list", help="the fleet's jobs, newest first")
    _common(listing, broker_help="Redis URL of the fleet (default $SAMPLEFLEET_BROKER_URL)")
    report = sub.add_parser("report", help="write a self-contained HTML page about a finished run",
                            description="Rewards, pass rates, pass@k, lengths, throughput, the prompts that got no "
                            "row and the options of a finished run, as one HTML file with inline images.")
    report.add_argument("target", metavar="OUTPUT_FILE_OR_JOB_ID", help="the run's .jsonl, or a fleet job id")
    report.add_argument("--output", help="where to write the page (default: <output name>.report.html beside it)")
    _common(report, broker_help="with a job id: Redis URL of the fleet (default $SAMPLEFLEET_BROKER_URL)")
    metrics = sub.add_parser("metrics", help="serve queue depths and job progress for Prometheus on /metrics")
    metrics.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    metrics.add_argument("--port", type=int, default=9808, help="port (default 9808)")
    _common(metrics, broker_help="Redis URL of the fleet (default $SAMPLEFLEET_BROKER_URL)")
    for command in sub.choices.values():  # options are never matched by prefix, in every subcommand
        command.allow_abbrev = False
    return parser


def _hint(flag: str, known: list[str]) -> str:
    """What to do about an unknown flag: swift's note for it, or the closest known name."""
    name = "--" + flag.split("=")[0].lstrip("-").replace("-", "_")
    if name in SWIFT_OPTIONS:
        return f"{flag.split('=')[0]}: a swift sample option samplefleet does not take: {SWIFT_OPTIONS[name]}"
    close = difflib.get_close_matches(flag.split("=")[0], known, n=1, cutoff=0.75)
    return f"{flag.split('=')[0]}: unknown option" + (f"; did you mean {close[0]}?" if close else "")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    flags = [u for u in unknown if u.startswith("--")]
    if unknown:
        sub = parser._subparsers._group_actions[0].choices[args.command]  # the subcommand's own options
        known = [o for o in sub._option_string_actions if o.startswith("--")]
        hints = [_hint(f, known) for f in flags]
        sub.error(f"unrecognized arguments: {' '.join(unknown)}" + "".join(f"\n  {h}" for h in hints))
    return args


def _quiet_libraries() -> None:
    """Keep transformers/datasets' own bars and warnings out of the user's terminal."""
    for key, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("TOKENIZERS_PARALLELISM", "false"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(key, value)
    # transformers' notice about a keyword of its own forward, on every run: nothing a user can act on
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)


def _fleet(args: argparse.Namespace):
    from producer.fleet import Fleet, redact  # only fleet commands need celery and redis

    if not args.broker:
        raise ConfigError(f"`producer {args.command}` needs a fleet: pass --broker redis://HOST:PORT/DB "
                          "or set SAMPLEFLEET_BROKER_URL")
    scheme, env = args.broker.split("://", 1)[0], settings()
    rabbitmq = scheme in ("amqp", "amqps", "pyamqp") and env.state_url and env.result_url  # job state stays in Redis
    if scheme not in ("redis", "rediss", "unix") and not rabbitmq:
        raise ConfigError(f"--broker {redact(args.broker)}: not a Redis URL; expected redis://, rediss:// or unix:// "
                          "(or amqp:// for RabbitMQ, with SAMPLEFLEET_STATE_URL and SAMPLEFLEET_RESULT_URL on Redis)")
    try:
        tls_options(args.broker)  # a bad ssl_cert_reqs fails here, not when the first task is sent
        return Fleet.from_settings(args.broker)
    except ValueError as exc:  # redis-py's URL parsing: a bad port, a bad query option
        raise ConfigError(f"--broker {redact(args.broker)}: {exc}") from None


def submit(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    spec = args.spec = spec_from_args(args)  # kept for the error message: how to resume this very run
    if args.broker:
        check_scoring(spec)  # before the broker is reached: a typo in a name costs no connection
        fleet = _fleet(args)
        job_id = fleet.submit(spec)
        print(job_id)
        return _finish(fleet.wait(job_id, progress=progress)) if args.wait else 0
    result = run_local(spec, progress=progress)
    counts = result.manifest["counts"]
    notes = [f"{counts[k]} {label}" for k, label in (
        ("skipped_prompts", "prompts skipped"), ("dropped_prompts", "prompts without a row (see the manifest)"),
        ("short_prompts", "prompts with fewer than N candidates"), ("bad_rows", "bad rows skipped")) if counts[k]]
    print(f"wrote {counts['rows']} rows for {counts['prompts']} prompts ({counts['candidates']} samples, "
          f"{counts['tokens']} tokens{''.join(', ' + n for n in notes)}) to {result.path} in {result.seconds:.1f}s")
    return 0


def _finish(status) -> int:
    print(status.describe())
    if status.status in (Status.PARTIAL, Status.FAILED):
        written = "its output lacks them" if status.status == Status.PARTIAL else "no output file was written"
        print(f"job {status.job_id} is {status.status.upper()}: {len(status.failed)} shards failed (see above), "
              f"{written}; `producer resume {status.job_id}` retries them", file=sys.stderr)
        return 1
    return 0 if status.status == Status.DONE else 1


def command(args: argparse.Namespace) -> int:
    if args.broker is None:
        args.broker = settings().broker_given
    if args.command == "submit":
        return submit(args)
    if args.command == "report":
        from producer.report import write_report

        if not os.path.exists(args.target) and not args.broker:
            raise ConfigError(f"report {args.target}: no such output file (a fleet job id needs --broker or "
                              "SAMPLEFLEET_BROKER_URL)")
        job = None if os.path.exists(args.target) else _fleet(args).status(args.target)
        if job is not None and job.status == Status.FAILED:
            raise ConfigError(f"report {args.target}: the job failed and wrote no output file (`producer status "
                              f"{args.target}` lists the missing shards; `producer resume {args.target}` retries them)")
        target = args.target if job is None else job.output
        if target is None:
            raise ConfigError(f"report {args.target}: no such file, and the fleet's job has no output yet")
        print(f"wrote {write_report(target, args.output)}")
        return 0
    fleet = _fleet(args)
    if args.command == "list":
        for status in fleet.list():
            print(status.describe().splitlines()[0])
        return 0
    if args.command == "metrics":
        from producer.metrics import serve

        serve(fleet, args.host, args.port)
        return 0
    if args.command == "status":
        fleet.sweep()  # the reaper's pass, as the workers make it: a lost worker's shard shows as re-queued
        print(fleet.status(args.job).describe())
    elif args.command == "cancel":
        fleet.cancel(args.job)
        print(f"job {args.job} cancelled")
    elif args.command == "resume":
        fleet.sweep()  # a lost worker's shard is sent again first, so it is not counted as needing a resume
        print(f"job {args.job}: {fleet.resume(args.job)} shards re-enqueued (a job whose shards are all done is "
              "sent to be finalised)")
        if args.wait:
            return _finish(fleet.wait(args.job, progress=not args.no_progress))
    elif args.command == "wait":
        return _finish(fleet.wait(args.job, progress=not args.no_progress))
    return 0


def _resume_note(spec: JobSpec | None) -> str:
    """How to continue a local run that stopped, with its exact --output_file, once it has a parts folder."""
    if spec is None or "://" in spec.output_dir:
        return ""
    parts = Path(spec.output_dir).expanduser() / OutputNames(spec.output_file).parts
    if not parts.is_dir():
        return ""
    where = "" if spec.output_dir == "sample_output" else f" --output_dir {spec.output_dir}"
    return (f"\nproducer: the run's finished shards are kept in {parts}; continue it with the same options and "
            f"--resume true --output_file {spec.output_file}{where}")


def _debug(args: argparse.Namespace) -> bool:
    try:
        return bool(getattr(args, "debug", False) or settings().debug)
    except ConfigError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure ends as one ``producer: error:`` line (the traceback with --debug)."""
    args = _parse(argv)
    level = logging.getLevelName(args.log_level.upper())  # the number for a known name
    if not isinstance(level, int):
        print(f"producer: error: --log_level {args.log_level!r}: expected DEBUG, INFO, WARNING or ERROR",
              file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    try:
        return command(args)
    except KeyboardInterrupt as exc:
        error, message, code = exc, "interrupted", EXIT_INTERRUPTED
    except ConfigError as exc:
        error, message, code = exc, str(exc), EXIT_USAGE
    except SampleFleetError as exc:
        error, message, code = exc, str(exc), EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - a disk, a library, a plugin: one line, never a traceback
        message = f"{type(exc).__name__}: {exc}" + ("" if _debug(args) else " (run with --debug for the traceback)")
        error, code = exc, EXIT_FAILED
    if _debug(args):
        traceback.print_exception(error)
    print(f"producer: error: {message}{_resume_note(getattr(args, 'spec', None))}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
