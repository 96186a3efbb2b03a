"""Versioned schema migrations. Append a migration; never edit a released one."""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: volumes, snapshots, tags, manifests, attachments, jobs
    """
    CREATE TABLE volumes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        owner_id TEXT NOT NULL,
        region TEXT NOT NULL,
        zone TEXT NOT NULL,
        zone_id TEXT NOT NULL DEFAULT '',
        size_gib INTEGER NOT NULL,
        volume_type TEXT NOT NULL,
        iops INTEGER,
        throughput INTEGER,
        encrypted INTEGER NOT NULL DEFAULT 0,
        kms_key_id TEXT,
        snapshot_id TEXT,
        multi_attach INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        state_message TEXT,
        create_time TEXT NOT NULL,
        updated_at REAL NOT NULL,
        client_token TEXT,
        request_digest TEXT
    );
    CREATE INDEX volumes_owner_state ON volumes(owner_id, region, state);
    CREATE UNIQUE INDEX volumes_client_token ON volumes(owner_id, client_token)
        WHERE client_token IS NOT NULL;

    CREATE TABLE snapshots (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        owner_id TEXT NOT NULL,
        region TEXT NOT NULL,
        volume_id TEXT NOT NULL,
        volume_size_gib INTEGER NOT NULL,
        state TEXT NOT NULL,
        progress INTEGER NOT NULL DEFAULT 0,
        description TEXT NOT NULL DEFAULT '',
        encrypted INTEGER NOT NULL DEFAULT 0,
        kms_key_id TEXT,
        state_message TEXT,
        start_time TEXT NOT NULL,
        completion_time TEXT,
        full_size_bytes INTEGER,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX snapshots_owner_state ON snapshots(owner_id, region, state);
    CREATE INDEX snapshots_volume ON snapshots(volume_id);

    CREATE TABLE tags (
        resource_id TEXT NOT NULL,
        resource_type TEXT NOT NULL,
        owner_id TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (resource_id, key)
    );
    CREATE INDEX tags_key_value ON tags(key, value);

    CREATE TABLE snapshot_blocks (
        snapshot_id TEXT NOT NULL,
        block_index INTEGER NOT NULL,
        digest BLOB NOT NULL,
        PRIMARY KEY (snapshot_id, block_index)
    ) WITHOUT ROWID;
    CREATE INDEX snapshot_blocks_digest ON snapshot_blocks(digest);

    CREATE TABLE attachments (
        volume_id TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        device TEXT NOT NULL,
        state TEXT NOT NULL,
        attach_time TEXT NOT NULL,
        delete_on_termination INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (volume_id, instance_id)
    );
    CREATE INDEX attachments_instance ON attachments(instance_id);

    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        resource_id TEXT NOT NULL,
        state TEXT NOT NULL,
        payload TEXT NOT NULL DEFAULT '{}',
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX jobs_state ON jobs(state);
    """,
    # 2: ClientTokens of purged volumes, so a late retry cannot create a second volume
    """
    CREATE TABLE retired_client_tokens (
        owner_id TEXT NOT NULL,
        client_token TEXT NOT NULL,
        volume_id TEXT NOT NULL,
        retired_at REAL NOT NULL,
        PRIMARY KEY (owner_id, client_token)
    );
    CREATE INDEX retired_client_tokens_age ON retired_client_tokens(retired_at);
    """,
    # 3: instances (VMM domains) and the VMM's handle of each attachment
    """
    CREATE TABLE instances (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        owner_id TEXT NOT NULL,
        region TEXT NOT NULL,
        zone TEXT NOT NULL,
        vmm TEXT NOT NULL,
        domain TEXT NOT NULL,
        state TEXT NOT NULL,
        launch_time TEXT NOT NULL,
        UNIQUE (vmm, domain)
    );
    CREATE INDEX instances_owner ON instances(owner_id, region);
    ALTER TABLE attachments ADD COLUMN handle TEXT;
    """,
    # 4: accounts and their access keys; snapshots' create-volume permissions
    """
    CREATE TABLE accounts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE TABLE access_keys (
        access_key_id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        secret TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX access_keys_account ON access_keys(account_id);

    CREATE TABLE snapshot_permissions (
        snapshot_id TEXT NOT NULL,
        grantee TEXT NOT NULL,  -- a 12-digit account id, or 'all' (public)
        PRIMARY KEY (snapshot_id, grantee)
    ) WITHOUT ROWID;
    CREATE INDEX snapshot_permissions_grantee ON snapshot_permissions(grantee, snapshot_id);
    """,
    # 5: export records (target, CHAP credentials) of attached volumes, re-applied at start
    """
    CREATE TABLE exports (
        volume_id TEXT PRIMARY KEY,
        record TEXT NOT NULL
    );
    """,
    # 6: storage hosts: the host holding each volume, and each snapshot's frozen view
    """
    ALTER TABLE volumes ADD COLUMN storage_host TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE snapshots ADD COLUMN storage_host TEXT NOT NULL DEFAULT 'default';
    """,
    # 7: EBS direct API: the snapshots it writes (parent, token, timeout), the blocks put into
    # each one while it is pending, and the key that signs block and page tokens
    """
    CREATE TABLE direct_snapshots (
        snapshot_id TEXT PRIMARY KEY,
        owner_id TEXT NOT NULL,
        parent_snapshot_id TEXT,
        client_token TEXT,
        request_digest TEXT NOT NULL,
        timeout_minutes INTEGER NOT NULL,
        last_activity REAL NOT NULL
    );
    CREATE UNIQUE INDEX direct_snapshots_client_token ON direct_snapshots(owner_id, client_token)
        WHERE client_token IS NOT NULL;
    CREATE TABLE direct_written_blocks (
        snapshot_id TEXT NOT NULL,
        block_index INTEGER NOT NULL,
        digest BLOB NOT NULL,
        PRIMARY KEY (snapshot_id, block_index)
    ) WITHOUT ROWID;
    CREATE TABLE direct_keys (
        name TEXT PRIMARY KEY,
        secret BLOB NOT NULL
    );
    CREATE TRIGGER direct_snapshot_removed AFTER DELETE ON snapshots BEGIN
        DELETE FROM direct_snapshots WHERE snapshot_id = OLD.id;
        DELETE FROM direct_written_blocks WHERE snapshot_id = OLD.id;
    END;
    """,
    # 8: volume attributes and status: autoEnableIO, and the I/O incident of an impaired volume
    """
    CREATE TABLE volume_io (
        volume_id TEXT PRIMARY KEY,
        auto_enable_io INTEGER NOT NULL DEFAULT 0,
        io_disabled INTEGER NOT NULL DEFAULT 0,
        event_id TEXT,
        event_description TEXT,
        event_since TEXT
    );
    CREATE TRIGGER volume_io_purged AFTER DELETE ON volumes
    BEGIN
        DELETE FROM volume_io WHERE volume_id = OLD.id;
    END;
    """,
    # 9: EBS encryption: per account and region settings; encrypted resources' wrapped data keys
    """
    CREATE TABLE ebs_encryption_settings (
        account_id TEXT NOT NULL,
        region TEXT NOT NULL,
        by_default INTEGER NOT NULL DEFAULT 0,
        kms_key_id TEXT,  -- a key ARN; NULL: the AWS managed key alias/aws/ebs
        PRIMARY KEY (account_id, region)
    ) WITHOUT ROWID;
    CREATE TABLE data_keys (
        resource_id TEXT PRIMARY KEY,  -- an encrypted volume or snapshot
        wrapped_key TEXT NOT NULL      -- its data key, wrapped by the master key
    ) WITHOUT ROWID;
    """,
    # 10: volume modifications (ModifyVolume): the latest one of each volume
    """
    CREATE TABLE volume_modifications (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        volume_id TEXT NOT NULL UNIQUE,
        owner_id TEXT NOT NULL,
        region TEXT NOT NULL,
        state TEXT NOT NULL,
        status_message TEXT,
        progress INTEGER NOT NULL DEFAULT 0,
        start_time TEXT NOT NULL,
        end_time TEXT,
        original_size INTEGER NOT NULL,
        original_volume_type TEXT NOT NULL,
        original_iops INTEGER,
        original_throughput INTEGER,
        original_multi_attach INTEGER NOT NULL,
        target_size INTEGER NOT NULL,
        target_volume_type TEXT NOT NULL,
        target_iops INTEGER,
        target_throughput INTEGER,
        target_multi_attach INTEGER NOT NULL
    );
    CREATE INDEX volume_modifications_owner ON volume_modifications(owner_id, region, state);
    """,
    # 11: crash safety: each job's steps as they are done, failed and undone (append-only), so
    # a resumed job goes on from the first step not done, or finishes undoing
    """
    CREATE TABLE job_steps (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        seq INTEGER NOT NULL,
        step TEXT NOT NULL,
        outcome TEXT NOT NULL,  -- done | failed | undone
        at REAL NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;
    """,
    # 12: fast snapshot restores: per account, snapshot and zone, its state and when each
    # state began (a disabled one stays listed until it is enabled again)
    """
    CREATE TABLE fast_snapshot_restores (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT NOT NULL,
        snapshot_id TEXT NOT NULL,
        zone TEXT NOT NULL,
        zone_id TEXT NOT NULL,
        region TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        snapshot_owner_id TEXT NOT NULL,
        enabling_time TEXT,
        optimizing_time TEXT,
        enabled_time TEXT,
        disabling_time TEXT,
        disabled_time TEXT,
        UNIQUE (account_id, snapshot_id, zone)
    );
    CREATE INDEX fast_snapshot_restores_snapshot ON fast_snapshot_restores(snapshot_id, state);
    """,
    # 13: snapshot lineages: the lineage of each volume and snapshot, recorded when it is made
    # (NULL in the rows made before), so that ListChangedBlocks relates two snapshots whatever
    # records between them were deleted since
    """
    ALTER TABLE volumes ADD COLUMN lineage TEXT;
    ALTER TABLE snapshots ADD COLUMN lineage TEXT;
    """,
    # 14: a ClientToken is kept as "<region>/<token>": EC2 scopes it to the account and the
    # region, so one token used in two regions makes a volume (a snapshot) in each. Tokens of
    # purged volumes (retired_client_tokens) name no region and stay as they are: such a token
    # no longer matches a retry.
    """
    UPDATE volumes SET client_token = region || '/' || client_token
        WHERE client_token IS NOT NULL;
    UPDATE direct_snapshots SET client_token = (
        SELECT snapshots.region || '/' || direct_snapshots.client_token FROM snapshots
        WHERE snapshots.id = direct_snapshots.snapshot_id
    ) WHERE client_token IS NOT NULL;
    """,
    # 15: the snapshot quota is counted per account and region (as EC2's Service Quotas) on
    # every snapshot made: an index with the column ``deleted`` answers the count alone
    # (snapshots_owner_state has no such column: each row counted was read from the table)
    """
    CREATE INDEX IF NOT EXISTS snapshots_owner_deleted ON snapshots(owner_id, region, deleted);
    """,
    # 16: a volume made by CopyVolumes names the volume it copies (its SourceVolumeId)
    """
    ALTER TABLE volumes ADD COLUMN source_volume_id TEXT;
    """,
    # 17: block public access for snapshots, per account and region (no row: unblocked); the
    # public grants of snapshots stay as they are, block-all-sharing only stops them counting
    """
    CREATE TABLE IF NOT EXISTS snapshot_block_public_access (
        account_id TEXT NOT NULL,
        region TEXT NOT NULL,
        state TEXT NOT NULL,  -- block-all-sharing | block-new-sharing | unblocked
        PRIMARY KEY (account_id, region)
    ) WITHOUT ROWID;
    """,
    # 18: snapshot locks (LockSnapshot): one per locked snapshot, its mode, duration or
    # expiry and cooling-off period; a lock on a pending snapshot starts with its completion
    """
    CREATE TABLE IF NOT EXISTS snapshot_locks (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        snapshot_id TEXT NOT NULL UNIQUE,
        owner_id TEXT NOT NULL,
        region TEXT NOT NULL,
        lock_mode TEXT NOT NULL,
        created_on TEXT NOT NULL,
        duration_days INTEGER,
        duration_start TEXT,
        expires_on TEXT,
        cool_off_hours INTEGER,
        cool_off_expires_on TEXT
    );
    CREATE INDEX IF NOT EXISTS snapshot_locks_owner ON snapshot_locks(owner_id, region);
    """,
    # 19: a volume's deletion looks for the copies of it under way (on a shared store)
    """
    CREATE INDEX IF NOT EXISTS volumes_source ON volumes(source_volume_id)
    WHERE source_volume_id IS NOT NULL;
    """,
]
