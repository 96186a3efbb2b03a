"""AWS's rules for volume parameters and tags, as data and small checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ebsemu import errors
from ebsemu.model import VolumeType


@dataclass(frozen=True)
class TypeLimits:
    min_gib: int
    max_gib: int
    iops: tuple[int, int] | None = None  # settable IOPS range, None: IOPS not settable
    iops_per_gib: int | None = None
    iops_required: bool = False
    throughput: tuple[int, int] | None = None  # MiB/s, gp3 only
    multi_attach: bool = False


LIMITS: Mapping[VolumeType, TypeLimits] = {
    VolumeType.STANDARD: TypeLimits(1, 1024),
    VolumeType.GP2: TypeLimits(1, 16384),
    VolumeType.GP3: TypeLimits(1, 65536, (3000, 80000), 500, throughput=(125, 2000)),
    VolumeType.IO1: TypeLimits(4, 16384, (100, 64000), 50, True, multi_attach=True),
    VolumeType.IO2: TypeLimits(4, 65536, (100, 256000), 1000, True, multi_attach=True),
    VolumeType.ST1: TypeLimits(125, 16384),
    VolumeType.SC1: TypeLimits(125, 16384),
}

GP3_BASELINE_IOPS = 3000
GP3_BASELINE_THROUGHPUT = 125
GP3_MAX_THROUGHPUT_PER_IOPS = 0.25
MAX_TAGS = 50


def volume_type(value: str | None) -> VolumeType:
    if value is None:
        return VolumeType.GP2
    try:
        return VolumeType(value)
    except ValueError:
        expected = " | ".join(t.value for t in VolumeType)
        raise errors.InvalidParameterValue(
            f"Value ({value}) for parameter volumeType is invalid. Expected: '{expected}'."
        ) from None


def check_size(vtype: VolumeType, size_gib: int) -> None:
    limits = LIMITS[vtype]
    if size_gib < limits.min_gib:
        raise errors.InvalidParameterValue(
            f"Volume of {size_gib}GiB is too small; minimum is {limits.min_gib}GiB."
        )
    if size_gib > limits.max_gib:
        raise errors.InvalidParameterValue(
            f"Volume of {size_gib}GiB is too large for volume type {vtype.value}; "
            f"maximum is {limits.max_gib}GiB."
        )


def performance(
    vtype: VolumeType, size_gib: int, iops: int | None, throughput: int | None
) -> tuple[int | None, int | None]:
    """Validate IOPS/throughput for the type and size; return the values the volume reports."""
    limits = LIMITS[vtype]
    if iops is not None and limits.iops is None:
        raise errors.InvalidParameterCombination(
            f"The parameter iops is not supported for {vtype.value} volumes."
        )
    if throughput is not None and limits.throughput is None:
        raise errors.InvalidParameterCombination(
            f"The parameter throughput is not supported for {vtype.value} volumes."
        )
    if iops is None and limits.iops_required:
        raise errors.MissingParameter("The request must contain the parameter iops")
    if vtype is VolumeType.GP2:
        return min(max(100, 3 * size_gib), 16000), None
    if limits.iops is None:
        return None, None
    if vtype is VolumeType.GP3:
        iops = GP3_BASELINE_IOPS if iops is None else iops
        throughput = GP3_BASELINE_THROUGHPUT if throughput is None else throughput
    assert iops is not None
    low, high = limits.iops
    if not low <= iops <= high:
        raise errors.InvalidParameterValue(
            f"Value ({iops}) for parameter iops is invalid. "
            f"Expected a value between {low} and {high} for {vtype.value} volumes."
        )
    assert limits.iops_per_gib is not None
    if iops > low and iops > size_gib * limits.iops_per_gib:
        raise errors.InvalidParameterValue(
            f"Iops to volume size ratio of {iops / size_gib:.1f} is too high; "
            f"maximum is {limits.iops_per_gib}."
        )
    if throughput is not None and limits.throughput is not None:
        low, high = limits.throughput
        if not low <= throughput <= high:
            raise errors.InvalidParameterValue(
                f"Value ({throughput}) for parameter throughput is invalid. "
                f"Expected a value between {low} and {high}."
            )
        if throughput > GP3_BASELINE_THROUGHPUT and throughput > iops * GP3_MAX_THROUGHPUT_PER_IOPS:
            raise errors.InvalidParameterValue(
                f"Throughput (MiBps) to iops ratio of {throughput / iops:.6f} is too high; "
                f"maximum is {GP3_MAX_THROUGHPUT_PER_IOPS} MiBps per iops."
            )
    return iops, throughput


def check_tags(tags: Mapping[str, str]) -> None:
    if len(tags) > MAX_TAGS:
        raise errors.TagLimitExceeded(f"The maximum number of tags per resource is {MAX_TAGS}.")
    for key, value in tags.items():
        if not key or len(key) > 128:
            raise errors.InvalidParameterValue(
                f"Tag key must be between 1 and 128 characters, got {len(key)}."
            )
        check_not_reserved(key)
        if len(value) > 256:
            raise errors.InvalidParameterValue(
                f"Tag value for key '{key}' exceeds the maximum length of 256 characters."
            )


def check_not_reserved(key: str) -> None:
    if key.lower().startswith("aws:"):
        raise errors.InvalidParameterValue(
            f"Tag keys starting with 'aws:' are reserved for internal use: {key[:128]}"
        )


def tag_dict(tags: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """[{'Key':…, 'Value':…}] -> {key: value}; a missing value is the empty string."""
    out: dict[str, str] = {}
    for tag in tags:
        key = tag.get("Key")
        if key is None:
            raise errors.InvalidParameterValue("Tag key must be specified.")
        if key in out:
            raise errors.InvalidParameterValue(f"Duplicate tag key '{key[:128]}' specified.")
        out[key] = tag.get("Value", "")
    check_tags(out)
    return out


def spec_tags(specs: Iterable[Mapping[str, object]], resource_type: str) -> dict[str, str]:
    """Tags from TagSpecifications; every specification must name ``resource_type``."""
    tags: dict[str, str] = {}
    for spec in specs:
        kind = spec.get("ResourceType")
        if kind != resource_type:
            raise errors.InvalidParameterValue(
                f"'{kind}' is not a valid taggable resource type for this operation."
                if kind
                else "The tag specification must name a resource type."
            )
        new = tag_dict(spec.get("Tags", []))  # type: ignore[arg-type]  # parsed by the codec
        for key in new:
            if key in tags:
                raise errors.InvalidParameterValue(f"Duplicate tag key '{key[:128]}' specified.")
        tags.update(new)
    check_tags(tags)
    return tags
