"""`python -m tools.package ... --upload s3://BUCKET/PREFIX/` against moto's S3 server: the
bucket's region found, big archives in parts, a progress line only on a terminal, the
model_data URI printed; a wrong destination fails before any work."""

import os
import pty
import subprocess
import sys

import boto3
import pytest

from tools.upload import Destination, UploadError, destination_for, upload
from tests.handlers.conftest import REPO
from tests.moto_server import moto_server
from tests.tools.training_dirs import training_output

BUCKET = "flan-t5-models"
REGION = "eu-west-1"  # not the client's default region (moto_server's env says us-east-1)


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    with moto_server(tmp_path_factory.mktemp("moto")) as (_, env):
        s3 = s3_client(env, REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield env


def s3_client(env: dict, region: str):
    return boto3.client("s3", region_name=region, endpoint_url=env["AWS_ENDPOINT_URL"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def package(env: dict, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.package", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, **kwargs)


def test_package_and_upload(moto, tmp_path):
    out = tmp_path / "model.tar.gz"
    done = package(moto, training_output(tmp_path / "train"), out, "--upload", f"s3://{BUCKET}/flan-t5/v1/")
    assert done.returncode == 0, done.stderr
    uri = f"s3://{BUCKET}/flan-t5/v1/model.tar.gz"
    lines = done.stdout.splitlines()
    assert f"uploading to {uri} (region {REGION}, {out.stat().st_size:,d} bytes)" in lines
    assert lines[-1] == f"model_data: {uri}"
    assert done.stderr == ""  # not a terminal: no progress line
    stored = s3_client(moto, REGION).get_object(Bucket=BUCKET, Key="flan-t5/v1/model.tar.gz")["Body"].read()
    assert stored == out.read_bytes()


def test_a_uri_ending_in_tar_gz_names_the_object(moto, tmp_path):
    out = tmp_path / "model.tar.gz"
    done = package(moto, training_output(tmp_path / "train"), out, "--ctranslate2", "none",
                   "--upload", f"s3://{BUCKET}/support-v2.tar.gz")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"model_data: s3://{BUCKET}/support-v2.tar.gz"


@pytest.mark.parametrize("uri, says", [
    (f"s3://no-such-bucket-{os.getpid()}/models/", "no such bucket"),
    ("https://flan-t5-models.s3.amazonaws.com/models/", "expected s3://BUCKET/PREFIX/"),
])
def test_a_wrong_destination_fails_before_any_work(moto, tmp_path, uri, says):
    train = training_output(tmp_path / "train")
    done = package(moto, train, tmp_path / "model.tar.gz", "--upload", uri)
    assert (done.returncode, done.stderr) == (1, f"package: error: --upload {uri}: {says}; nothing written\n")
    assert done.stdout == ""  # nothing was loaded or asked
    assert not (tmp_path / "model.tar.gz").exists()


def test_no_credentials(moto, tmp_path):
    env = {k: v for k, v in moto.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    done = package(env, training_output(tmp_path / "train"), tmp_path / "model.tar.gz",
                   "--upload", f"s3://{BUCKET}/models/")
    assert done.returncode == 1
    assert done.stderr == f"package: error: --upload s3://{BUCKET}/models/: Unable to locate credentials; " \
                          "nothing written\n"
    assert not (tmp_path / "model.tar.gz").exists()


def test_a_big_archive_goes_up_in_parts(moto, tmp_path, monkeypatch):
    for name, value in moto.items():
        monkeypatch.setenv(name, value)
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(os.urandom(11 * 1024 * 1024))
    lines = []
    destination = destination_for(f"s3://{BUCKET}/big/", archive.name)
    assert upload(archive, destination, part_size=5 * 1024 * 1024, report=lines.append) == \
        f"s3://{BUCKET}/big/model.tar.gz"
    assert lines == [f"uploading to s3://{BUCKET}/big/model.tar.gz (region {REGION}, 11,534,336 bytes, "
                     "3 parts)"]
    stored = s3_client(moto, REGION).get_object(Bucket=BUCKET, Key="big/model.tar.gz")
    assert stored["ETag"].endswith('-3"')  # S3's ETag of a 3-part upload
    assert stored["Body"].read() == archive.read_bytes()


def test_a_failed_upload_says_why(moto, tmp_path, monkeypatch):
    """The bucket vanished after the destination was checked: the upload fails with the reason."""
    for name, value in moto.items():
        monkeypatch.setenv(name, value)
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"x" * 1024)
    s3 = s3_client(moto, REGION)
    s3.create_bucket(Bucket="short-lived", CreateBucketConfiguration={"LocationConstraint": REGION})
    destination = destination_for("s3://short-lived/models/", archive.name)
    s3.delete_bucket(Bucket="short-lived")
    with pytest.raises(UploadError) as failed:
        upload(archive, destination, report=lambda *_: None)
    assert str(failed.value) == f"uploading {archive} to s3://short-lived/models/model.tar.gz failed: " \
        "An error occurred (NoSuchBucket) when calling the PutObject operation: The specified bucket " \
        "does not exist"
    assert destination == Destination("short-lived", "models/model.tar.gz", REGION)


def test_progress_on_a_terminal(moto, tmp_path):
    """stderr on a terminal (a pseudo-terminal here) shows how far the upload is."""
    main, terminal = pty.openpty()
    out = tmp_path / "model.tar.gz"
    proc = subprocess.Popen([sys.executable, "-m", "tools.package", str(training_output(tmp_path / "train")),
                             str(out), "--ctranslate2", "none", "--upload", f"s3://{BUCKET}/tty/"],
                            cwd=REPO, env=moto, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert proc.wait(300) == 0, seen
    size = out.stat().st_size
    progress = f"\ruploading model.tar.gz: 100% ({size / 1e6:.1f} of {size / 1e6:.1f} MB)\r\n"  # \n -> \r\n
    assert seen.endswith(progress.encode()), seen
