"""Who may create volumes from a snapshot, as EC2 has it.

Implicit: the owner. Explicit: accounts the owner named (createVolumePermission UserId).
Public: everyone, once the owner granted the group `all` — unless the owner blocks public
sharing (ebsemu/service/public_access.py), which refuses new public grants and, in
block-all-sharing mode, keeps the public ones from counting. Those who may create volumes from
a snapshot also see it in DescribeSnapshots; everyone else gets the NotFound an absent id gets.
Only the owner reads or changes the permissions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ebsemu import errors
from ebsemu.model import Snapshot
from ebsemu.service import encryption, public_access
from ebsemu.service.context import RequestContext
from ebsemu.service.core import Core
from ebsemu.store.base import Reach

PUBLIC = "all"
CREATE_VOLUME_PERMISSION = "createVolumePermission"
PRODUCT_CODES = "productCodes"
ATTRIBUTES = (CREATE_VOLUME_PERMISSION, PRODUCT_CODES)
OPERATIONS = ("add", "remove")
NO_OWNER_ALIASES = frozenset({"amazon", "aws-marketplace", "aws-backup-vault"})

# The caller's own snapshot, or the AWS error (NotFound, or UnauthorizedOperation when the
# caller sees the snapshot without owning it).
OwnedSnapshot = Callable[[RequestContext, str], Awaitable[Snapshot]]
# Told of a snapshot's grantees after some were removed (fast restores of the others stop).
Unshared = Callable[[Snapshot, Collection[str]], Awaitable[None]]


def may_restore(account_id: str, snapshot: Snapshot, grantees: Collection[str]) -> bool:
    """Whether ``account_id`` may create volumes from the snapshot, given the grants in force
    (the store's ``effective_snapshot_grantees``)."""
    return snapshot.owner_id == account_id or account_id in grantees or PUBLIC in grantees


def check_user_id(value: str) -> str:
    if not (len(value) == 12 and value.isascii() and value.isdigit()):
        raise errors.InvalidUserIDMalformed(f'Invalid user id: "{value[:64]}"')
    return value


def reach(
    account_id: str, owner_ids: Sequence[str], restorable_by: Sequence[str]
) -> tuple[Reach, ...]:
    """The snapshots DescribeSnapshots lists, as owner/grantee terms (any one suffices).

    With no options: the caller's own, those shared with it, public ones. Owner narrows that
    to the owners named (`self`, account ids; `amazon` and the like own nothing here).
    RestorableBy narrows it to snapshots that `self` (owned or shared explicitly), `all`
    (public) or the account ids named (the caller's own snapshots shared with them) may
    create volumes from.
    """
    me = frozenset({account_id})
    terms: list[Reach]
    if restorable_by:
        terms = []
        for who in dict.fromkeys(restorable_by):
            if who in ("self", account_id):
                terms += [Reach(me), Reach(None, me)]
            elif who == PUBLIC:
                terms.append(Reach(None, frozenset({PUBLIC})))
            else:
                terms.append(Reach(me, frozenset({check_user_id(who)})))
    else:
        terms = [Reach(me), Reach(None, frozenset({account_id, PUBLIC}))]
    if owner_ids:
        owners = frozenset(_owner(account_id, owner) for owner in owner_ids) - {""}
        narrowed = [
            Reach(owners if t.owners is None else t.owners & owners, t.grantees) for t in terms
        ]
        terms = [t for t in narrowed if t.owners]
    return tuple(dict.fromkeys(terms))


def _owner(account_id: str, owner: str) -> str:
    if owner == "self":
        return account_id
    if owner in NO_OWNER_ALIASES:
        return ""
    return check_user_id(owner)


@dataclass(frozen=True)
class PermissionChange:
    add: tuple[str, ...]
    remove: tuple[str, ...]


def permission_change(params: Mapping[str, Any]) -> PermissionChange:
    """ModifySnapshotAttribute's change, from either form EC2 accepts:
    `UserId.N` / `UserGroup.N` with `OperationType`, or `CreateVolumePermission.Add.N.UserId`
    / `.Group` and `CreateVolumePermission.Remove.N…`."""
    attribute = params.get("Attribute")
    if attribute is not None and attribute != CREATE_VOLUME_PERMISSION:
        check_attribute(attribute)
        raise errors.InvalidParameterValue(
            f"Value ({attribute}) for parameter attribute is invalid. "
            f"Only {CREATE_VOLUME_PERMISSION} can be modified."
        )
    structured = params.get("CreateVolumePermission") or {}
    users = params.get("UserIds") or []
    groups = params.get("GroupNames") or []
    operation = params.get("OperationType")
    flat = bool(users or groups or operation is not None)
    if structured and flat:
        raise errors.InvalidParameterCombination(
            "CreateVolumePermission cannot be used with OperationType, UserId or UserGroup."
        )
    if structured:
        change = PermissionChange(
            _grantees(structured.get("Add") or []), _grantees(structured.get("Remove") or [])
        )
    elif flat:
        if operation is None:
            raise errors.MissingParameter("The request must contain the parameter operationType")
        if operation not in OPERATIONS:
            raise errors.InvalidParameterValue(
                f"Value ({operation[:64]}) for parameter operationType is invalid. "
                "Expected add or remove."
            )
        grantees = _checked([*users], [*groups])
        change = PermissionChange(
            grantees if operation == "add" else (), grantees if operation == "remove" else ()
        )
    else:
        change = PermissionChange((), ())
    if not (change.add or change.remove):
        raise errors.MissingParameter(
            "The request must contain the parameter createVolumePermission "
            "(or userId / userGroup with operationType)"
        )
    return change


def _grantees(items: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    users: list[str] = []
    groups: list[str] = []
    for item in items:
        if item.get("UserId") is None and item.get("Group") is None:
            raise errors.MissingParameter(
                "Each createVolumePermission item needs a userId or a group"
            )
        if item.get("UserId") is not None:
            users.append(item["UserId"])
        if item.get("Group") is not None:
            groups.append(item["Group"])
    return _checked(users, groups)


def _checked(users: list[str], groups: list[str]) -> tuple[str, ...]:
    for group in groups:
        if group != PUBLIC:
            raise errors.InvalidParameterValue(
                f"Value ({group[:64]}) for parameter group is invalid. Expected all."
            )
    return tuple(dict.fromkeys([*map(check_user_id, users), *groups]))


def check_attribute(attribute: str) -> str:
    if attribute not in ATTRIBUTES:
        raise errors.InvalidParameterValue(
            f"Value ({attribute[:64]}) for parameter attribute is invalid. "
            f"Expected {' or '.join(ATTRIBUTES)}."
        )
    return attribute


def permission_view(grantees: Iterable[str]) -> list[dict[str, str]]:
    return [{"Group": g} if g == PUBLIC else {"UserId": g} for g in grantees]


class SharingService:
    """ModifySnapshotAttribute, DescribeSnapshotAttribute, ResetSnapshotAttribute."""

    def __init__(
        self, core: Core, owned_snapshot: OwnedSnapshot, unshared: Unshared | None = None
    ) -> None:
        self._core = core
        self._owned = owned_snapshot
        self._unshared = unshared

    async def _after_change(self, snapshot: Snapshot) -> None:
        if self._unshared is not None:
            await self._unshared(snapshot, await self._core.store.snapshot_grantees(snapshot.id))

    async def modify(self, ctx: RequestContext, snapshot_id: str, change: PermissionChange) -> None:
        # The snapshot's lock: a restore that checked the permission finishes its insert first.
        async with self._core.locks.hold(snapshot_id):
            snapshot = await self._owned(ctx, snapshot_id)
            add = [grantee for grantee in change.add if grantee != snapshot.owner_id]
            encryption.check_shareable(snapshot, add)
            if PUBLIC in add:
                await public_access.check_public_sharing(self._core.store, snapshot)
            await self._core.store.change_snapshot_grantees(snapshot_id, add, change.remove)
            if change.remove:
                await self._after_change(snapshot)

    async def describe(
        self, ctx: RequestContext, snapshot_id: str, attribute: str
    ) -> list[dict[str, str]]:
        check_attribute(attribute)
        await self._owned(ctx, snapshot_id)
        if attribute == PRODUCT_CODES:
            return []
        return permission_view(await self._core.store.snapshot_grantees(snapshot_id))

    async def reset(self, ctx: RequestContext, snapshot_id: str, attribute: str) -> None:
        check_attribute(attribute)
        if attribute != CREATE_VOLUME_PERMISSION:
            raise errors.InvalidParameterValue(
                f"Value ({attribute}) for parameter attribute is invalid. "
                f"Only {CREATE_VOLUME_PERMISSION} can be reset."
            )
        async with self._core.locks.hold(snapshot_id):
            snapshot = await self._owned(ctx, snapshot_id)
            await self._core.store.clear_snapshot_grantees(snapshot_id)
            await self._after_change(snapshot)
