//! Table maintenance while streaming continues: compaction of small files (OPTIMIZE) and
//! VACUUM with a retention period. Checkpoints are written by the commits themselves, every
//! `delta.checkpointInterval` versions. Each operation is one Delta commit checked for
//! conflicts like any other: if a concurrent commit conflicts, the operation fails, is logged,
//! and runs again at its next turn — the streaming writer is never stopped by it.

use std::time::Duration;

use deltalake_core::{DeltaTable, DeltaTableError};

/// Compact the small files of `table` into larger ones; a summary for the log.
pub async fn optimize(table: DeltaTable) -> Result<(DeltaTable, String), DeltaTableError> {
    let (table, m) = table.optimize().await?;
    let summary = format!(
        "{} files removed, {} added, {} partitions optimized",
        m.num_files_removed, m.num_files_added, m.partitions_optimized
    );
    Ok((table, summary))
}

/// Delete the files removed from `table` more than `retention` ago (time travel to versions
/// older than that stops working); the number of files deleted.
pub async fn vacuum(
    table: DeltaTable,
    retention: Duration,
) -> Result<(DeltaTable, usize), DeltaTableError> {
    let period = chrono::Duration::from_std(retention)
        .map_err(|e| DeltaTableError::Generic(format!("retention {retention:?}: {e}")))?;
    let (table, m) = table
        .vacuum()
        .with_retention_period(period)
        .with_enforce_retention_duration(false)
        .await?;
    Ok((table, m.files_deleted.len()))
}
