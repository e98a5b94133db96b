"""The fork server inside the code sandbox: runs one candidate at a time, each in fresh processes of its own.

This file is read by ``workers.scoring.sandbox`` and run as ``python -I -S -c <this source>`` inside the
sandbox (bubblewrap: no network, no project files, its own pid namespace, an unprivileged uid), so it uses the
standard library only and imports nothing of the project. It reads one job per line (JSON) on stdin and writes
``.`` progress lines and then one result line per job on stdout.

Why a fork server: an interpreter forked from this warm one starts in about a millisecond, a fresh ``python``
in tens. Why the tests run here and the candidate in a process of its own: this server (the *judge*) never
runs candidate code; the candidate's functions run in the candidate process and are called over a pipe, with
arguments and results as plain data (None, bool, int, float, str, bytes, complex, list, tuple, dict, set). So
the candidate never sees the tests or the verdict channel: ``sys.exit`` before the asserts, a patched
``assert``, ``check`` or builtin, an object whose ``__eq__`` is always true, or lying on the pipe cannot make
a test pass. The server is non-dumpable, so a candidate (the same uid) can neither ptrace it nor read its
memory or descriptors; it can kill it, which fails that candidate and restarts the server.
"""
import json
import math
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback

FRAME_LIMIT = 32 << 20  # one call's arguments or result, encoded
PR_SET_DUMPABLE = 4


# --- plain data over a pipe: both sides ------------------------------------------------------------------------

def encode(value, depth=0):
    """``value`` as JSON-ready data, exact types only (an int subclass with a custom ``__eq__`` is refused)."""
    if depth > 200:
        raise ValueError("nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"f": repr(value)}
    if kind is list:
        return [encode(v, depth + 1) for v in value]
    if kind in (tuple, set, frozenset):
        return {{tuple: "t", set: "s", frozenset: "z"}[kind]: [encode(v, depth + 1) for v in value]}
    if kind is dict:
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    raise TypeError(f"unsupported type {kind.__name__} (plain data only)")


def decode(data):
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    (tag, body), = data.items()
    if tag == "f":
        return float(body)
    if tag == "t":
        return tuple(decode(v) for v in body)
    if tag in ("s", "z"):
        return (set if tag == "s" else frozenset)(decode(v) for v in body)
    if tag == "d":
        return {decode(k): decode(v) for k, v in body}
    if tag == "b":
        return bytes.fromhex(body)
    if tag == "c":
        return complex(*body)
    raise ValueError(f"unknown tag {tag!r}")


def send(fd, obj):
    data = json.dumps(obj).encode()
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data):]


def recv(fd, deadline):
    """One frame, or raise: TimeoutError past ``deadline``, EOFError when the other side is gone."""
    head = _read(fd, 4, deadline)
    size = int.from_bytes(head, "big")
    if size > FRAME_LIMIT:
        raise ValueError(f"a frame of {size} bytes (limit {FRAME_LIMIT})")
    return json.loads(_read(fd, size, deadline))


def _read(fd, size, deadline):
    out = b""
    while len(out) < size:
        wait = None if deadline is None else deadline - _now()
        if wait is not None and (wait <= 0 or not select.select([fd], [], [], wait)[0]):
            raise TimeoutError
        chunk = os.read(fd, size - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def _now():
    return time.monotonic()


# --- the processes -----------------------------------------------------------------------------------------------

def _limit(job, cpu_seconds):
    """This process's rlimits (inherited by anything it starts); stdio to /dev/null unless redirected later."""
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: past the file-size cap, die at once
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))  # SIGXCPU first, SIGKILL a second on
    for name, value in (("RLIMIT_AS", job["memory_mb"] << 20), ("RLIMIT_FSIZE", job["output_bytes"]),
                        ("RLIMIT_NPROC", job["processes"]), ("RLIMIT_NOFILE", 256), ("RLIMIT_CORE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))


def _keep_only(*fds):
    """Close every descriptor but ``fds`` (stdin/stdout/stderr point at /dev/null afterwards)."""
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        if std not in fds:
            os.dup2(null, std)
    keep = sorted(set(fds) | {0, 1, 2})
    low = 3
    for fd in keep:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 1 << 16)


def _nondumpable():
    try:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError, ImportError):
        pass  # documented: then a candidate of the same uid could read the judge's memory


def _fork(child):
    """Run ``child()`` in a new process (its own session) and return its pid; the child never returns."""
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.setsid()
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            child()
            code = 0
        except BaseException:  # noqa: B036 - the child must end here, whatever happened
            pass
        os._exit(code)
    return pid


def _candidate(job, workdir, requests, replies):
    """The candidate process: load the code, then answer calls until the judge closes the pipe."""
    _keep_only(requests, replies)
    os.chdir(workdir)
    _limit(job, job["cpu_seconds"])
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(job["code"], "<candidate>", "exec"), env)
        send(replies, {"ready": True})
    except BaseException as exc:  # noqa: B036 - SystemExit at load is a failure too
        send(replies, {"load": type(exc).__name__, "msg": str(exc)[:200]})
        return
    while True:
        try:
            call = recv(requests, None)
        except (EOFError, OSError):
            return
        try:
            fn = env.get(call["f"])
            if fn is None and isinstance(env.get("Solution"), type):  # LeetCode style (TACO's call problems)
                fn = getattr(env["Solution"](), call["f"])
            if fn is None:
                raise NameError(f"name {call['f']!r} is not defined")
            reply = {"ok": encode(fn(*decode(call["a"])))}
        except BaseException as exc:  # noqa: B036 - relayed to the test, which decides
            reply = {"raise": type(exc).__name__, "msg": str(exc)[:200]}
        send(replies, reply)


class Verdict(BaseException):
    """Ends the judge's run: the candidate process is gone, stuck or out of memory (a test's ``except
    Exception`` does not swallow it, and every later call raises it again)."""


def _relayed(name, message):
    """The candidate's exception as the test sees it: the builtin of that name (so a test expecting a
    ValueError gets one), else RuntimeError; ``candidate_error`` keeps the name for the verdict."""
    kind = getattr(__builtins__, name, None) if isinstance(name, str) else None
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        kind = RuntimeError
    try:
        exc = kind(message)
    except Exception:  # a builtin that wants other arguments (UnicodeDecodeError, ...)
        exc = RuntimeError(message)
    exc.candidate_error = name if isinstance(name, str) else "?"
    return exc


def _judge(job, requests, replies, progress):
    """The judge, in the server itself (never in a process that runs candidate code): runs the row's trusted
    setup and tests in a fresh namespace, each call of a candidate function relayed over the pipe."""
    timeout = job["timeout"]
    stopped = []  # the Verdict that ended the candidate, once one has

    def relay(name):
        def call(*args, **kwargs):
            if stopped:
                raise stopped[0]
            if kwargs:
                raise TypeError("keyword arguments are not supported by the sandboxed call")
            progress()
            request = {"f": name, "a": encode(list(args))}
            try:
                send(requests, request)
                reply = recv(replies, _now() + timeout)
                if isinstance(reply, dict) and "raise" not in reply:
                    return decode(reply["ok"])
                error, message = str(reply["raise"]), str(reply.get("msg", ""))[:200]
            except TimeoutError:
                stopped.append(Verdict("timeout"))
            except (EOFError, OSError):
                stopped.append(Verdict("gone"))  # the server tells how it ended
            except (ValueError, TypeError, KeyError, RecursionError, AttributeError):
                stopped.append(Verdict("crashed"))  # it wrote something that is not a reply
            if stopped:
                raise stopped[0]
            if error == "MemoryError":
                stopped.append(Verdict("memory"))
                raise stopped[0]
            raise _relayed(error, message)
        return call

    try:
        ready = recv(replies, _now() + timeout)
    except TimeoutError:
        return 0, "timeout: loading the code"
    except (EOFError, OSError):
        return 0, "gone: loading the code"
    except (ValueError, TypeError, KeyError, RecursionError, AttributeError):
        return 0, "crashed: loading the code"
    if not isinstance(ready, dict) or ready.get("ready") is not True:
        load = ready.get("load") if isinstance(ready, dict) else None
        if load == "MemoryError":
            return 0, "memory: loading the code"
        return 0, f"error: {load} loading the code" if isinstance(load, str) else "crashed: loading the code"
    env = {"__name__": "__main__"}
    try:
        exec(compile(job["setup"], "<setup>", "exec"), env)
    except Exception as exc:
        return 0, f"error: the row's setup code raised {type(exc).__name__}"
    for name in job["names"]:
        env[name] = relay(name)
    passed, first = 0, None
    for i, test in enumerate(job["tests"], 1):
        progress()
        try:
            exec(compile(test, f"<test {i}>", "exec"), env)
            passed += 1
            continue
        except Verdict as stop:
            first = first or f"{stop}: test {i}"
            break
        except AssertionError:
            verdict = f"wrong: test {i}{_where(test, i)}"
        except (Exception, SystemExit) as exc:
            verdict = f"error: {getattr(exc, 'candidate_error', type(exc).__name__)} on test {i}"
        first = first or verdict
        if not job["partial"]:
            break
    return passed, first or "pass"


def _where(test, number):
    """`` `the failing line` `` of a test, from the traceback being handled."""
    frames = [f for f in traceback.extract_tb(sys.exc_info()[2]) if f.filename == f"<test {number}>"]
    if not frames:
        return ""
    lines = test.splitlines()
    line = lines[frames[-1].lineno - 1].strip() if 0 < frames[-1].lineno <= len(lines) else ""
    return f" `{line[:120]}`" if line else ""


def _program(job, workdir, stdin_fd, stdout_fd, status):
    """A stdin/stdout program run: the code as ``__main__`` with the test's input on fd 0, output on fd 1."""
    os.dup2(stdin_fd, 0)
    os.dup2(stdout_fd, 1)
    _keep_only(0, 1, status)
    os.chdir(workdir)
    _limit(job, job["cpu_seconds"])
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    code = 0
    try:
        exec(compile(job["code"], "<candidate>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: B036 - reported by type to the server
        os.write(status, type(exc).__name__.encode()[:64])
        code = 1
    sys.stdout.flush()
    os._exit(code)


# --- the server --------------------------------------------------------------------------------------------------

class Server:
    def __init__(self, out_fd, own_pid_namespace):
        self.out = out_fd
        self.own_ns = own_pid_namespace
        self._told = 0.0

    def progress(self):
        """Tell the host we are alive (it restarts a server that is silent too long), at most once a second."""
        if _now() - self._told > 1.0:
            os.write(self.out, b".\n")
            self._told = _now()

    def _sweep(self, pids):
        """Kill what the candidate left running: every process of the namespace but us and its init (there we
        are alone with it), else the candidate's sessions; then reap our children."""
        if self.own_ns:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                try:
                    target()
                except (ProcessLookupError, PermissionError):
                    pass
        statuses = {}
        for pid in pids:
            try:
                statuses[pid] = os.waitpid(pid, 0)[1]
            except ChildProcessError:
                statuses[pid] = 0
        while True:  # children of ours the candidate started (outside a pid namespace they reparent to init)
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        return statuses

    def _wait(self, pid, deadline):
        """True when ``pid`` ended before ``deadline``."""
        fd = os.pidfd_open(pid)
        try:
            return bool(select.select([fd], [], [], max(0.0, deadline - _now()))[0])
        finally:
            os.close(fd)

    def calls(self, job, workdir):
        to_cand, requests = os.pipe()
        replies, from_cand = os.pipe()
        cand = _fork(lambda: _candidate(job, workdir, to_cand, from_cand))
        os.close(to_cand)
        os.close(from_cand)
        try:
            passed, verdict = _judge(job, requests, replies, self.progress)
        finally:
            os.close(requests)
            os.close(replies)
        ended = verdict.startswith("gone") and self._wait(cand, _now() + 0.5)
        status = self._sweep([cand])[cand]
        if verdict.startswith("gone"):  # how the candidate ended: by itself, or by a limit
            how = ("crashed" if not ended else "exited" if os.WIFEXITED(status)  # sys.exit / os._exit
                   else _signalled(os.WTERMSIG(status)))
            verdict = how + verdict[len("gone"):]
        return {"passed": passed, "verdict": verdict}

    def stdio(self, job, workdir):
        passed, first = 0, None
        for i, (given, wanted) in enumerate(job["tests"], 1):
            self.progress()
            verdict = self._one_program(job, workdir, given, wanted, i)
            passed += verdict is None
            first = first or verdict
            if verdict and not job["partial"]:
                break
        return {"passed": passed, "verdict": first or "pass"}

    def _one_program(self, job, workdir, given, wanted, number):
        stdin = tempfile.TemporaryFile(dir=workdir)
        stdin.write(given.encode())
        stdin.seek(0)
        stdout = tempfile.TemporaryFile(dir=workdir)
        status_r, status_w = os.pipe()
        pid = _fork(lambda: _program(job, workdir, stdin.fileno(), stdout.fileno(), status_w))
        os.close(status_w)
        finished = self._wait(pid, _now() + job["timeout"])
        status = self._sweep([pid])[pid]
        error = os.read(status_r, 64).decode(errors="replace") if select.select([status_r], [], [], 0)[0] else ""
        os.close(status_r)
        stdin.close()
        output = os.pread(stdout.fileno(), job["output_bytes"], 0)
        stdout.close()
        if not finished:
            return f"timeout: test {number}"
        if os.WIFSIGNALED(status):
            return f"{_signalled(os.WTERMSIG(status))}: test {number}"
        if error == "MemoryError":
            return f"memory: test {number}"
        if error:
            return f"error: {error} on test {number}"
        if output.split() != wanted.encode().split():
            return f"wrong: test {number} (output differs)"
        return None

    def run(self, job):
        workdir = tempfile.mkdtemp(dir=job["tmp"], prefix="cand-")
        try:
            return (self.calls if job["kind"] == "calls" else self.stdio)(job, workdir)
        finally:
            _remove(workdir)


def _signalled(sig):
    """The limit that a signal means: SIGXCPU the CPU time, SIGXFSZ the output size, SIGKILL/SEGV memory."""
    return {signal.SIGXCPU: "timeout", signal.SIGXFSZ: "output limit", signal.SIGKILL: "memory",
            signal.SIGSEGV: "crashed"}.get(sig, "crashed")


def _remove(path):
    def unlock(func, target, _exc):
        try:
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            func(target)
        except OSError:
            pass
    shutil.rmtree(path, onerror=unlock)


def main():
    _nondumpable()
    jobs = os.fdopen(os.dup(0), "rb")
    out = os.dup(1)
    _keep_only(jobs.fileno(), out)
    os.environ.clear()
    server = Server(out, own_pid_namespace="own-pid-namespace" in sys.argv[1:])
    os.write(out, b"ready\n")
    for line in jobs:
        job = json.loads(line)
        try:
            result = server.run(job)
        except Exception as exc:  # a fault of the server itself: that candidate fails, the server goes on
            result = {"passed": 0, "verdict": f"crashed: sandbox error {type(exc).__name__}: {exc}"[:200]}
        os.write(out, json.dumps(result).encode() + b"\n")


main()
