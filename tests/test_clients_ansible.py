"""Ansible's amazon.aws modules, unmodified, against a real server: ec2_vol creates a volume
(and finds it again by its name), grows it, restores a snapshot and deletes; ec2_snapshot takes
and deletes a snapshot; ec2_vol_info and ec2_snapshot_info list them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.api_support import aws_error, deleted, poll, unique
from tests.server import REGION, ZONE, ServerProcess

ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

# The credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); the
# results of the tasks are written to `results` before the resources are deleted.
PLAYBOOK = """\
- hosts: localhost
  connection: local
  gather_facts: false
  module_defaults:
    group/amazon.aws.aws:
      endpoint_url: "{{ endpoint }}"
      region: "{{ region }}"
  tasks:
    - name: a gp3 volume, tagged
      amazon.aws.ec2_vol:
        zone: "{{ zone }}"
        volume_size: 2
        volume_type: gp3
        name: "data-{{ run }}"
        tags: {run: "{{ run }}"}
      register: created
    - name: the same again, found by its name
      amazon.aws.ec2_vol:
        zone: "{{ zone }}"
        volume_size: 2
        volume_type: gp3
        name: "data-{{ run }}"
        tags: {run: "{{ run }}"}
      register: again
    - name: listed by tag
      amazon.aws.ec2_vol_info:
        filters: {"tag:run": "{{ run }}"}
      register: listed
    - name: grown
      amazon.aws.ec2_vol:
        id: "{{ created.volume_id }}"
        zone: "{{ zone }}"
        volume_size: 3
        volume_type: gp3
        modify_volume: true
      register: grown
    - name: snapshotted
      amazon.aws.ec2_snapshot:
        volume_id: "{{ created.volume_id }}"
        description: "data of {{ run }}"
        snapshot_tags: {run: "{{ run }}"}
        wait: true
      register: snapshot
    - name: the snapshot listed
      amazon.aws.ec2_snapshot_info:
        snapshot_ids: ["{{ snapshot.snapshot_id }}"]
      register: snapshots
    - name: restored
      amazon.aws.ec2_vol:
        zone: "{{ zone }}"
        snapshot: "{{ snapshot.snapshot_id }}"
        volume_size: 4
        volume_type: gp2
        name: "restored-{{ run }}"
      register: restored
    - name: results
      ansible.builtin.copy:
        dest: "{{ results }}"
        content: "{{ {'created': created, 'again': again, 'listed': listed, 'grown': grown,
                      'snapshot': snapshot, 'snapshots': snapshots, 'restored': restored}
                     | to_nice_json }}"
    - name: the restored volume deleted
      amazon.aws.ec2_vol:
        id: "{{ restored.volume_id }}"
        state: absent
    - name: the snapshot deleted
      amazon.aws.ec2_snapshot:
        snapshot_id: "{{ snapshot.snapshot_id }}"
        state: absent
    - name: the volume deleted
      amazon.aws.ec2_vol:
        id: "{{ created.volume_id }}"
        state: absent
"""


def run_playbook(server: ServerProcess, workdir: Path, run: str) -> dict[str, Any]:
    """Run PLAYBOOK against ``server``; the results of its tasks, by name."""
    playbook = workdir / "ebs.yml"
    playbook.write_text(PLAYBOOK)
    results = workdir / "results.json"
    extra = {
        "endpoint": server.url,
        "region": REGION,
        "zone": ZONE,
        "run": run,
        "results": str(results),
        "ansible_python_interpreter": sys.executable,
    }
    env = server.cli_env() | {
        "ANSIBLE_HOME": str(workdir / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    done = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-e", json.dumps(extra), str(playbook)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"ansible-playbook: {done.stdout[-4000:]}{done.stderr[-2000:]}"
    found: dict[str, Any] = json.loads(results.read_text())
    return found


# Every task starts a module process of its own and waits as the module does: about 2 minutes.
@pytest.mark.timeout(900)
def test_ansible_creates_finds_grows_snapshots_restores_and_deletes(
    server: ServerProcess, tmp_path: Path
) -> None:
    run = unique()
    ec2 = server.client()
    found = run_playbook(server, tmp_path, run)

    created, again = found["created"], found["again"]
    volume_id = created["volume_id"]
    assert created["changed"] is True
    assert (created["volume"]["size"], created["volume"]["type"]) == (2, "gp3")
    assert created["volume"]["tags"] == {"Name": f"data-{run}", "run": run}
    # Found by its Name tag through DescribeVolumes' filters: nothing to do the second time.
    assert (again["changed"], again["volume_id"]) == (False, volume_id)
    [listed] = found["listed"]["volumes"]
    assert (listed["id"], listed["status"], listed["snapshot_id"]) == (volume_id, "available", "")

    grown = found["grown"]  # ModifyVolume, then DescribeVolumes until it reads the new size
    assert (grown["changed"], grown["volume"]["size"], grown["volume_type"]) == (True, 3, "gp3")

    snapshot_id = found["snapshot"]["snapshot_id"]
    [snapshot] = found["snapshots"]["snapshots"]
    assert (snapshot["snapshot_id"], snapshot["volume_id"]) == (snapshot_id, volume_id)
    assert (snapshot["state"], snapshot["volume_size"]) == ("completed", 3)
    assert snapshot["description"] == f"data of {run}"
    assert snapshot["tags"] == {"Name": f"data-{run}", "run": run}  # the module adds Name
    assert snapshot["create_volume_permissions"] == []

    restored = found["restored"]["volume"]
    assert (restored["size"], restored["snapshot_id"], restored["type"]) == (4, snapshot_id, "gp2")

    # And the play's last three tasks deleted all of it.
    # (ec2_vol does not wait for a deletion: `deleted` for a moment, then NotFound)
    poll(lambda: deleted(ec2, volume_id) or None)
    poll(lambda: deleted(ec2, restored["id"]) or None)
    code, _, _ = aws_error(ec2.describe_snapshots, SnapshotIds=[snapshot_id])
    assert code == "InvalidSnapshot.NotFound"
