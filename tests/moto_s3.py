"""A real S3 API on loopback for tests and benchmarks: moto's standalone server in a thread, fresh buckets.

``with MotoS3() as s3:`` starts ``moto.server.ThreadedMotoServer`` on 127.0.0.1 at a free port; ``s3.env`` is
the standard AWS environment that points any S3 client at it (``AWS_ENDPOINT_URL`` and dummy credentials),
``s3.options`` the same as fsspec ``storage_options``, ``s3.polars_options`` as polars' object-store options,
and ``s3.bucket()`` creates a fresh bucket and returns its name.
"""

from __future__ import annotations

import socket
import uuid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    def __enter__(self) -> MotoS3:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop()

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    @property
    def options(self) -> dict:
        return {
            "endpoint_url": self.endpoint,
            "key": "testing",
            "secret": "testing",
        }

    @property
    def polars_options(self) -> dict[str, str]:
        return {
            "aws_endpoint_url": self.endpoint,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "aws_region": "us-east-1",
            "aws_allow_http": "true",
        }

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.options, skip_instance_cache=True)

    def bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name
