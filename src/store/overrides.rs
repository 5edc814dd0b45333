//! API overrides of the optimization settings and constraints: one JSON value per key, each
//! write its own durable transaction.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Store, StoreError};

impl Store {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DB_FILE;

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
    fn an_unreadable_value_is_an_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.save_override("constraints", &"not a struct", 1.0).unwrap();
        let err = s.load_override::<crate::config::Constraints>("constraints").unwrap_err().to_string();
        assert!(err.contains("constraints") && err.contains(DB_FILE), "{err}");
    }
}
