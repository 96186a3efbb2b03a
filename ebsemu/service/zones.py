"""Regions and availability zones, as the configuration names them."""

from __future__ import annotations

from typing import Any

from ebsemu import errors
from ebsemu.config import Config, Zone
from ebsemu.service import listing
from ebsemu.service.context import RequestContext


def _zone_fields(zone: Zone) -> dict[str, str]:
    return {
        "zone-name": zone.name,
        "zone-id": zone.zone_id,
        "region-name": zone.region,
        "state": "available",
        "opt-in-status": "opt-in-not-required",
        "zone-type": "availability-zone",
        "group-name": zone.region,
        "group-long-name": zone.region,
        "message": "",
        "parent-zone-id": "",
        "parent-zone-name": "",
    }


def describe_zones(
    config: Config,
    ctx: RequestContext,
    names: list[str],
    zone_ids: list[str],
    raw_filters: list[dict[str, Any]] | None,
) -> list[Zone]:
    zones = config.zones_in(ctx.region)
    known_names = {z.name for z in zones}
    known_ids = {z.zone_id for z in zones}
    for wanted, known in ((names, known_names), (zone_ids, known_ids)):
        unknown = [value for value in wanted if value not in known]
        if unknown:
            shown = ", ".join(v[:64] for v in unknown)
            raise errors.InvalidParameterValue(f"Invalid availability zone: [{shown}]")
    flts = listing.filters(raw_filters)
    return [
        zone
        for zone in zones
        if (not names or zone.name in names)
        and (not zone_ids or zone.zone_id in zone_ids)
        and listing.match_filters(_zone_fields(zone), flts)
    ]


def describe_regions(
    config: Config, names: list[str], raw_filters: list[dict[str, Any]] | None, endpoint: str
) -> list[str]:
    unknown = [name for name in names if name not in config.regions]
    if unknown:
        raise errors.InvalidParameterValue(f"Invalid region: {unknown[0][:64]}")
    flts = listing.filters(raw_filters)
    return [
        region
        for region in config.regions
        if (not names or region in names)
        and listing.match_filters(
            {"region-name": region, "endpoint": endpoint, "opt-in-status": "opt-in-not-required"},
            flts,
        )
    ]
