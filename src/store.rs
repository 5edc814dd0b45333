//! The state store: one SQLite database under `state_dir` holding what must survive a restart
//! (settings and constraints changed through the API; later history and leases).
//!
//! Every write is one transaction committed with `synchronous=FULL` in WAL mode, so a write the
//! API has acknowledged survives `kill -9` and power loss, and the file is never half-written.
//! A store that cannot be opened or read fails start-up with a message naming the file: an
//! operator's settings are never silently reset.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// An open state store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
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
";

impl Store {
    /// Opens (creating if needed) the store in `dir` and checks it is readable and intact.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir { path: dir.to_owned(), source })?;
        let path = dir.join(DB_FILE);
        let sql = |source| StoreError::Sqlite { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(sql)?;
        // WAL keeps readers off the writer's back; FULL makes each commit durable on disk.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql)?;
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(sql)?;
        if check != "ok" {
            return Err(StoreError::Invalid { path, key: "database".to_owned(), message: check });
        }
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(Self { conn, path })
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
        let tx = self.conn.transaction().map_err(|e| StoreError::Sqlite { path: self.path.clone(), source: e })?;
        tx.execute(
            "INSERT INTO overrides (key, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            params![key, text, now],
        )
        .map_err(|e| StoreError::Sqlite { path: self.path.clone(), source: e })?;
        tx.commit().map_err(|e| self.sql(e))
    }

    /// Removes an override durably (back to config.yaml).
    pub fn delete_override(&mut self, key: &str) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM overrides WHERE key = ?1", params![key]).map_err(|e| self.sql(e))?;
        Ok(())
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
