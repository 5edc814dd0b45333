//! The state store: one SQLite database under `state_dir` holding what must survive a restart
//! (settings and constraints changed through the API; later history and leases).
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

pub mod identity;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::{Optimization, Quantization};
use crate::history::{GpuHistoryPoint, HistoryPoint, HistorySeries};
use crate::leases::Lease;
use crate::policy::estimate::EstimateKey;
use crate::time::rfc3339_unix;
pub use identity::{ID_FILE, move_aside};
pub use status::StoreStatus;

/// File name of the database inside `state_dir`.
pub const DB_FILE: &str = "vramguard.db";

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
    /// The thread that commits lease writes could not be started.
    #[error("cannot start the state store's commit thread: {0}")]
    Thread(std::io::Error),
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
/// (JSON: pids, baseline, peak, overrun, grant key) in wave 2.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_details: bool =
        conn.prepare("SELECT 1 FROM pragma_table_info('leases') WHERE name = 'details'")?.exists([])?;
    if !has_details {
        conn.execute_batch("ALTER TABLE leases ADD COLUMN details TEXT")?;
    }
    Ok(())
}

/// The lease fields kept as JSON in `leases.details`.
#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseDetails {
    #[serde(default)]
    pids: Vec<u32>,
    // Stores written before the baseline left out attributed processes used the old name; the
    // old figure is larger, which only makes the reservation count longer (fail closed).
    #[serde(default, alias = "gpu_used_at_grant_gb")]
    unattributed_used_at_grant_gb: Option<f64>,
    #[serde(default)]
    vram_peak_gb: Option<f64>,
    #[serde(default)]
    overrun: bool,
    grant: Option<EstimateKey>,
    // Leases taken before tokens had names have no owner: only an admin acts on them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
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

    /// Reads an override stored under `key`, if any.
    pub fn load_override<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT value FROM overrides WHERE key = ?1", params![key], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| StoreError::Invalid {
                path: self.path.clone(),
                key: key.to_owned(),
                message: e.to_string(),
            })
        })
        .transpose()
    }

    /// Stores an override durably; returns once it is committed to disk.
    pub fn save_override<T: Serialize>(&mut self, key: &str, value: &T, now: f64) -> Result<(), StoreError> {
        let text = serde_json::to_string(value).map_err(|e| StoreError::Invalid {
            path: self.path.clone(),
            key: key.to_owned(),
            message: e.to_string(),
        })?;
        self.write(|conn| {
            conn.execute(
                "INSERT INTO overrides (key, value, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                params![key, text, now],
            )
            .map(drop)
        })
    }

    /// Removes an override durably (back to config.yaml).
    pub fn delete_override(&mut self, key: &str) -> Result<(), StoreError> {
        self.write(|conn| conn.execute("DELETE FROM overrides WHERE key = ?1", params![key]).map(drop))
    }
}

impl Store {
    /// Every stored lease, live or not (the caller reaps).
    pub fn load_leases(&self) -> Result<Vec<Lease>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, gpu_index, gpu_uuid, vram_reserved_gb, granted_at, expires_at, ttl_seconds, client, details
                 FROM leases",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                let details: Option<String> = r.get(8)?;
                Ok((
                    Lease {
                        id: r.get(0)?,
                        gpu_index: r.get(1)?,
                        gpu_uuid: r.get(2)?,
                        vram_reserved_gb: r.get(3)?,
                        granted_at: r.get(4)?,
                        expires_at: r.get(5)?,
                        ttl_seconds: r.get(6)?,
                        client: r.get(7)?,
                        pids: Vec::new(),
                        unattributed_used_at_grant_gb: None,
                        vram_peak_gb: None,
                        overrun: false,
                        grant: EstimateKey::default(),
                        owner: None,
                    },
                    details,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (mut lease, details) = row.map_err(|e| self.sql(e))?;
            if let Some(text) = details {
                let d: LeaseDetails = serde_json::from_str(&text).map_err(|e| StoreError::Invalid {
                    path: self.path.clone(),
                    key: format!("lease {}", lease.id),
                    message: e.to_string(),
                })?;
                lease.pids = d.pids;
                lease.unattributed_used_at_grant_gb = d.unattributed_used_at_grant_gb;
                lease.vram_peak_gb = d.vram_peak_gb;
                lease.overrun = d.overrun;
                lease.owner = d.owner;
                if let Some(g) = d.grant {
                    lease.grant = g;
                }
            }
            out.push(lease);
        }
        Ok(out)
    }

    /// Inserts or updates a lease in the open batch (durable once [`Store::commit_batch`] ran).
    pub fn put_lease(&mut self, l: &Lease) -> Result<(), StoreError> {
        let details = serde_json::to_string(&LeaseDetails {
            pids: l.pids.clone(),
            unattributed_used_at_grant_gb: l.unattributed_used_at_grant_gb,
            vram_peak_gb: l.vram_peak_gb,
            overrun: l.overrun,
            grant: Some(l.grant.clone()),
            owner: l.owner.clone(),
        })
        .expect("lease details serialise");
        self.join_batch()?;
        self.write_in_batch(|conn| {
            conn.prepare_cached(
                "INSERT INTO leases (id, gpu_index, gpu_uuid, vram_reserved_gb, granted_at, expires_at, ttl_seconds, client, details)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(id) DO UPDATE SET expires_at = excluded.expires_at, ttl_seconds = excluded.ttl_seconds,
                                               details = excluded.details",
            )?
            .execute(params![l.id, l.gpu_index, l.gpu_uuid, l.vram_reserved_gb, l.granted_at, l.expires_at, l.ttl_seconds, l.client, details])
            .map(drop)
        })
    }

    /// Ends leases in the open batch: deletes them and records the observations their ends
    /// produced, so a release and what was learned from it are durable together (a savepoint
    /// keeps a failure half-way from leaving half of it in the batch).
    pub fn end_leases(&mut self, ids: &[String], observations: &[Observation]) -> Result<(), StoreError> {
        self.join_batch()?;
        self.write_in_batch(|conn| {
            // A savepoint: a failure half-way leaves nothing of this end in the batch.
            let tx = conn.savepoint()?;
            for id in ids {
                tx.prepare_cached("DELETE FROM leases WHERE id = ?1")?.execute(params![id])?;
            }
            for o in observations {
                tx.prepare_cached(
                    "INSERT INTO observations (workload, quantization, enable_offload, vae_tile_size, model_loaded,
                                               peak_vram_gb, source, recorded_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    o.key.workload,
                    quantization_name(o.key.settings.quantization),
                    o.key.settings.enable_offload,
                    o.key.settings.vae_tile_size,
                    o.key.model_loaded,
                    o.peak_vram_gb,
                    o.source,
                    o.recorded_at
                ])?;
            }
            tx.commit()
        })
    }

    /// Every observation, newest first.
    pub fn load_observations(&self) -> Result<Vec<Observation>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT workload, quantization, enable_offload, vae_tile_size, model_loaded, peak_vram_gb, source,
                        recorded_at
                 FROM observations ORDER BY recorded_at DESC, id DESC",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                let q: String = r.get(1)?;
                Ok(Observation {
                    key: EstimateKey {
                        workload: r.get(0)?,
                        settings: Optimization {
                            quantization: quantization_from(&q),
                            enable_offload: r.get(2)?,
                            vae_tile_size: r.get(3)?,
                            ..Optimization::default()
                        },
                        model_loaded: r.get(4)?,
                    },
                    peak_vram_gb: r.get(5)?,
                    source: r.get(6)?,
                    recorded_at: r.get(7)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.sql(e))
    }

    /// Removes every observation durably.
    pub fn clear_observations(&mut self) -> Result<(), StoreError> {
        self.write(|conn| conn.execute("DELETE FROM observations", []).map(drop))
    }
}

/// One observed peak of a finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Workload, settings and `model_loaded` it ran with (`max_vram_usage_gb` is not part of it).
    pub key: EstimateKey,
    /// Its peak VRAM, GiB.
    pub peak_vram_gb: f64,
    /// `nvml` (vramguard's reading of its pids) or `client` (the client's own figure).
    pub source: String,
    /// When it was recorded, Unix seconds.
    pub recorded_at: f64,
}

fn quantization_name(q: Quantization) -> &'static str {
    match q {
        Quantization::Fp16 => "fp16",
        Quantization::Bf16 => "bf16",
        Quantization::Int8 => "int8",
    }
}

fn quantization_from(s: &str) -> Quantization {
    match s {
        "fp16" => Quantization::Fp16,
        "int8" => Quantization::Int8,
        _ => Quantization::Bf16,
    }
}

impl Store {
    /// Records one history point with its GPUs' figures (durably, in one transaction) and drops
    /// points older than `prune_before`. The GPUs' rows are keyed by the point's time: a snapshot
    /// recorded twice (by the recorder and by `stats/save`) keeps one row per GPU.
    pub fn record_history(&mut self, p: &HistoryPoint, prune_before: f64) -> Result<(), StoreError> {
        self.write(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO history (ts, cpu_percent, ram_used_gb, ram_total_gb, ram_percent,
                                      gpu_percent, vram_used_mb, vram_total_mb, vram_percent)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    p.ts,
                    p.cpu_percent,
                    p.ram_used_gb,
                    p.ram_total_gb,
                    p.ram_percent,
                    p.gpu_percent,
                    p.vram_used_mb,
                    p.vram_total_mb,
                    p.vram_percent
                ],
            )?;
            {
                let mut gpu = tx.prepare_cached(
                    "INSERT OR REPLACE INTO history_gpus (ts, gpu_index, gpu_percent, vram_percent)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for g in &p.gpus {
                    gpu.execute(params![p.ts, g.index, g.gpu_percent, g.vram_percent])?;
                }
            }
            tx.execute("DELETE FROM history WHERE ts < ?1", params![prune_before])?;
            tx.execute("DELETE FROM history_gpus WHERE ts < ?1", params![prune_before])?;
            tx.commit()
        })
    }

    /// Points with `start <= ts <= end`, oldest first. When more than `max_points` fall in the
    /// range they are averaged into `max_points` equal-width buckets; a reading missing from a
    /// sample is left out of its bucket's average rather than counted as 0. Each point's `gpus`
    /// are averaged per GPU over the same buckets (unbucketed: the rows recorded at its time).
    pub fn query_history(
        &self,
        start: f64,
        end: f64,
        max_points: u32,
        interval_seconds: f64,
    ) -> Result<HistorySeries, StoreError> {
        let total: u64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM history WHERE ts >= ?1 AND ts <= ?2", params![start, end], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        let bucketed = total > u64::from(max_points);
        let width = if bucketed { (end - start) / f64::from(max_points) } else { interval_seconds };
        // Column 0 is the key the point's GPUs are found by: its bucket, or its time's bits.
        let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(i64, HistoryPoint)> {
            let ts: f64 = r.get(1)?;
            let point = HistoryPoint {
                ts,
                cpu_percent: r.get(2)?,
                ram_used_gb: r.get(3)?,
                ram_total_gb: r.get(4)?,
                ram_percent: r.get(5)?,
                gpu_percent: r.get(6)?,
                vram_used_mb: r.get(7)?,
                vram_total_mb: r.get(8)?,
                vram_percent: r.get(9)?,
                timestamp: rfc3339_unix(ts),
                gpus: Vec::new(),
            };
            Ok((if bucketed { r.get(0)? } else { ts.to_bits() as i64 }, point))
        };
        let gpu_row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<(i64, GpuHistoryPoint)> {
            let key = if bucketed { r.get(0)? } else { r.get::<_, f64>(0)?.to_bits() as i64 };
            Ok((key, GpuHistoryPoint { index: r.get(1)?, gpu_percent: r.get(2)?, vram_percent: r.get(3)? }))
        };
        // The sample exactly at `end` belongs to the last bucket, not one of its own. Points and
        // their GPUs are bucketed by the same expression over the same times, so they agree.
        const BUCKET: &str = "MIN(CAST((ts - ?1) / ?3 AS INTEGER), ?4 - 1)";
        let (rows, gpu_rows) = if bucketed {
            let points = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {BUCKET} AS bucket, AVG(ts), AVG(cpu_percent), AVG(ram_used_gb), AVG(ram_total_gb),
                            AVG(ram_percent), AVG(gpu_percent), AVG(vram_used_mb), AVG(vram_total_mb),
                            AVG(vram_percent)
                     FROM history WHERE ts >= ?1 AND ts <= ?2
                     GROUP BY bucket
                     ORDER BY 2"
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(params![start, end, width, max_points], map)?.collect::<Result<Vec<_>, _>>()
                });
            // Streamed in time order and summed here: grouping in SQL would sort every row of every
            // GPU first (about twice the time). The bucket is still SQLite's, by the same expression.
            let gpus = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {BUCKET}, gpu_index, gpu_percent, vram_percent
                     FROM history_gpus WHERE ts >= ?1 AND ts <= ?2 ORDER BY ts, gpu_index"
                ))
                .and_then(|mut stmt| {
                    let mut sums = GpuSums::default();
                    let mut rows = stmt.query(params![start, end, width, max_points])?;
                    while let Some(r) = rows.next()? {
                        sums.add(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                    }
                    Ok(sums.means())
                });
            (points, gpus)
        } else {
            let points = self
                .conn
                .prepare_cached(
                    "SELECT NULL, ts, cpu_percent, ram_used_gb, ram_total_gb, ram_percent,
                            gpu_percent, vram_used_mb, vram_total_mb, vram_percent
                     FROM history WHERE ts >= ?1 AND ts <= ?2 ORDER BY ts, id",
                )
                .and_then(|mut stmt| stmt.query_map(params![start, end], map)?.collect::<Result<Vec<_>, _>>());
            let gpus = self
                .conn
                .prepare_cached(
                    "SELECT ts, gpu_index, gpu_percent, vram_percent
                     FROM history_gpus WHERE ts >= ?1 AND ts <= ?2 ORDER BY ts, gpu_index",
                )
                .and_then(|mut stmt| stmt.query_map(params![start, end], gpu_row)?.collect::<Result<Vec<_>, _>>());
            (points, gpus)
        };
        let rows = rows.map_err(|e| self.sql(e))?;
        let mut by_key: std::collections::HashMap<i64, Vec<GpuHistoryPoint>> = std::collections::HashMap::new();
        for (key, gpu) in gpu_rows.map_err(|e| self.sql(e))? {
            by_key.entry(key).or_default().push(gpu);
        }
        let points = rows
            .into_iter()
            .map(|(key, mut point)| {
                // Two points recorded at the same time (the same snapshot saved twice) share its rows.
                point.gpus = by_key.get(&key).cloned().unwrap_or_default();
                point
            })
            .collect();
        Ok(HistorySeries { points, total_count: total, resolution_seconds: width })
    }
}

/// Per bucket and GPU, the sums and counts of the readings there were, as rows arrive in time
/// order (so a bucket's rows are consecutive).
#[derive(Default)]
struct GpuSums {
    buckets: Vec<(i64, Vec<GpuSum>)>,
}

/// One GPU's utilization and VRAM % readings in a bucket: sums and counts.
struct GpuSum {
    index: u32,
    sum: [f64; 2],
    n: [u32; 2],
}

impl GpuSums {
    fn add(&mut self, bucket: i64, index: u32, util: Option<f64>, vram: Option<f64>) {
        if self.buckets.last().is_none_or(|(b, _)| *b != bucket) {
            self.buckets.push((bucket, Vec::new()));
        }
        let gpus = &mut self.buckets.last_mut().expect("pushed above").1;
        let at = match gpus.iter().position(|g| g.index == index) {
            Some(at) => at,
            None => {
                gpus.push(GpuSum { index, sum: [0.0; 2], n: [0; 2] });
                gpus.len() - 1
            }
        };
        let g = &mut gpus[at];
        for (k, v) in [util, vram].into_iter().enumerate() {
            if let Some(v) = v {
                g.sum[k] += v;
                g.n[k] += 1;
            }
        }
    }

    /// `(bucket, GPU)` means, a GPU's figure `None` where it had no reading in the bucket.
    fn means(self) -> Vec<(i64, GpuHistoryPoint)> {
        let mean = |sum: f64, n: u32| (n > 0).then(|| sum / f64::from(n));
        self.buckets
            .into_iter()
            .flat_map(|(bucket, mut gpus)| {
                gpus.sort_unstable_by_key(|g| g.index);
                gpus.into_iter().map(move |g| {
                    let point = GpuHistoryPoint {
                        index: g.index,
                        gpu_percent: mean(g.sum[0], g.n[0]),
                        vram_percent: mean(g.sum[1], g.n[1]),
                    };
                    (bucket, point)
                })
            })
            .collect()
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
    fn overrides_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            assert_eq!(s.load_override::<Vec<u32>>("k").unwrap(), None);
            s.save_override("k", &vec![1u32, 2], 1.0).unwrap();
            s.save_override("k", &vec![3u32], 2.0).unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(s.load_override::<Vec<u32>>("k").unwrap(), Some(vec![3]));
        s.delete_override("k").unwrap();
        assert_eq!(s.load_override::<Vec<u32>>("k").unwrap(), None);
    }

    #[test]
    fn leases_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Lease {
            id: "0123456789abcdef0123456789abcdef".to_owned(),
            gpu_index: Some(1),
            gpu_uuid: Some("GPU-B".to_owned()),
            vram_reserved_gb: 9.5,
            granted_at: 100.0,
            expires_at: 1000.0,
            ttl_seconds: 900,
            client: Some("worker-1".to_owned()),
            pids: vec![4242, 4243],
            unattributed_used_at_grant_gb: Some(2.5),
            vram_peak_gb: Some(8.25),
            overrun: false,
            grant: EstimateKey {
                workload: "i2v".to_owned(),
                settings: Optimization { quantization: Quantization::Int8, ..Optimization::default() },
                model_loaded: true,
            },
            owner: Some("worker-1".to_owned()),
        };
        {
            // Written into a batch that is never committed: not durable.
            let mut s = Store::open(dir.path()).unwrap();
            s.put_lease(&lease).unwrap();
            assert!(s.batch_open());
        }
        {
            let mut s = Store::open(dir.path()).unwrap();
            assert!(s.load_leases().unwrap().is_empty());
            s.put_lease(&lease).unwrap();
            s.put_lease(&Lease { expires_at: 2000.0, ..lease.clone() }).unwrap();
            assert_eq!(s.batch_marker(), 2);
            s.commit_batch().unwrap();
            assert!(!s.batch_open(), "both writes were in the one batch the commit closed");
        }
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(s.load_leases().unwrap(), vec![Lease { expires_at: 2000.0, ..lease.clone() }]);
        s.end_leases(std::slice::from_ref(&lease.id), &[]).unwrap();
        s.commit_batch().unwrap();
        assert!(s.load_leases().unwrap().is_empty());
    }

    fn point(ts: f64, cpu: Option<f64>, vram: f64) -> HistoryPoint {
        HistoryPoint {
            ts,
            cpu_percent: cpu,
            ram_used_gb: Some(1.0),
            ram_total_gb: Some(2.0),
            ram_percent: Some(50.0),
            gpu_percent: 10.0,
            vram_used_mb: vram,
            vram_total_mb: 1000.0,
            vram_percent: vram / 10.0,
            timestamp: String::new(),
            gpus: Vec::new(),
        }
    }

    /// Ten samples into five buckets: each bucket is the exact mean of its two samples, and a
    /// missing reading is skipped rather than averaged in as 0.
    #[test]
    fn history_buckets_average_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        for i in 0..10 {
            let cpu = if i == 3 { None } else { Some(f64::from(i) * 10.0) };
            s.record_history(&point(1000.0 + f64::from(i), cpu, f64::from(i) * 100.0), 0.0).unwrap();
        }
        let raw = s.query_history(1000.0, 1009.0, 100, 5.0).unwrap();
        assert_eq!(raw.total_count, 10);
        assert_eq!(raw.points.len(), 10);
        assert_eq!(raw.resolution_seconds, 5.0);
        assert_eq!(raw.points[3].cpu_percent, None);
        let b = s.query_history(1000.0, 1010.0, 5, 5.0).unwrap();
        assert_eq!(b.total_count, 10);
        assert_eq!(b.resolution_seconds, 2.0);
        let cpu: Vec<Option<f64>> = b.points.iter().map(|p| p.cpu_percent).collect();
        assert_eq!(cpu, vec![Some(5.0), Some(20.0), Some(45.0), Some(65.0), Some(85.0)]);
        let vram: Vec<f64> = b.points.iter().map(|p| p.vram_used_mb).collect();
        assert_eq!(vram, vec![50.0, 250.0, 450.0, 650.0, 850.0]);
        let ts: Vec<f64> = b.points.iter().map(|p| p.ts).collect();
        assert_eq!(ts, vec![1000.5, 1002.5, 1004.5, 1006.5, 1008.5]);
        // The sample exactly at the end of the range lands in the last bucket, not a sixth one.
        let edge = s.query_history(1000.0, 1009.0, 3, 5.0).unwrap();
        assert_eq!(edge.points.len(), 3);
        assert_eq!(edge.points[2].vram_used_mb, 750.0); // 600, 700, 800 and the edge sample 900
    }

    /// Recording prunes what is older than the retention boundary.
    #[test]
    fn history_retention_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        for i in 0..5 {
            s.record_history(&point(f64::from(i), Some(1.0), 1.0), 0.0).unwrap();
        }
        s.record_history(&point(10.0, Some(1.0), 1.0), 3.0).unwrap();
        let all = s.query_history(0.0, 100.0, 100, 1.0).unwrap();
        let ts: Vec<f64> = all.points.iter().map(|p| p.ts).collect();
        assert_eq!(ts, vec![3.0, 4.0, 10.0]);
    }

    fn gpu(index: u32, util: Option<f64>, vram: Option<f64>) -> GpuHistoryPoint {
        GpuHistoryPoint { index, gpu_percent: util, vram_percent: vram }
    }

    /// Each GPU is averaged over the same buckets as the whole; a reading a GPU lacked is left
    /// out of its mean, and a GPU with no reading in a bucket has `None`, not 0. Unbucketed,
    /// each point has the rows recorded at its time; pruning drops them with it.
    #[test]
    fn history_gpus_bucket_with_their_points() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        for i in 0..10 {
            let mut p = point(1000.0 + f64::from(i), Some(1.0), 100.0);
            let util1 = if i % 2 == 1 { None } else { Some(50.0 + f64::from(i)) };
            let vram1 = if i < 2 { None } else { Some(60.0) };
            p.gpus = vec![gpu(0, Some(f64::from(i) * 10.0), Some(20.0)), gpu(1, util1, vram1)];
            s.record_history(&p, 0.0).unwrap();
        }
        let raw = s.query_history(1000.0, 1009.0, 100, 1.0).unwrap();
        assert_eq!(raw.points[3].gpus, vec![gpu(0, Some(30.0), Some(20.0)), gpu(1, None, Some(60.0))]);
        assert_eq!(raw.points[0].gpus, vec![gpu(0, Some(0.0), Some(20.0)), gpu(1, Some(50.0), None)]);
        let b = s.query_history(1000.0, 1010.0, 5, 1.0).unwrap();
        let util0: Vec<Option<f64>> = b.points.iter().map(|p| p.gpus[0].gpu_percent).collect();
        assert_eq!(util0, vec![Some(5.0), Some(25.0), Some(45.0), Some(65.0), Some(85.0)]);
        // GPU 1 has one utilization per bucket (the odd samples lack it), and no VRAM at first.
        let util1: Vec<Option<f64>> = b.points.iter().map(|p| p.gpus[1].gpu_percent).collect();
        assert_eq!(util1, vec![Some(50.0), Some(52.0), Some(54.0), Some(56.0), Some(58.0)]);
        let vram1: Vec<Option<f64>> = b.points.iter().map(|p| p.gpus[1].vram_percent).collect();
        assert_eq!(vram1, vec![None, Some(60.0), Some(60.0), Some(60.0), Some(60.0)]);
        // The edge sample joins the last bucket for the GPUs as for the whole.
        let edge = s.query_history(1000.0, 1009.0, 3, 1.0).unwrap();
        assert_eq!(edge.points[2].vram_used_mb, 100.0);
        assert_eq!(edge.points[2].gpus[0].gpu_percent, Some(75.0)); // 60, 70, 80 and the edge 90

        s.record_history(&point(1020.0, None, 1.0), 1005.0).unwrap();
        let rows: i64 = s.conn.query_row("SELECT COUNT(*) FROM history_gpus", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 10, "five points left with two GPUs each; the new point has none");

        // A bucket whose first sample lacks GPU 0 still lists its GPUs by index.
        let mut p = point(2000.0, Some(1.0), 1.0);
        p.gpus = vec![gpu(1, Some(10.0), None)];
        s.record_history(&p, 0.0).unwrap();
        p.ts = 2001.0;
        p.gpus = vec![gpu(0, None, Some(30.0))];
        s.record_history(&p, 0.0).unwrap();
        let one = s.query_history(2000.0, 2001.0, 1, 1.0).unwrap();
        assert_eq!(one.points[0].gpus, vec![gpu(0, None, Some(30.0)), gpu(1, Some(10.0), None)]);
    }

    /// A store written before per-GPU history opens with the table added, and its old points
    /// come back with no GPUs.
    #[test]
    fn history_from_before_per_gpu_figures_reads_with_none() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, cpu_percent REAL,
                     ram_used_gb REAL, ram_total_gb REAL, ram_percent REAL, gpu_percent REAL NOT NULL,
                     vram_used_mb REAL NOT NULL, vram_total_mb REAL NOT NULL, vram_percent REAL NOT NULL);
                 INSERT INTO history (ts, gpu_percent, vram_used_mb, vram_total_mb, vram_percent)
                     VALUES (1000, 40, 4096, 16384, 25);",
            )
            .unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        let mut p = point(1001.0, Some(1.0), 100.0);
        p.gpus = vec![gpu(0, Some(40.0), Some(25.0))];
        s.record_history(&p, 0.0).unwrap();
        let all = s.query_history(0.0, 2000.0, 100, 1.0).unwrap();
        assert_eq!(all.points.len(), 2);
        assert_eq!(all.points[0].gpus, vec![]);
        assert_eq!(all.points[0].gpu_percent, 40.0);
        assert_eq!(all.points[1].gpus, p.gpus);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x42u8; 8192]).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(DB_FILE), "{err}");
    }

    #[test]
    fn an_unreadable_value_is_an_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.save_override("constraints", &"not a struct", 1.0).unwrap();
        let err = s.load_override::<crate::config::Constraints>("constraints").unwrap_err().to_string();
        assert!(err.contains("constraints") && err.contains(DB_FILE), "{err}");
    }
}
