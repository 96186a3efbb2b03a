"""ModifyVolume and DescribeVolumesModifications over HTTP with boto3 and the AWS CLI: AWS's
rules, states, filters, pagination and account isolation; the volume's file grows for real."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from ebsemu.model import BLOCK_SIZE, GIB
from tests.api_support import FAST, aws_error, new_volume, poll, unique, volume_segment
from tests.server import TEST_CONFIG, ServerProcess
from tests.test_api_cli import aws, aws_json
from tests.volume_data import volume_file, write_blocks


def _config(**limits: float) -> str:
    lines = "".join(f"{key} = {value}\n" for key, value in limits.items())
    return TEST_CONFIG.replace("[limits]\n", f"[limits]\n{lines}")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No cooldown, no optimizing time: modifications complete as soon as the storage grew."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("modify") / "data", _config(modification_cooldown_seconds=0)
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Optimizing lasts an hour: modifications stay `optimizing` for the whole test run."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("modify-slow") / "data",
        _config(modification_cooldown_seconds=0, modification_optimizing_seconds=3600),
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def quick_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """As ``quick``, on the file backend: for a test that breaks a volume's layout file."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("modify-file") / "data",
        _config(modification_cooldown_seconds=0),
        backend="file",
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def ec2(quick: ServerProcess) -> Any:
    return quick.client()


def modification(ec2: Any, volume_id: str) -> dict[str, Any]:
    found = ec2.describe_volumes_modifications(VolumeIds=[volume_id])["VolumesModifications"]
    assert len(found) == 1
    item: dict[str, Any] = found[0]
    return item


def wait_finished(ec2: Any, volume_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        item = modification(ec2, volume_id)
        return item if item["ModificationState"] in ("completed", "failed") else None

    return poll(probe)


def volume(ec2: Any, volume_id: str) -> dict[str, Any]:
    found: dict[str, Any] = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    return found


# ---- growth ------------------------------------------------------------------------------


def test_grow_answers_modifying_then_completes_with_the_new_size_in_describe_volumes(
    ec2: Any,
) -> None:
    volume_id = new_volume(ec2, Size=1, VolumeType="gp3")
    answer = ec2.modify_volume(VolumeId=volume_id, Size=3)["VolumeModification"]
    assert answer["ModificationState"] == "modifying"
    assert answer["Progress"] == 0
    assert (answer["OriginalSize"], answer["TargetSize"]) == (1, 3)
    assert (answer["OriginalVolumeType"], answer["TargetVolumeType"]) == ("gp3", "gp3")
    assert (answer["OriginalIops"], answer["TargetIops"]) == (3000, 3000)
    assert (answer["OriginalThroughput"], answer["TargetThroughput"]) == (125, 125)
    assert answer["OriginalMultiAttachEnabled"] is False
    assert "EndTime" not in answer

    done = wait_finished(ec2, volume_id)
    assert done["ModificationState"] == "completed"
    assert done["Progress"] == 100
    assert done["EndTime"] >= done["StartTime"] == answer["StartTime"]
    assert volume(ec2, volume_id)["Size"] == 3


def test_the_volume_grows_and_the_data_written_before_is_intact(
    ec2: Any, quick: ServerProcess
) -> None:
    volume_id = new_volume(ec2, Size=1)
    last, grown = GIB // BLOCK_SIZE - 1, 3 * GIB // BLOCK_SIZE
    head, tail = os.urandom(BLOCK_SIZE), os.urandom(BLOCK_SIZE)
    write_blocks(quick, volume_id, {0: head, last: tail})

    ec2.modify_volume(VolumeId=volume_id, Size=5)
    assert wait_finished(ec2, volume_id)["ModificationState"] == "completed"

    with volume_file(quick, volume_id) as path, path.open("rb") as handle:
        assert path.stat().st_size == 5 * GIB
        found = {}
        for index in (0, last, grown):
            handle.seek(index * BLOCK_SIZE)
            found[index] = handle.read(BLOCK_SIZE)
    assert found == {0: head, last: tail, grown: bytes(BLOCK_SIZE)}  # new space reads as zeros


def test_type_change_to_io2_with_iops_changes_type_and_iops(ec2: Any) -> None:
    volume_id = new_volume(ec2, Size=10, VolumeType="gp2")
    answer = ec2.modify_volume(VolumeId=volume_id, VolumeType="io2", Iops=5000)
    target = answer["VolumeModification"]
    assert (target["OriginalVolumeType"], target["TargetVolumeType"]) == ("gp2", "io2")
    assert (target["OriginalIops"], target["TargetIops"]) == (100, 5000)
    assert wait_finished(ec2, volume_id)["ModificationState"] == "completed"
    described = volume(ec2, volume_id)
    assert (described["VolumeType"], described["Iops"], described["Size"]) == ("io2", 5000, 10)


def test_gp3_throughput_and_iops_change_and_are_kept_on_a_later_grow(ec2: Any) -> None:
    volume_id = new_volume(ec2, Size=20, VolumeType="gp3")
    ec2.modify_volume(VolumeId=volume_id, Iops=6000, Throughput=500)
    wait_finished(ec2, volume_id)
    ec2.modify_volume(VolumeId=volume_id, Size=30)
    done = wait_finished(ec2, volume_id)
    assert (done["TargetIops"], done["TargetThroughput"]) == (6000, 500)
    described = volume(ec2, volume_id)
    assert (described["Size"], described["Iops"], described["Throughput"]) == (30, 6000, 500)


def test_gp2_to_gp3_takes_gp3_baseline_performance(ec2: Any) -> None:
    volume_id = new_volume(ec2, Size=2, VolumeType="gp2")
    target = ec2.modify_volume(VolumeId=volume_id, VolumeType="gp3")["VolumeModification"]
    assert (target["TargetIops"], target["TargetThroughput"]) == (3000, 125)
    assert "OriginalThroughput" not in target  # gp2 has no throughput setting
    wait_finished(ec2, volume_id)
    assert volume(ec2, volume_id)["VolumeType"] == "gp3"


def test_multi_attach_can_be_enabled_on_io2(ec2: Any) -> None:
    volume_id = new_volume(ec2, Size=4, VolumeType="io2", Iops=400)
    target = ec2.modify_volume(VolumeId=volume_id, MultiAttachEnabled=True)["VolumeModification"]
    assert (target["OriginalMultiAttachEnabled"], target["TargetMultiAttachEnabled"]) == (
        False,
        True,
    )
    wait_finished(ec2, volume_id)
    assert volume(ec2, volume_id)["MultiAttachEnabled"] is True


# ---- AWS's rules -------------------------------------------------------------------------


def test_shrinking_is_refused_with_aws_text(ec2: Any) -> None:
    volume_id = new_volume(ec2, Size=4)
    code, message, status = aws_error(ec2.modify_volume, VolumeId=volume_id, Size=2)
    assert (code, status) == ("InvalidParameterValue", 400)
    assert message == "New size cannot be smaller than existing size"
    assert volume(ec2, volume_id)["Size"] == 4


@pytest.mark.parametrize(
    ("create", "modify", "code"),
    [
        ({"VolumeType": "gp2"}, {"Size": 16385}, "InvalidParameterValue"),  # gp2 max 16 TiB
        ({"VolumeType": "gp3"}, {"VolumeType": "st1"}, "InvalidParameterValue"),  # st1 >= 125
        ({"VolumeType": "gp3"}, {"Iops": 90000}, "InvalidParameterValue"),
        ({"VolumeType": "gp3", "Size": 1}, {"Iops": 4000}, "InvalidParameterValue"),  # 500/GiB
        ({"VolumeType": "gp3"}, {"Throughput": 3000}, "InvalidParameterValue"),
        ({"VolumeType": "gp2"}, {"Iops": 3000}, "InvalidParameterCombination"),
        ({"VolumeType": "gp2"}, {"Throughput": 200}, "InvalidParameterCombination"),
        ({"VolumeType": "gp3"}, {"VolumeType": "magnetic"}, "InvalidParameterValue"),
        ({"VolumeType": "gp3"}, {"VolumeType": "standard"}, "UnsupportedOperation"),
        ({"VolumeType": "standard"}, {"Size": 2}, "UnsupportedOperation"),
        ({"VolumeType": "gp3"}, {"MultiAttachEnabled": True}, "InvalidParameterCombination"),
        ({"VolumeType": "io1", "Size": 4, "Iops": 100}, {"MultiAttachEnabled": True},
         "InvalidParameterCombination"),
        ({"VolumeType": "io2", "Size": 4, "Iops": 100, "MultiAttachEnabled": True},
         {"VolumeType": "gp3"}, "InvalidParameterCombination"),
        ({"VolumeType": "io1", "Size": 4, "Iops": 100, "MultiAttachEnabled": True},
         {"Size": 8}, "InvalidParameterValue"),
        ({"VolumeType": "gp3"}, {}, "InvalidParameterValue"),  # nothing to change
        ({"VolumeType": "gp3", "Size": 2}, {"Size": 2}, "InvalidParameterValue"),  # no change
    ],
)  # fmt: skip
def test_aws_rules_refuse_the_modification_and_leave_the_volume(
    ec2: Any, create: dict[str, Any], modify: dict[str, Any], code: str
) -> None:
    volume_id = new_volume(ec2, **{"Size": 1, **create})
    before = volume(ec2, volume_id)
    got, message, status = aws_error(ec2.modify_volume, VolumeId=volume_id, **modify)
    assert (got, status) == (code, 400), message
    assert volume(ec2, volume_id) == before
    code, _, _ = aws_error(ec2.describe_volumes_modifications, VolumeIds=[volume_id])
    assert code == "InvalidVolumeModification.NotFound"


def test_a_volume_in_error_cannot_be_modified(quick: ServerProcess, ec2: Any) -> None:
    volume_id = new_volume(ec2, Size=1)
    # As a failed creation leaves it.
    quick.sql("UPDATE volumes SET state = 'error' WHERE id = ?", volume_id)
    code, message, status = aws_error(ec2.modify_volume, VolumeId=volume_id, Size=2)
    assert (code, status) == ("IncorrectModificationState", 400)
    assert "error" in message


def test_a_second_modification_while_one_runs_is_refused(slow: ServerProcess) -> None:
    ec2 = slow.client()
    volume_id = new_volume(ec2, Size=1, VolumeType="gp3")
    ec2.modify_volume(VolumeId=volume_id, Size=2)

    def optimizing() -> dict[str, Any] | None:
        item = modification(ec2, volume_id)
        return item if item["ModificationState"] == "optimizing" else None

    item = poll(optimizing)
    assert 50 <= item["Progress"] < 100
    assert "EndTime" not in item
    # EC2 shows the new size from the start of `optimizing`.
    assert volume(ec2, volume_id)["Size"] == 2
    code, message, status = aws_error(ec2.modify_volume, VolumeId=volume_id, Size=3)
    assert (code, status) == ("IncorrectModificationState", 400)
    assert message == f"Volume {volume_id} cannot be modified in modification state OPTIMIZING"
    assert modification(ec2, volume_id)["TargetSize"] == 2


def test_a_modification_within_the_cooldown_is_refused(server: ServerProcess) -> None:
    ec2 = server.client()  # the session server keeps AWS's default 6-hour cooldown
    volume_id = new_volume(ec2, Size=1)
    ec2.modify_volume(VolumeId=volume_id, Size=2)
    assert wait_finished(ec2, volume_id)["ModificationState"] == "completed"
    code, message, status = aws_error(ec2.modify_volume, VolumeId=volume_id, Size=3)
    assert (code, status) == ("VolumeModificationRateExceeded", 400)
    assert message == (
        "You've reached the maximum modification rate per volume limit. "
        "Wait at least 6 hours between modifications per EBS volume."
    )
    assert volume(ec2, volume_id)["Size"] == 2


def test_a_modification_the_storage_cannot_carry_out_fails_and_the_volume_keeps_its_size(
    quick_file: ServerProcess,
) -> None:
    ec2 = quick_file.client()
    volume_id = new_volume(ec2, Size=1, VolumeType="gp3")
    layout = volume_segment(quick_file.data_dir, volume_id).with_name("volume.json")
    layout.write_text("not a layout")  # the storage backend can no longer read the volume
    ec2.modify_volume(VolumeId=volume_id, Size=4, VolumeType="io2", Iops=500)
    done = wait_finished(ec2, volume_id)
    assert done["ModificationState"] == "failed"
    assert done["StatusMessage"].startswith("Modification failed")
    assert done["EndTime"] >= done["StartTime"]
    described = volume(ec2, volume_id)
    assert (described["Size"], described["VolumeType"], described["Iops"]) == (1, "gp3", 3000)
    # A failed modification does not block the next one.
    layout.write_text(json.dumps({"layout_version": 1, "size_bytes": GIB, "segment_bytes": GIB}))
    ec2.modify_volume(VolumeId=volume_id, Size=2)
    assert wait_finished(ec2, volume_id)["ModificationState"] == "completed"
    assert volume(ec2, volume_id)["Size"] == 2


# ---- DescribeVolumesModifications ----------------------------------------------------------


@pytest.fixture(scope="module")
def listed(quick: ServerProcess) -> dict[str, str]:
    """Three finished modifications with different shapes, by role."""
    ec2 = quick.client()
    grown = new_volume(ec2, Size=1, VolumeType="gp3")
    retyped = new_volume(ec2, Size=8, VolumeType="gp2")
    tuned = new_volume(ec2, Size=10, VolumeType="gp3")
    ec2.modify_volume(VolumeId=grown, Size=7)
    ec2.modify_volume(VolumeId=retyped, VolumeType="io1", Iops=200)
    ec2.modify_volume(VolumeId=tuned, Iops=4000, Throughput=250)
    for volume_id in (grown, retyped, tuned):
        wait_finished(ec2, volume_id)
    return {"grown": grown, "retyped": retyped, "tuned": tuned}


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("target-size", "7", {"grown"}),
        ("original-size", "8", {"retyped"}),
        ("target-iops", "4000", {"tuned"}),
        ("original-iops", "100", {"retyped"}),  # gp2 at 8 GiB: 3 per GiB, at least 100
        ("target-volume-type", "io1", {"retyped"}),
        ("original-volume-type", "gp2", {"retyped"}),
        ("target-throughput", "250", {"tuned"}),
        ("original-throughput", "125", {"grown", "tuned"}),
        ("target-multi-attach-enabled", "false", {"grown", "retyped", "tuned"}),
        ("original-multi-attach-enabled", "true", set()),
        ("targetMultiAttachEnabled", "false", {"grown", "retyped", "tuned"}),  # as documented
        ("originalMultiAttachEnabled", "false", {"grown", "retyped", "tuned"}),
        ("modification-state", "completed", {"grown", "retyped", "tuned"}),
        ("modification-state", "optimizing", set()),
    ],
)
def test_each_documented_filter_selects_its_modifications(
    ec2: Any, listed: dict[str, str], name: str, value: str, expected: set[str]
) -> None:
    found = ec2.describe_volumes_modifications(
        VolumeIds=list(listed.values()), Filters=[{"Name": name, "Values": [value]}]
    )["VolumesModifications"]
    by_id = {v: k for k, v in listed.items()}
    assert {by_id[m["VolumeId"]] for m in found} == expected


def test_volume_id_and_start_time_filters_and_wildcards(ec2: Any, listed: dict[str, str]) -> None:
    grown = listed["grown"]
    start = modification(ec2, grown)["StartTime"]
    stamp = start.strftime("%Y-%m-%dT%H:%M:%S.") + f"{start.microsecond // 1000:03d}Z"
    for filters in (
        [{"Name": "volume-id", "Values": [grown]}],
        [
            {"Name": "volume-id", "Values": [grown[:8] + "*"]},
            {"Name": "target-size", "Values": ["7"]},
        ],
        [{"Name": "start-time", "Values": [stamp]}, {"Name": "volume-id", "Values": [grown]}],
    ):
        found = ec2.describe_volumes_modifications(Filters=filters)["VolumesModifications"]
        assert [m["VolumeId"] for m in found] == [grown], filters


def test_an_unknown_filter_is_refused(ec2: Any) -> None:
    code, message, _ = aws_error(
        ec2.describe_volumes_modifications, Filters=[{"Name": "size", "Values": ["1"]}]
    )
    assert (code, message) == ("InvalidParameterValue", "The filter 'size' is invalid")


def test_pages_of_max_results_walk_every_modification_once(
    ec2: Any, listed: dict[str, str]
) -> None:
    for _ in range(6 - len(listed)):  # at least two pages of five
        extra = new_volume(ec2, Size=1)
        ec2.modify_volume(VolumeId=extra, Size=2)
    seen: list[str] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {"MaxResults": 5}
        if token:
            params["NextToken"] = token
        page = ec2.describe_volumes_modifications(**params)
        assert len(page["VolumesModifications"]) <= 5
        seen += [m["VolumeId"] for m in page["VolumesModifications"]]
        token = page.get("NextToken")
        if not token:
            break
    assert len(seen) == len(set(seen)) >= 6
    assert set(listed.values()) <= set(seen)
    everything = ec2.describe_volumes_modifications()["VolumesModifications"]
    assert sorted(seen) == sorted(m["VolumeId"] for m in everything)
    paginator = ec2.get_paginator("describe_volumes_modifications")
    walked = [
        m["VolumeId"]
        for page in paginator.paginate(PaginationConfig={"PageSize": 5})
        for m in page["VolumesModifications"]
    ]
    assert sorted(walked) == sorted(seen)


def test_bad_pagination_input_is_refused(ec2: Any, listed: dict[str, str]) -> None:
    code, _, _ = aws_error(ec2.describe_volumes_modifications, NextToken="garbage!")
    assert code == "InvalidPaginationToken"
    code, _, _ = aws_error(ec2.describe_volumes_modifications, MaxResults=2)
    assert code == "InvalidParameterValue"


def test_unknown_malformed_and_unmodified_volume_ids(ec2: Any) -> None:
    code, message, _ = aws_error(
        ec2.describe_volumes_modifications, VolumeIds=["vol-0123456789abcdef0"]
    )
    assert code == "InvalidVolume.NotFound"
    assert "vol-0123456789abcdef0" in message
    code, _, _ = aws_error(ec2.describe_volumes_modifications, VolumeIds=["vol-nothex"])
    assert code == "InvalidVolumeID.Malformed"
    code, _, _ = aws_error(ec2.modify_volume, VolumeId="vol-0123456789abcdef0", Size=2)
    assert code == "InvalidVolume.NotFound"
    untouched = new_volume(ec2)
    code, message, _ = aws_error(ec2.describe_volumes_modifications, VolumeIds=[untouched])
    assert (code, message) == (
        "InvalidVolumeModification.NotFound",
        f"Modification for volume '{untouched}' does not exist.",
    )


def test_another_accounts_volume_is_not_found_and_its_modifications_not_listed(
    quick: ServerProcess, listed: dict[str, str]
) -> None:
    _, key = quick.new_account()
    other = quick.client(key=key)
    grown = listed["grown"]
    code, _, _ = aws_error(other.modify_volume, VolumeId=grown, Size=9)
    assert code == "InvalidVolume.NotFound"
    code, _, _ = aws_error(other.describe_volumes_modifications, VolumeIds=[grown])
    assert code == "InvalidVolume.NotFound"
    assert other.describe_volumes_modifications()["VolumesModifications"] == []
    own = new_volume(other, Size=1)
    other.modify_volume(VolumeId=own, Size=2)
    mine = [m["VolumeId"] for m in other.describe_volumes_modifications()["VolumesModifications"]]
    assert mine == [own]
    assert modification(quick.client(), grown)["TargetSize"] == 7


def test_a_deleted_volume_takes_its_modification_with_it(ec2: Any) -> None:
    volume_id = new_volume(ec2, Size=1)
    ec2.modify_volume(VolumeId=volume_id, Size=2)
    wait_finished(ec2, volume_id)
    ec2.delete_volume(VolumeId=volume_id)
    listed = ec2.describe_volumes_modifications()["VolumesModifications"]
    assert volume_id not in [m["VolumeId"] for m in listed]
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[volume_id], WaiterConfig=FAST)
    code, _, _ = aws_error(ec2.describe_volumes_modifications, VolumeIds=[volume_id])
    assert code == "InvalidVolume.NotFound"


# ---- the AWS CLI ---------------------------------------------------------------------------


def test_cli_modify_volume_and_describe_volumes_modifications(quick: ServerProcess) -> None:
    run = unique()
    created = aws_json(
        quick, "create-volume", "--availability-zone", "us-east-1a", "--size", "1",
        "--volume-type", "gp3", "--tag-specifications",
        f"ResourceType=volume,Tags=[{{Key=run,Value={run}}}]",
    )  # fmt: skip
    volume_id = created["VolumeId"]
    aws(quick, "wait", "volume-available", "--volume-ids", volume_id)
    answer = aws_json(
        quick, "modify-volume", "--volume-id", volume_id, "--size", "10", "--iops", "4000",
        "--throughput", "300",
    )["VolumeModification"]  # fmt: skip
    assert answer["ModificationState"] == "modifying"
    assert (answer["TargetSize"], answer["TargetIops"], answer["TargetThroughput"]) == (
        10,
        4000,
        300,
    )

    def completed() -> dict[str, Any] | None:
        found = aws_json(
            quick, "describe-volumes-modifications", "--filters",
            f"Name=volume-id,Values={volume_id}", "Name=modification-state,Values=completed",
        )["VolumesModifications"]  # fmt: skip
        return found[0] if found else None

    assert poll(completed)["Progress"] == 100
    described = aws_json(quick, "describe-volumes", "--volume-ids", volume_id)["Volumes"][0]
    assert (described["Size"], described["Iops"], described["Throughput"]) == (10, 4000, 300)

    shrink = aws(quick, "modify-volume", "--volume-id", volume_id, "--size", "2", check=False)
    assert shrink.returncode != 0
    assert "(InvalidParameterValue)" in shrink.stderr
    assert "New size cannot be smaller than existing size" in shrink.stderr
    missing = aws(
        quick, "describe-volumes-modifications", "--volume-ids", "vol-0123456789abcdef0",
        check=False,
    )  # fmt: skip
    assert "(InvalidVolume.NotFound)" in missing.stderr


# ---- restart -------------------------------------------------------------------------------


def test_a_modification_interrupted_by_a_restart_is_resumed_and_completes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    proc = ServerProcess(
        tmp_path_factory.mktemp("modify-restart") / "data",
        _config(modification_cooldown_seconds=0, modification_optimizing_seconds=3600),
    )
    proc.start()
    try:
        ec2 = proc.client()
        volume_id = new_volume(ec2, Size=1)
        ec2.modify_volume(VolumeId=volume_id, Size=2)
        poll(lambda: modification(ec2, volume_id)["ModificationState"] == "optimizing" or None)
        proc.stop()
        config = _config(modification_cooldown_seconds=0)
        proc.config_path.write_text(config + proc.storage_config + proc.store_config)
        proc.start()
        done = wait_finished(proc.client(), volume_id)
        assert done["ModificationState"] == "completed"
        assert volume(proc.client(), volume_id)["Size"] == 2
        with volume_file(proc, volume_id) as path:
            assert path.stat().st_size == 2 * GIB
        assert "resuming job" in proc.log_path.read_text()
    finally:
        proc.stop()
