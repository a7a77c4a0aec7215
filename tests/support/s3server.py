"""A real S3-compatible server on loopback for the tests: moto's server mode in its own venv (``hack/moto.sh``).

Authentication is enforced the way AWS does it: the server lets the first three calls through unsigned (moto's
``INITIAL_NO_AUTH_ACTION_COUNT``), which create an IAM user, its access key and a policy allowing S3; every
later request must be signed (SigV4) with that key, so a wrong secret gets ``SignatureDoesNotMatch`` (403) and an
unknown key ``InvalidAccessKeyId``. The seeding runs in the moto venv with boto3; the tests themselves talk S3
through the trainer's own client (pyarrow).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT

_SEED = """
import json, sys
import boto3
endpoint, buckets = sys.argv[1], sys.argv[2:]
anon = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="seed", aws_secret_access_key="seed")
iam = boto3.client("iam", **anon)
iam.create_user(UserName="kubetune")
key = iam.create_access_key(UserName="kubetune")["AccessKey"]
policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
iam.put_user_policy(UserName="kubetune", PolicyName="s3", PolicyDocument=json.dumps(policy))
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
for bucket in buckets:
    s3.create_bucket(Bucket=bucket)
print(json.dumps({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}))
"""


@dataclass
class S3Server:
    url: str
    key_id: str
    secret: str

    def options(self, secret: str | None = None) -> dict[str, str]:
        """The trainer's storage options (``Volumes.storage_options``) for this server's key."""
        return {"key": self.key_id, "secret": secret or self.secret, "endpoint_url": self.url}


def python() -> str:
    """The moto venv's interpreter (created once, cached: ``hack/moto.sh``)."""
    out = subprocess.run(["bash", str(ROOT / "hack" / "moto.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(buckets: tuple[str, ...], log: Path) -> Iterator[S3Server]:
    """Start moto on a free loopback port, seed the user, key and ``buckets``; stop it afterwards."""
    interpreter, port = python(), _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    with log.open("wb") as out:
        server = subprocess.Popen(
            [interpreter, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        seeded = subprocess.run(
            [interpreter, "-c", _SEED, url, *buckets], check=True, capture_output=True, text=True, timeout=120
        )
        key = json.loads(seeded.stdout)
        yield S3Server(url=url, key_id=key["id"], secret=key["secret"])
    finally:
        server.terminate()
        server.wait(timeout=30)
