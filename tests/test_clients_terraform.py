"""Terraform's AWS provider, unmodified, against a real server: a volume, its snapshot, a
create-volume permission and a restore are applied, modified in place, read back with no drift
but the change made outside Terraform, and destroyed.

The provider comes from a local filesystem mirror (Terraform cannot reach its registry here):
EBSEMU_TF_PLUGINS, else /opt/tf-plugins, laid out as `registry.terraform.io/hashicorp/aws/…`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.api_support import aws_error, deleted, unique
from tests.server import REGION, ZONE, ServerProcess

TERRAFORM = shutil.which("terraform")
PLUGINS = Path(os.environ.get("EBSEMU_TF_PLUGINS", "/opt/tf-plugins"))
PROVIDER = PLUGINS / "registry.terraform.io" / "hashicorp" / "aws"
PARTNER = "111122223333"

pytestmark = pytest.mark.skipif(
    TERRAFORM is None or not PROVIDER.is_dir(),
    reason=f"needs terraform on PATH and the hashicorp/aws provider mirrored in {PLUGINS}",
)

CLI_CONFIG = """\
provider_installation {{
  filesystem_mirror {{
    path    = "{plugins}"
    include = ["registry.terraform.io/hashicorp/aws"]
  }}
  direct {{
    exclude = ["registry.terraform.io/hashicorp/aws"]
  }}
}}
"""

# The credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
MAIN_TF = """\
terraform {
  required_providers {
    aws = { source = "hashicorp/aws" }
  }
}

variable "endpoint" { type = string }
variable "region" { type = string }
variable "zone" { type = string }
variable "partner" { type = string }
variable "run" { type = string }
variable "data_size" { type = number }
variable "data_throughput" { type = number }

provider "aws" {
  region                      = var.region
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  endpoints {
    ec2 = var.endpoint
  }
  default_tags {
    tags = { run = var.run }
  }
}

resource "aws_ebs_volume" "data" {
  availability_zone = var.zone
  size              = var.data_size
  type              = "gp3"
  iops              = 3000
  throughput        = var.data_throughput
  tags              = { Name = "data" }
}

resource "aws_ebs_snapshot" "data" {
  volume_id   = aws_ebs_volume.data.id
  description = "data of ${var.run}"
  tags        = { Name = "data-snap" }
}

resource "aws_snapshot_create_volume_permission" "partner" {
  snapshot_id = aws_ebs_snapshot.data.id
  account_id  = var.partner
}

resource "aws_ebs_volume" "restored" {
  availability_zone = var.zone
  snapshot_id       = aws_ebs_snapshot.data.id
  size              = 4
  type              = "io1"
  iops              = 200
  tags              = { Name = "restored" }
}

output "ids" {
  value = {
    data     = aws_ebs_volume.data.id
    snapshot = aws_ebs_snapshot.data.id
    restored = aws_ebs_volume.restored.id
  }
}
"""


class Terraform:
    """`terraform` in one working directory, against one server."""

    def __init__(self, workdir: Path, server: ServerProcess, run: str) -> None:
        self.workdir = workdir
        self.server = server
        self.run = run
        (workdir / "main.tf").write_text(MAIN_TF)
        cli_config = workdir / "cli.tfrc"
        cli_config.write_text(CLI_CONFIG.format(plugins=PLUGINS))
        self.env = server.cli_env() | {
            "TF_CLI_CONFIG_FILE": str(cli_config),
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
        }

    def __call__(self, *args: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        assert TERRAFORM is not None
        done = subprocess.run(
            [TERRAFORM, *args, "-no-color"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode in ok, f"terraform {args[0]}: {done.stdout[-3000:]}{done.stderr}"
        return done

    def variables(self, data_size: int, data_throughput: int) -> tuple[str, ...]:
        return (
            f"-var=endpoint={self.server.url}",
            f"-var=region={REGION}",
            f"-var=zone={ZONE}",
            f"-var=partner={PARTNER}",
            f"-var=run={self.run}",
            f"-var=data_size={data_size}",
            f"-var=data_throughput={data_throughput}",
        )

    def outputs(self) -> dict[str, str]:
        done = self("output", "-json")
        return dict(json.loads(done.stdout)["ids"]["value"])


def tags_of(item: dict[str, Any]) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in item.get("Tags", [])}


# Each step waits as the provider's waiters do (10-15 s a resource), each plan refreshes every
# resource: about 2 minutes on an idle machine, twice that on a busy one.
@pytest.mark.timeout(900)
def test_terraform_applies_reads_modifies_detects_drift_and_destroys(
    server: ServerProcess, tmp_path: Path
) -> None:
    ec2 = server.client()
    run = unique()
    terraform = Terraform(tmp_path, server, run)
    terraform("init")
    first = terraform.variables(data_size=2, data_throughput=125)

    terraform("apply", "-auto-approve", *first)
    ids = terraform.outputs()
    volumes = {
        v["VolumeId"]: v
        for v in ec2.describe_volumes(VolumeIds=[ids["data"], ids["restored"]])["Volumes"]
    }
    data, restored = volumes[ids["data"]], volumes[ids["restored"]]
    assert (data["State"], data["Size"], data["VolumeType"]) == ("available", 2, "gp3")
    assert (data["Iops"], data["Throughput"]) == (3000, 125)
    assert tags_of(data) == {"Name": "data", "run": run}
    assert (restored["State"], restored["Size"], restored["VolumeType"]) == ("available", 4, "io1")
    assert (restored["Iops"], restored["SnapshotId"]) == (200, ids["snapshot"])
    [snapshot] = ec2.describe_snapshots(SnapshotIds=[ids["snapshot"]])["Snapshots"]
    assert (snapshot["State"], snapshot["VolumeId"]) == ("completed", ids["data"])
    assert snapshot["Description"] == f"data of {run}"
    assert tags_of(snapshot) == {"Name": "data-snap", "run": run}
    permission = ec2.describe_snapshot_attribute(
        SnapshotId=ids["snapshot"], Attribute="createVolumePermission"
    )["CreateVolumePermissions"]
    assert permission == [{"UserId": PARTNER}]

    # Grown and faster, in place (ModifyVolume, then the provider waits for it).
    second = terraform.variables(data_size=3, data_throughput=250)
    applied = terraform("apply", "-auto-approve", *second)
    assert "0 added, 1 changed, 0 destroyed" in applied.stdout
    [data] = ec2.describe_volumes(VolumeIds=[ids["data"]])["Volumes"]
    assert (data["Size"], data["Throughput"]) == (3, 250)
    [change] = ec2.describe_volumes_modifications(VolumeIds=[ids["data"]])["VolumesModifications"]
    assert (change["OriginalSize"], change["TargetSize"]) == (2, 3)
    # A tag removed outside Terraform is drift its next plan shows (exit code 2); and it is
    # the only change: everything else the provider reads back is what it wrote.
    ec2.delete_tags(Resources=[ids["data"]], Tags=[{"Key": "Name"}])
    drifted = terraform("plan", "-detailed-exitcode", *second, ok=(2,))
    assert "Plan: 0 to add, 1 to change, 0 to destroy." in drifted.stdout
    assert '+ "Name" = "data"' in drifted.stdout and "aws_ebs_volume.data" in drifted.stdout

    terraform("destroy", "-auto-approve", *second)
    for volume_id in (ids["data"], ids["restored"]):
        assert deleted(ec2, volume_id)  # the provider waited for it
    code, _, _ = aws_error(ec2.describe_snapshots, SnapshotIds=[ids["snapshot"]])
    assert code == "InvalidSnapshot.NotFound"
