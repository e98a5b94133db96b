"""S3 (or any S3-compatible store) behind the Storage interface: ``s3://bucket/prefix``.

Atomicity comes from S3 itself: a PUT or a completed multipart upload makes the whole object visible
at once, so ``write`` is one put_object and ``concat`` one multipart upload (aborted on any error).
Throttling, 5xx and dropped connections are retried by botocore with backoff; what still fails after
that is a TransientError (the fleet retries the shard later), anything else an OutputError that names
the operation and the key. Messages never carry the secret key.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, IncompleteReadError

from schemas.errors import OutputError, TransientError
from schemas.settings import settings
from workers.storage import Storage

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024   # multipart part size; S3's minimum is 5 MiB for every part but the last
CHUNK = 1024 * 1024           # read size when streaming a source object
_MISSING = {"NoSuchKey", "404", "NotFound"}
_NO_BUCKET = {"NoSuchBucket"}
_REFUSED = {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch",
            "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}
_THROTTLED = {"Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded", "TooManyRequests",
              "RequestThrottled", "RequestTimeout", "InternalError", "ServiceUnavailable"}


def _code_status(exc: ClientError) -> tuple[str, int]:
    """The error code and HTTP status (HEAD answers carry no body, so the code is then just '404')."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return str(exc.response.get("Error", {}).get("Code", "?")), int(status)


def _client_config(attempts: int) -> Config:
    """Standard retry mode: exponential backoff with jitter on throttling, 5xx and connection errors.

    total_max_attempts counts the first try; botocore's max_attempts would count only the retries.
    """
    return Config(retries={"mode": "standard", "total_max_attempts": attempts}, connect_timeout=5, read_timeout=60,
                  s3={"addressing_style": "path"} if _endpoint() else None)


def _endpoint() -> str | None:
    """SAMPLEFLEET_S3_ENDPOINT wins; AWS_ENDPOINT_URL(_S3) is read here too for boto3 versions that ignore it."""
    return (settings().s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            or None)


class S3Storage(Storage):
    def __init__(self, url: str) -> None:
        if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
            raise OutputError(f"--output_dir {url!r}: expected s3://bucket[/prefix]")
        self.url = url.rstrip("/")
        self.bucket, _, prefix = url[5:].partition("/")
        self.root = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.attempts = settings().s3_max_attempts
        try:
            self._session = boto3.session.Session()   # the usual chain: env, profile, config files, instance role
            creds = self._session.get_credentials()
            self._secret = creds.get_frozen_credentials().secret_key if creds else None
            self.client = self._session.client("s3", endpoint_url=_endpoint(), config=_client_config(self.attempts))
        except BotoCoreError as exc:   # e.g. AWS_PROFILE names no profile
            raise OutputError(f"--output_dir {url}: cannot set up the S3 client: {exc}") from exc
        self.endpoint = self.client.meta.endpoint_url

    def _key(self, key: str) -> str:
        return self.root + key.lstrip("/")

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _raise(self, exc: Exception, op: str, key: str) -> NoReturn:
        """Map a botocore failure onto the error tree: transient (retries used up) or permanent."""
        where = self.where(key)
        if isinstance(exc, ClientError):
            code, status = _code_status(exc)
            detail = self._scrub(f"{code}: {exc.response.get('Error', {}).get('Message') or exc}")
            if code in _THROTTLED or status >= 500 or status == 429:
                raise TransientError(f"S3 {op} {where}: {detail} (still failing after {self.attempts} "
                                     "attempts; SAMPLEFLEET_S3_MAX_ATTEMPTS sets how many)") from exc
            if code in _NO_BUCKET:
                raise OutputError(f"S3 {op} {where}: bucket {self.bucket!r} does not exist") from exc
            if code in _REFUSED or status == 403:
                raise OutputError(f"S3 {op} {where}: access refused ({detail}); check the credentials "
                                  "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE)") from exc
            raise OutputError(f"S3 {op} {where}: {detail}") from exc
        if isinstance(exc, (ConnectionError, HTTPClientError, IncompleteReadError, OSError)):
            raise TransientError(f"S3 {op} {where}: connection to {self.endpoint} failed, after {self.attempts} "
                                 f"attempts ({self._scrub(str(exc))})") from exc
        raise OutputError(f"S3 {op} {where}: {self._scrub(str(exc))}") from exc

    def _call(self, op: str, key: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return getattr(self.client, op)(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, op, key)

    def write(self, key: str, data: bytes) -> None:
        self._call("put_object", key, Key=self._key(key), Body=data)

    def _get(self, op: str, key: str) -> dict[str, Any] | None:
        """get_object / head_object; None when the key does not exist."""
        try:
            return getattr(self.client, op)(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code_status(exc)[0] in _MISSING:
                return None
            self._raise(exc, op, key)
        except BotoCoreError as exc:
            self._raise(exc, op, key)

    def _open(self, key: str) -> Any:
        """The streaming body of ``key``; FileNotFoundError when it is missing, like a local file."""
        found = self._get("get_object", key)
        if found is None:
            raise FileNotFoundError(f"{self.where(key)}: no such object")
        return found["Body"]

    def read(self, key: str) -> bytes:
        body = self._open(key)
        try:
            return body.read()
        except (BotoCoreError, OSError) as exc:
            self._raise(exc, "get_object", key)

    def exists(self, key: str) -> bool:
        return self._get("head_object", key) is not None

    def _keys(self, prefix: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        try:
            for page in pages:
                yield from (obj["Key"] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            self._raise(exc, "list_objects_v2", prefix)

    def list(self, prefix: str) -> list[str]:
        return sorted(k[len(self.root):] for k in self._keys(prefix))

    def delete_prefix(self, prefix: str) -> None:
        keys = list(self._keys(prefix))
        for start in range(0, len(keys), 1000):   # delete_objects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            errors = self._call("delete_objects", prefix, Delete={"Objects": batch, "Quiet": True}).get("Errors")
            if errors:
                first = errors[0]
                raise OutputError(f"S3 delete_objects {self.where(prefix)}: {len(errors)} keys not deleted, "
                                  f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}")

    def _chunks(self, keys: Iterable[str]) -> Iterator[bytes]:
        for key in keys:
            body = self._open(key)
            try:
                yield from body.iter_chunks(CHUNK)
            except (BotoCoreError, OSError) as exc:
                self._raise(exc, "get_object", key)
            finally:
                body.close()

    def concat(self, keys: Iterable[str], dest: str) -> None:
        """Small totals: one PUT; otherwise a multipart upload of >= PART_SIZE parts, completed only at the end."""
        buf, upload_id, parts = bytearray(), None, []
        try:
            for chunk in self._chunks(keys):
                buf += chunk
                if len(buf) >= PART_SIZE:
                    if upload_id is None:
                        upload_id = self._call("create_multipart_upload", dest, Key=self._key(dest))["UploadId"]
                    self._upload_part(dest, upload_id, parts, bytes(buf))
                    buf.clear()
            if upload_id is None:
                self.write(dest, bytes(buf))
                return
            if buf or not parts:
                self._upload_part(dest, upload_id, parts, bytes(buf))
            self._call("complete_multipart_upload", dest, Key=self._key(dest), UploadId=upload_id,
                       MultipartUpload={"Parts": parts})
            log.debug("concat %s: %d parts", self.where(dest), len(parts))
        except BaseException:
            if upload_id is not None:
                try:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(dest), UploadId=upload_id)
                except (ClientError, BotoCoreError) as exc:
                    log.warning("could not abort the multipart upload of %s: %s", self.where(dest), exc)
            raise

    def _upload_part(self, dest: str, upload_id: str, parts: list[dict[str, Any]], data: bytes) -> None:
        number = len(parts) + 1
        etag = self._call("upload_part", dest, Key=self._key(dest), UploadId=upload_id, PartNumber=number,
                          Body=data)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})

    def check_writable(self) -> None:
        """Fail before any work (missing bucket, refused credentials, no endpoint), with few retries."""
        client = self._session.client("s3", endpoint_url=_endpoint(), config=_client_config(min(self.attempts, 2)))
        probe = self._key(".samplefleet-write-check")
        try:
            client.head_bucket(Bucket=self.bucket)
            client.put_object(Bucket=self.bucket, Key=probe, Body=b"")   # head_bucket does not prove write access
            client.delete_object(Bucket=self.bucket, Key=probe)
        except ClientError as exc:
            code, status = _code_status(exc)
            if status == 404 or code in _NO_BUCKET:
                raise OutputError(f"--output_dir {self.url}: bucket {self.bucket!r} does not exist "
                                  f"at {self.endpoint}") from exc
            if status == 403 or code in _REFUSED:
                raise OutputError(f"--output_dir {self.url}: access to bucket {self.bucket!r} refused ({code}): "
                                  "wrong or missing credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                                  "AWS_PROFILE), or no write permission there") from exc
            raise OutputError(f"--output_dir {self.url}: S3 {exc.operation_name} failed: "
                              f"{self._scrub(str(exc))}") from exc
        except BotoCoreError as exc:
            raise OutputError(f"--output_dir {self.url}: cannot use S3 endpoint {self.endpoint}: "
                              f"{self._scrub(str(exc))}") from exc
