"""A throwaway S3 endpoint for the tests: moto's server mode on 127.0.0.1, a free port, fake credentials.

``moto[server]`` is in the ``dev`` extra (``make test`` installs it), so the object-store
tests run on a fresh machine, never skip. The server answers real S3 HTTP requests
(s3fs/aiobotocore talk to it as to AWS); nothing leaves the machine::

    with S3Server() as s3:
        s3.env  # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION
        s3.make_bucket("artifacts")
"""

from __future__ import annotations

import logging
import secrets
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """Start ``moto.server.ThreadedMotoServer``; ``stop()`` ends it.

    Attributes:
        endpoint: ``http://127.0.0.1:<port>``.
        secret: the fake secret access key (tests grep every output for it).
        env: the ``AWS_*`` variables a client needs.
    """

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.secret = "bsSECRET" + secrets.token_hex(16)
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "bstestkey",
                    "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1"}
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access line per request otherwise

    def start(self) -> "S3Server":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def make_bucket(self, name: str) -> str:
        """Create a bucket (idempotent) and return ``s3://<name>``."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=self.secret, region_name="us-east-1")
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return f"s3://{name}"

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
