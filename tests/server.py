"""Run a real ebsemu server as a subprocess for tests that talk HTTP to it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

REGION = "us-east-1"
ZONE = "us-east-1a"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """An `ebsemu serve` subprocess on a free loopback port with its own data directory."""

    def __init__(self, data_dir: Path, config_text: str = "") -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.config_path = data_dir.parent / f"{data_dir.name}.ini"
        self.config_path.write_text(config_text)
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "ebsemu",
            "serve",
            "--config",
            str(self.config_path),
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/?Action=DescribeRegions", timeout=1)
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start in 20 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, service: str = "ec2", **kwargs: Any) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=kwargs.pop("region_name", REGION),
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="secret",
            config=BotoConfig(retries={"max_attempts": 2}),
            **kwargs,
        )

    def resource(self) -> Any:
        return boto3.resource(
            "ec2",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="secret",
        )

    def cli_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID="AKIDEXAMPLE",
            AWS_SECRET_ACCESS_KEY="secret",
            AWS_DEFAULT_REGION=REGION,
            AWS_PAGER="",
        )
        return env


TEST_CONFIG = """\
[server]
deleted_visible_seconds = 2
log_level = INFO
"""
