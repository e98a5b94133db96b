"""Write the compose file's secrets, random and consistent, into deploy/secrets/ (``python deploy/make_secrets.py``).

Each file is mounted into only the containers that need it (see the ``secrets:`` of each service), where
``*_FILE`` variables point at it: nothing secret is on a command line, in an environment block or in the
compose file. Existing files are kept (``--force`` replaces them), so a running fleet keeps its passwords.
The folder is 0700 and ignored by git; the files are 0644 inside it, since containers read them as other
users (compose mounts them as they are: it cannot change a file's owner without swarm).
"""
from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path

HERE = Path(__file__).resolve().parent


def contents(flower_user: str = "admin", redis_host: str = "redis") -> dict[str, str]:
    """Every secret file's text, from fresh random passwords; ``redis_host`` goes into the broker URL."""
    redis_pw, flower_pw = secrets.token_urlsafe(24), secrets.token_urlsafe(18)
    key, secret = "sf" + secrets.token_hex(8), secrets.token_urlsafe(30)
    identity = {"name": "samplefleet", "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    return {
        "redis_password": redis_pw,
        "redis_conf": f"requirepass {redis_pw}\n",
        "broker_url": f"redis://:{redis_pw}@{redis_host}:6379/0",
        "flower_basic_auth": f"{flower_user}:{flower_pw}",
        "s3_credentials": f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n",
        "seaweedfs_s3": json.dumps({"identities": [identity]}),
    }


def write(folder: Path, *, force: bool = False, flower_user: str = "admin", redis_host: str = "redis") -> list[Path]:
    """Write the files that are missing (all with ``force``); the paths written."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    (folder / ".gitignore").write_text("*\n")
    existing = [name for name in contents() if (folder / name).exists()]
    if existing and not force and len(existing) != len(contents()):
        raise SystemExit(f"make_secrets: {folder} has only some of the secrets ({', '.join(existing)}): "
                         "pass --force to write a fresh, consistent set")
    if existing and not force:
        return []
    written = []
    for name, text in contents(flower_user, redis_host).items():
        path = folder / name
        path.write_text(text)
        path.chmod(0o644)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=HERE / "secrets", help="where to write (default deploy/secrets)")
    parser.add_argument("--force", action="store_true", help="replace existing secrets (restart the fleet after)")
    parser.add_argument("--flower-user", default="admin", help="Flower's basic-auth user (default admin)")
    parser.add_argument("--redis-host", default="redis", help="Redis's address in broker_url (default redis: the "
                        "compose service and the Kubernetes Service)")
    args = parser.parse_args(argv)
    written = write(args.dir, force=args.force, flower_user=args.flower_user, redis_host=args.redis_host)
    print(f"wrote {len(written)} secrets to {args.dir}" if written else f"{args.dir}: secrets exist, kept")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
