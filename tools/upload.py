"""Put a model.tar.gz on S3 with boto3 (``python -m tools.package ... --upload s3://BUCKET/PREFIX/``).

The destination is checked before anything is packaged (the bucket exists, it is reachable with
these credentials, its region); big archives go up in parts, several at once; on a terminal a
progress line shows how far it is. boto3 is a deployer's dependency, not the serving image's.
"""

import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from tools.archive import PackageError

PART_SIZE = 64 * 1024 * 1024  # multipart above this, in parts of this size (S3: 5 MiB to 5 GiB, 10,000 parts)


class UploadError(PackageError):
    """The archive cannot go to S3; the message says why."""


@dataclass(frozen=True)
class Destination:
    bucket: str
    key: str
    region: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse(uri: str, filename: str) -> tuple[str, str]:
    """(bucket, key): a URI ending in ``.tar.gz`` names the object, any other is a prefix."""
    if not uri.startswith("s3://") or not uri[5:].split("/")[0]:
        raise UploadError(f"--upload {uri}: expected s3://BUCKET/PREFIX/")
    bucket, _, key = uri[5:].partition("/")
    if not key.endswith((".tar.gz", ".tgz")):
        key = (key.rstrip("/") + "/" if key.strip("/") else "") + filename
    return bucket, key


def destination_for(uri: str, filename: str) -> Destination:
    """Where ``filename`` goes for ``--upload uri``, with the bucket's region found."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = parse(uri, filename)
    try:
        found = boto3.client("s3").head_bucket(Bucket=bucket)
    except ClientError as exc:
        headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        if headers.get("x-amz-bucket-region") and exc.response["Error"]["Code"] in ("301", "400"):
            found = {"BucketRegion": headers["x-amz-bucket-region"]}  # a bucket in another region
        else:
            why = {"404": "no such bucket", "403": "access denied (check the credentials and the "
                   "bucket policy)"}.get(exc.response["Error"]["Code"], str(exc))
            raise UploadError(f"--upload {uri}: {why}") from None
    except BotoCoreError as exc:  # no credentials, no network, ...
        raise UploadError(f"--upload {uri}: {exc}") from None
    region = found.get("BucketRegion") or \
        found.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region") or "us-east-1"
    return Destination(bucket, key, region)


class Progress:
    """``uploading NAME: 42% (12.0 of 28.6 MB)`` rewritten in place on ``stream``; boto3 calls it
    from its transfer threads."""

    def __init__(self, path: Path, stream):
        self.name, self.size, self.stream = path.name, path.stat().st_size, stream
        self.sent, self.lock = 0, threading.Lock()

    def __call__(self, sent: int) -> None:
        with self.lock:
            self.sent += sent
            percent = 100 * self.sent // max(self.size, 1)
            self.stream.write(f"\ruploading {self.name}: {percent}% "
                              f"({self.sent / 1e6:.1f} of {self.size / 1e6:.1f} MB)")
            if self.sent >= self.size:
                self.stream.write("\n")
            self.stream.flush()


def upload(archive: Path, to: Destination, part_size: int = PART_SIZE, report=print) -> str:
    """Put ``archive`` at ``to``; its ``model_data`` URI."""
    import boto3
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    size = archive.stat().st_size
    parts = -(-size // part_size) if size > part_size else 1
    report(f"uploading to {to.uri} (region {to.region}, {size:,d} bytes"
           f"{f', {parts} parts' if parts > 1 else ''})")
    config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)
    progress = Progress(archive, sys.stderr) if sys.stderr.isatty() else None
    try:
        boto3.client("s3", region_name=to.region).upload_file(str(archive), to.bucket, to.key,
                                                               Config=config, Callback=progress)
    except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
        why = str(exc).split(f"{to.key}: ", 1)[-1]  # S3UploadFailedError repeats the file and key
        raise UploadError(f"uploading {archive} to {to.uri} failed: {why}") from None
    return to.uri
