"""Reconciliation: compare the store with what every backend holds, and settle the difference.

Run at start-up (before the server takes requests) and by `ebsemu reconcile` (with
``--dry-run``, only the report). What is compared, and what is done about a difference:

- storage volumes: a ``vol-`` volume with no record, or whose record is `deleted`, is removed;
  an `available` volume whose storage is gone becomes `error` (reported for one `in-use`);
- frozen views: a ``snap-`` view whose snapshot is not `pending` any more is dropped;
- manifests: a snapshot in `error` that still has manifest rows is swept;
- block store: blocks no manifest references are deleted (under the GC lock); a `completed`
  snapshot whose blocks are missing becomes `error`;
- exports: exports of volumes not attached are removed; recorded ones are re-applied;
- VMM disks: a ``vol-`` disk in an instance with no attachment record is detached; an
  `attached` record with no disk in the VMM is reported;
- jobs: every unfinished job is resumed and every resource left transitional without its job
  gets one (they roll forward, or back to a state EC2 allows).

Only names ebsemu owns are touched: ``vol-``/``snap-`` ids the backends list (the file
backend's own directories, LVs with ebsemu's tags, targets under its IQN prefix).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field

from backends.errors import BackendError
from ebsemu.model import AttachmentState, SnapshotState, VolumeState
from ebsemu.service import snapshot_data
from ebsemu.service.core import Core
from ebsemu.service.exports import ExportService

log = logging.getLogger(__name__)

REFERENCE_CHUNK = 500
VMM_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Finding:
    """One difference between the store and a backend, and what is (or would be) done."""

    kind: str
    resource: str
    action: str


@dataclass
class Report:
    applied: bool
    findings: list[Finding] = field(default_factory=list)

    def add(self, kind: str, resource: str, action: str) -> None:
        self.findings.append(Finding(kind, resource, action))
        log.warning(
            "reconcile: %s %s: %s%s", kind, resource, action, "" if self.applied else " (dry run)"
        )

    def count(self, kind: str) -> int:
        return sum(1 for f in self.findings if f.kind == kind)

    def lines(self) -> list[str]:
        verb = "done" if self.applied else "would do"
        if not self.findings:
            return ["reconcile: store and backends agree; nothing to do"]
        return [f"{f.kind:<22} {f.resource:<26} {f.action}" for f in self.findings] + [
            f"reconcile: {len(self.findings)} finding(s), {verb}"
        ]

    def to_dict(self) -> dict[str, object]:
        return {"Applied": self.applied, "Findings": [asdict(f) for f in self.findings]}


async def stale_views(core: Core) -> list[tuple[str, str, str]]:
    """(storage host, view id, why) of each frozen view whose snapshot is no longer pending.
    Safe while the server runs: a snapshot's record is `pending` from before its view is
    frozen until after its capture ends. A host that cannot answer is skipped (logged)."""
    states = await core.store.snapshot_states()
    stale: list[tuple[str, str, str]] = []
    for entry in core.storage_hosts.entries:
        try:
            views = await entry.backend.list_views()
        except (BackendError, OSError) as exc:
            log.warning("storage host %s: cannot list its views: %s", entry.name, exc)
            continue
        for view_id in sorted(views):
            if not view_id.startswith("snap-"):
                continue
            state = states.get(view_id)
            if state is None or state[0] != SnapshotState.PENDING.value or state[1]:
                why = "no record" if state is None else f"snapshot {state[0]}"
                stale.append((entry.name, view_id, why))
    return stale


async def drop_stale_views(core: Core) -> list[str]:
    """Drop every stale frozen view (see ``stale_views``); the ids dropped. A view the backend
    still fails to drop is logged and tried again next time."""
    dropped: list[str] = []
    for host, view_id, why in await stale_views(core):
        try:
            await core.storage_hosts.backend(host).drop_view(view_id)
        except (BackendError, OSError) as exc:
            log.warning("view %s (%s): dropping it failed again: %s", view_id, why, exc)
            continue
        log.info("dropped stale view %s on %s (%s)", view_id, host, why)
        dropped.append(view_id)
    return dropped


class Reconciler:
    """``run(apply=False)`` only reports; ``run(apply=True)`` also acts. Call it when no job
    runs and no request is served (start-up, or an offline CLI run)."""

    def __init__(self, core: Core, exports: ExportService) -> None:
        self._core = core
        self._exports = exports

    async def run(self, *, apply: bool) -> Report:
        report = Report(applied=apply)
        sections = [
            ("storage", self._storage),
            ("views", self._views),
            ("manifests", self._error_manifests),
            ("blocks", self._blocks),
            ("exports", self._exports_),
            ("vmm", self._vmm_disks),
        ]
        for name, section in sections:
            try:
                await section(report, apply)
            except (BackendError, OSError) as exc:
                # One backend that cannot answer does not keep the others from being settled.
                report.add("backend-error", name, f"skipped: {exc}")
        await self._jobs(report, apply)
        return report

    # ---- storage --------------------------------------------------------------------------

    async def _storage(self, report: Report, apply: bool) -> None:
        """Each storage host against the volume records placed on it."""
        store = self._core.store
        states = await store.volume_states()
        placed = {
            volume_id: host
            for host, ids in (await store.storage_hosts_in_use()).items()
            for volume_id in ids
        }
        for entry in self._core.storage_hosts.entries:
            try:
                await self._storage_host(report, apply, entry.name, states, placed)
            except (BackendError, OSError) as exc:
                report.add("backend-error", f"storage {entry.name}", f"skipped: {exc}")

    async def _storage_host(
        self,
        report: Report,
        apply: bool,
        host: str,
        states: dict[str, str],
        placed: dict[str, str],
    ) -> None:
        store, storage = self._core.store, self._core.storage_hosts.backend(host)
        held = {v for v in await storage.list_volumes() if v.startswith("vol-")}
        for volume_id in sorted(held):
            state = states.get(volume_id)
            if state is None or state == VolumeState.DELETED.value:
                why = "no record" if state is None else "record deleted"
            elif placed.get(volume_id, host) != host:
                why = f"the volume is on storage host {placed[volume_id]}"
            else:
                continue
            report.add("orphan-volume", volume_id, f"remove storage on {host} ({why})")
            if apply:
                await storage.delete(volume_id)
        for volume_id, state in sorted(states.items()):
            if volume_id in held or placed.get(volume_id) != host:
                continue
            if state == VolumeState.AVAILABLE.value:
                report.add("missing-storage", volume_id, "mark volume error")
                if apply:
                    await store.transition_volume(
                        volume_id,
                        {VolumeState.AVAILABLE},
                        VolumeState.ERROR,
                        "The volume's data is missing from the volume store",
                    )
            elif state == VolumeState.IN_USE.value:
                report.add("missing-storage", volume_id, "report only (volume is attached)")

    async def _views(self, report: Report, apply: bool) -> None:
        for host, view_id, why in await stale_views(self._core):
            report.add("orphan-view", view_id, f"drop frozen view on {host} ({why})")
            if apply:
                await self._core.storage_hosts.backend(host).drop_view(view_id)

    async def _error_manifests(self, report: Report, apply: bool) -> None:
        states = await self._core.store.snapshot_states()
        for snapshot_id in sorted(await self._core.store.manifest_snapshots()):
            state = states.get(snapshot_id)
            if state is None or state[0] == SnapshotState.ERROR.value:
                report.add("stale-manifest", snapshot_id, "sweep manifest and its blocks")
                if apply:
                    await snapshot_data.sweep(self._core, snapshot_id)

    async def _blocks(self, report: Report, apply: bool) -> None:
        core = self._core
        async with core.block_gc_lock:
            stored = await asyncio.to_thread(lambda: list(core.blocks.iter_digests()))
            referenced: set[bytes] = set()
            for start in range(0, len(stored), REFERENCE_CHUNK):
                referenced |= await core.store.referenced(stored[start : start + REFERENCE_CHUNK])
            unreferenced = [d for d in stored if d not in referenced]
            if unreferenced:
                report.add(
                    "orphan-blocks",
                    f"{len(unreferenced)} block(s)",
                    "delete blocks no manifest references",
                )
                if apply:

                    def delete_all() -> None:
                        for digest in unreferenced:
                            core.blocks.delete(digest)

                    await asyncio.to_thread(delete_all)
        needed = await core.store.completed_digests()
        present = set(stored)
        broken: set[str] = set()
        for digest, snapshot_ids in needed.items():
            if digest not in present and not await asyncio.to_thread(core.blocks.contains, digest):
                broken |= snapshot_ids
        for snapshot_id in sorted(broken):
            report.add("missing-blocks", snapshot_id, "mark snapshot error")
            if apply:
                await core.store.transition_snapshot(
                    snapshot_id,
                    {SnapshotState.COMPLETED},
                    SnapshotState.ERROR,
                    "Snapshot data is missing from the block store",
                )

    # ---- exports and VMM disks ------------------------------------------------------------

    async def _exports_(self, report: Report, apply: bool) -> None:
        export = self._core.export
        if export is None:
            return
        attached = await self._core.store.attached_volume_ids()
        for volume_id in sorted(set(await export.list_exports()) - attached):
            report.add("orphan-export", volume_id, "remove export (volume not attached)")
        if apply:
            for volume_id in await self._exports.reconcile():
                report.add("lost-export", volume_id, "re-applied the recorded export")

    async def _vmm_disks(self, report: Report, apply: bool) -> None:
        store = self._core.store
        by_instance: dict[str, dict[str, AttachmentState]] = {}
        for attachment in await store.all_attachments():
            by_instance.setdefault(attachment.instance_id, {})[attachment.volume_id] = (
                attachment.state
            )
        for instance in await store.all_instances():
            vmm = self._core.vmms.get(instance.vmm)
            if vmm is None or instance.state == "terminated":
                continue
            try:
                async with asyncio.timeout(VMM_TIMEOUT_SECONDS):
                    disks = await vmm.list_attached(instance.domain)
            except (BackendError, TimeoutError) as exc:
                report.add("vmm-unreachable", instance.id, f"skipped: {exc or 'timed out'}")
                continue
            recorded = by_instance.get(instance.id, {})
            seen = {d.volume_id for d in disks}
            for volume_id in sorted(seen - set(recorded)):
                if not volume_id.startswith("vol-"):
                    continue
                report.add("orphan-disk", f"{instance.id}/{volume_id}", "detach from the VMM")
                if apply:
                    try:
                        await vmm.detach(instance.domain, volume_id, force=True)
                    except BackendError as exc:
                        log.error("reconcile: detaching %s failed: %s", volume_id, exc)
            for volume_id, state in sorted(recorded.items()):
                if state is AttachmentState.ATTACHED and volume_id not in seen:
                    report.add(
                        "missing-disk", f"{instance.id}/{volume_id}", "report only (not in VMM)"
                    )

    # ---- jobs -----------------------------------------------------------------------------

    async def _jobs(self, report: Report, apply: bool) -> None:
        store = self._core.store
        for job_id, kind, resource_id, _ in await store.unfinished_jobs():
            report.add("unfinished-job", resource_id, f"resume {kind} (job {job_id})")
        for kind, resource_id, _ in await store.stranded():
            report.add("stranded", resource_id, f"start missing {kind}")
        if apply:
            await self._core.jobs.resume()
            await self._core.jobs.settle_stranded()
