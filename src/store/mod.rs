//! The state store: one SQLite database under `state_dir` holding what must survive a restart
//! (settings and constraints changed through the API, leases and observed peaks, history).
//!
//! Every write is one transaction committed with `synchronous=FULL` in WAL mode, so a write the
//! API has acknowledged survives `kill -9` and power loss, and the file is never half-written.
//! A store that cannot be opened or read fails start-up with a message naming the file: an
//! operator's settings are never silently reset.
//!
//! - [`identity`]: the store id in the database and in `state_dir/store-id`, checked at start, and
//!   the reset that moves a refused store aside.
//! - [`status`]: whether writes succeed, known from the next write after a failure or recovery.
//!   Every write first checks that the database file is still the one opened.

//! - [`overrides`]: settings and constraints changed through the API.
//! - [`leases`]: leases (written in batches, see [`Store::commit_batch`]) and observed peaks.
//! - [`history`]: history points with their per-GPU rows, and bucketed queries over them.
mod history;
pub(crate) mod identity;
mod leases;
mod overrides;
pub(crate) mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::Connection;

pub use identity::move_aside;
pub(crate) use leases::Observation;
pub use status::StoreStatus;

/// File name of the database inside `state_dir`.
pub(crate) const DB_FILE: &str = "vramguard.db";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory could not be created.
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// SQLite failed (unreadable, corrupt, disk full...).
    #[error("state store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The store found at start is not the one this state directory had (missing, empty,
    /// another store's) or not a database at all.
    #[error(
        "state store {path}: {reason}; vramguard will not start on it: restore it, or start fresh on purpose \
         with `vramguard --reset-state` (moves the old files aside into state_dir/reset-<time>/)"
    )]
    Refused {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The database file went away while vramguard was running.
    #[error("state store {path} {what}")]
    Vanished {
        /// The database file.
        path: PathBuf,
        /// What happened to it.
        what: String,
    },
    /// A stored value is not what this version can read.
    #[error("state store {path}: stored {key} is invalid: {message}")]
    Invalid {
        /// The database file.
        path: PathBuf,
        /// Which record.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl StoreError {
    /// Whether `--reset-state` may move the store aside for this: the store was refused or is
    /// unreadable as data. Not for an I/O problem of the directory, which a reset cannot fix.
    pub fn resettable(&self) -> bool {
        matches!(self, StoreError::Refused { .. } | StoreError::Invalid { .. })
    }
}

/// An open state store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The database file as opened (device, inode), to notice it being deleted or replaced.
    file: Option<(u64, u64)>,
    status: Arc<StoreStatus>,
    batch: Batch,
}

/// Group commit of lease writes: the commit thread (`app::commit`) writes concurrent lease
/// operations into one open transaction, and one COMMIT (one fsync) makes all of them durable.
#[derive(Debug, Default)]
struct Batch {
    /// A transaction is open and holds uncommitted lease writes.
    open: bool,
    /// Lease writes made so far: an operation compares it before and after to know whether it
    /// wrote.
    writes: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS overrides (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    ts            REAL NOT NULL,
    cpu_percent   REAL,
    ram_used_gb   REAL,
    ram_total_gb  REAL,
    ram_percent   REAL,
    gpu_percent   REAL NOT NULL,
    vram_used_mb  REAL NOT NULL,
    vram_total_mb REAL NOT NULL,
    vram_percent  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_ts ON history (ts);
CREATE TABLE IF NOT EXISTS history_gpus (
    ts           REAL NOT NULL,
    gpu_index    INTEGER NOT NULL,
    gpu_percent  REAL,
    vram_percent REAL,
    PRIMARY KEY (ts, gpu_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    id               TEXT PRIMARY KEY,
    gpu_index        INTEGER,
    gpu_uuid         TEXT,
    vram_reserved_gb REAL NOT NULL,
    granted_at       REAL NOT NULL,
    expires_at       REAL NOT NULL,
    ttl_seconds      INTEGER NOT NULL,
    client           TEXT
);
CREATE TABLE IF NOT EXISTS observations (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    workload      TEXT NOT NULL,
    quantization  TEXT NOT NULL,
    enable_offload INTEGER NOT NULL,
    vae_tile_size INTEGER NOT NULL,
    model_loaded  INTEGER NOT NULL,
    peak_vram_gb  REAL NOT NULL,
    source        TEXT NOT NULL,
    recorded_at   REAL NOT NULL
);
";

/// SQLite's default page cache is 2 MiB per connection; a scan of a day of history would fill
/// it and keep it resident. 512 KiB holds the working set of the writes, and the OS page cache
/// serves history scans nearly as fast (see BENCHMARKS.md).
fn limit_cache(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "cache_size", -512)
}

/// Brings a store written by an earlier version up to date. Leases gained a `details` column
/// (JSON: pids, baseline, peak, overrun, grant key) in wave 2; observations an `outcome` in
/// wave 3 (earlier ones were all of finished runs).
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has = |table: &str, column: &str| -> rusqlite::Result<bool> {
        conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?.exists([table, column])
    };
    if !has("leases", "details")? {
        conn.execute_batch("ALTER TABLE leases ADD COLUMN details TEXT")?;
    }
    if !has("observations", "outcome")? {
        conn.execute_batch("ALTER TABLE observations ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok'")?;
    }
    // Wave 3 again: the VAE decode's tiling and the video's size are part of an observation's key.
    if !has("observations", "vae_tiling")? {
        conn.execute_batch(
            "ALTER TABLE observations ADD COLUMN vae_tiling INTEGER NOT NULL DEFAULT 1;
             ALTER TABLE observations ADD COLUMN width INTEGER;
             ALTER TABLE observations ADD COLUMN height INTEGER;
             ALTER TABLE observations ADD COLUMN frames INTEGER;",
        )?;
    }
    // Issue #27: a client's figure the evidence did not bear out is kept, unused.
    if !has("observations", "used")? {
        conn.execute_batch("ALTER TABLE observations ADD COLUMN used INTEGER NOT NULL DEFAULT 1")?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and checks it is readable and intact.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir { path: dir.to_owned(), source })?;
        let path = dir.join(DB_FILE);
        let from_file = identity::check_before_open(dir)?;
        let sql = |source: rusqlite::Error| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                StoreError::Refused { path: path.clone(), reason: source.to_string() }
            }
            _ => StoreError::Sqlite { path: path.clone(), source },
        };
        let mut conn = Connection::open(&path).map_err(sql)?;
        // WAL keeps readers off the writer's back; FULL makes each commit durable on disk.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql)?;
        limit_cache(&conn).map_err(sql)?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(sql)?;
        if check != "ok" {
            return Err(StoreError::Refused { path, reason: format!("is damaged: {check}") });
        }
        conn.execute_batch(SCHEMA).map_err(sql)?;
        migrate(&conn).map_err(sql)?;
        identity::settle(&mut conn, dir, from_file)?;
        let file = identity::file_id(&path);
        Ok(Self { conn, path, file, status: Arc::new(StoreStatus::new()), batch: Batch::default() })
    }

    /// Whether writes succeed; shared, so it can be read without the writers' lock.
    pub fn status(&self) -> Arc<StoreStatus> {
        Arc::clone(&self.status)
    }

    /// Runs one write: first checks the database file is still the one opened, then `f`, and
    /// records the outcome in [`Store::status`].
    fn write<T>(&mut self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let result = identity::check_still_there(&self.path, self.file)
            .and_then(|()| f(&mut self.conn).map_err(|source| StoreError::Sqlite { path: self.path.clone(), source }));
        self.status.record(result.as_ref().err());
        result
    }

    /// Runs one lease write inside the open batch. The file's identity was checked when the
    /// batch began and is checked again by its COMMIT, which alone makes the write durable, so
    /// it is not checked once more per write. Only a failure is recorded: the store is healthy
    /// again when a COMMIT says so.
    fn write_in_batch<T>(&mut self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let result = f(&mut self.conn).map_err(|source| StoreError::Sqlite { path: self.path.clone(), source });
        if let Err(e) = &result {
            self.status.record(Some(e));
        }
        result
    }

    /// Joins the open batch, opening one if none is: lease writes go into it uncommitted.
    fn join_batch(&mut self) -> Result<(), StoreError> {
        if !self.batch.open {
            self.write(|c| c.execute_batch("BEGIN IMMEDIATE"))?;
            self.batch.open = true;
        }
        self.batch.writes += 1;
        Ok(())
    }

    /// Lease writes made so far (an operation compares it before and after to know whether it
    /// wrote).
    pub fn batch_marker(&self) -> u64 {
        self.batch.writes
    }

    /// Whether a batch of lease writes is open, waiting for its commit.
    pub fn batch_open(&self) -> bool {
        self.batch.open
    }

    /// Commits the open batch, if any: one fsync for every write in it. On failure it is rolled
    /// back; the caller must resynchronise what it published.
    pub fn commit_batch(&mut self) -> Result<(), StoreError> {
        if !self.batch.open {
            return Ok(());
        }
        self.batch.open = false;
        // SQLite rolls a transaction back by itself on some errors (a full disk): then there is
        // nothing left to commit, and the batch is lost like a failed commit.
        let result = if self.conn.is_autocommit() {
            Err(StoreError::Sqlite {
                path: self.path.clone(),
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    Some("the batch's transaction was rolled back by SQLite".to_owned()),
                ),
            })
        } else {
            self.write(|c| c.execute_batch("COMMIT"))
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(e)
            }
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite { path: self.path.clone(), source }
    }
}

impl Store {
    /// Size of the database and its write-ahead log, bytes.
    pub fn size_bytes(&self) -> u64 {
        let wal = self.path.with_extension("db-wal");
        [self.path.as_path(), wal.as_path()].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
    }

    /// Opens a second connection to the same database for long reads (history queries), so a
    /// reader never holds the writers' lock. WAL lets it read while the writer commits.
    pub fn reader(&self) -> Result<Self, StoreError> {
        let sql = |source| StoreError::Sqlite { path: self.path.clone(), source };
        let conn = Connection::open(&self.path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql)?;
        limit_cache(&conn).map_err(sql)?;
        Ok(Self {
            conn,
            path: self.path.clone(),
            file: self.file,
            status: Arc::clone(&self.status),
            batch: Batch::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x42u8; 8192]).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(DB_FILE), "{err}");
    }
}
