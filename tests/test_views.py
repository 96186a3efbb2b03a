"""Views of records as the API answers them, where they differ from the record."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ebsemu.api.views import reservation_view
from ebsemu.model import Attachment, AttachmentState, Instance


@pytest.mark.parametrize(
    ("state", "shown"),
    [
        (AttachmentState.ATTACHING, "attaching"),
        (AttachmentState.ATTACHED, "attached"),
        (AttachmentState.DETACHING, "detaching"),
        (AttachmentState.BUSY, "attached"),  # a volume's state, unknown to an instance's mapping
    ],
)
def test_an_instance_block_device_mapping_shows_only_states_ec2_gives_it(
    state: AttachmentState, shown: str
) -> None:
    now = datetime.now(UTC)
    instance = Instance("i-0123456789abcdef0", "000000000000", "us-east-1", "us-east-1a", "kvm",
                        "web", "running", now)  # fmt: skip
    attachment = Attachment("vol-0123456789abcdef0", instance.id, "/dev/sdf", state, now)
    [described] = reservation_view(instance, [attachment])["Instances"]
    [mapping] = described["BlockDeviceMappings"]
    assert mapping["Ebs"]["Status"] == shown
