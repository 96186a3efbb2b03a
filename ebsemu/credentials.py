"""Key pairs as AWS tools read them: a ready profile for ~/.aws/config, and its private file."""

from __future__ import annotations

from pathlib import Path

from ebsemu.config import Config
from ebsemu.private_files import write_private
from ebsemu.service.accounts import KeyPair

CREDENTIALS_FILE = "credentials"
# The id (never the secret) of the key pair the environment or [auth] gave the last start.
CONFIGURED_KEY_FILE = "configured-key"
_ANY_ADDRESS = {"0.0.0.0", "::", ""}


def endpoint_url(config: Config) -> str:
    """The URL a client on this host uses to reach the server."""
    scheme = "https" if config.tls else "http"
    host = "127.0.0.1" if config.host in _ANY_ADDRESS else config.host
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{config.port}"


def profile_snippet(
    pair: KeyPair, *, account_id: str, endpoint: str, region: str, profile: str = "ebsemu"
) -> str:
    """A profile for ~/.aws/config: `aws --profile NAME ec2 …` and
    `boto3.Session(profile_name=NAME).client("ec2")` then need nothing else."""
    return (
        f"# ebsemu account {account_id}: add this to ~/.aws/config\n"
        f"[profile {profile}]\n"
        f"region = {region}\n"
        f"endpoint_url = {endpoint}\n"
        f"aws_access_key_id = {pair.access_key_id}\n"
        f"aws_secret_access_key = {pair.secret_access_key}\n"
    )


def save_default_key(config: Config, pair: KeyPair) -> tuple[Path, str]:
    """Keep a generated key of the default account in the data directory (mode 0600);
    return the file and the profile snippet it holds."""
    snippet = profile_snippet(
        pair,
        account_id=config.account_id,
        endpoint=endpoint_url(config),
        region=config.default_region,
    )
    path = config.data_dir / CREDENTIALS_FILE
    write_private(path, snippet)
    return path, snippet


def recorded_configured_key(config: Config) -> str | None:
    """The id of the key pair the environment or [auth] gave, as recorded at the last start."""
    try:
        recorded = (config.data_dir / CONFIGURED_KEY_FILE).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    return recorded or None


def record_configured_key(config: Config, key_id: str) -> None:
    """Record ``key_id`` as the configured key pair's (only once the one it replaces is gone:
    a crash in between must leave that one still recorded, to be removed at the next start)."""
    write_private(config.data_dir / CONFIGURED_KEY_FILE, f"{key_id}\n")
