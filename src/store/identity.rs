//! The store's identity: a random id written on the first start both into the database (table
//! `meta`) and into a small file beside it (`state_dir/store-id`). The file outlives the
//! database, so a later start can tell "never started here" (neither exists: start fresh) from
//! "the store is gone" (the file says a store was created here, but the database is missing,
//! empty, or another store's): the second is refused, never silently reset.
//!
//! `--reset-state` moves a refused store aside ([`move_aside`]) instead of deleting it, so an
//! operator who reset by mistake can still put the old files back.

use std::io::Write;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::{DB_FILE, StoreError};

/// File name of the identity file inside `state_dir`.
pub(crate) const ID_FILE: &str = "store-id";

/// Files that make up a store, moved aside together by a reset.
const STORE_FILES: [&str; 4] = [DB_FILE, "vramguard.db-wal", "vramguard.db-shm", ID_FILE];

fn refused(path: &Path, reason: String) -> StoreError {
    StoreError::Refused { path: path.to_owned(), reason }
}

/// Reads `state_dir/store-id`, if it exists.
fn read_id_file(dir: &Path) -> Result<Option<String>, StoreError> {
    let path = dir.join(ID_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(refused(&path, format!("cannot read it: {e}"))),
    };
    let id = text.lines().next().unwrap_or("").trim().to_owned();
    if !crate::leases::is_valid_id(&id) {
        return Err(refused(&path, "does not hold a store id (32 lowercase hex digits on its first line)".to_owned()));
    }
    Ok(Some(id))
}

/// Before the database is opened (opening would create a missing one): what the identity file
/// says must be there is there. Returns the id the file holds.
pub(super) fn check_before_open(dir: &Path) -> Result<Option<String>, StoreError> {
    let db = dir.join(DB_FILE);
    let id = read_id_file(dir)?;
    let id_path = dir.join(ID_FILE);
    match std::fs::metadata(&db) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match &id {
            Some(_) => {
                Err(refused(&db, format!("is missing, but {} says a store was created here", id_path.display())))
            }
            None => Ok(None),
        },
        // An empty file is never a store vramguard wrote: its first commit writes the header. A
        // crash in the very first start can leave one; refusing then costs one flag.
        Ok(m) if m.len() == 0 => Err(refused(&db, "is empty (0 bytes)".to_owned())),
        Ok(_) | Err(_) => Ok(id),
    }
}

/// After the database is open: it carries the id of this state directory. On a first start
/// both are written (database first, so a crash in between leaves a database the next start
/// adopts); a database from before identities existed is adopted.
pub(super) fn settle(conn: &mut Connection, dir: &Path, from_file: Option<String>) -> Result<String, StoreError> {
    let db = dir.join(DB_FILE);
    let sql = |source| StoreError::Sqlite { path: db.clone(), source };
    conn.execute_batch("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)").map_err(sql)?;
    let in_db: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| r.get(0)).optional().map_err(sql)?;
    let id_path = dir.join(ID_FILE);
    match (from_file, in_db) {
        (Some(f), Some(d)) if f == d => Ok(f),
        (Some(f), Some(d)) => Err(refused(
            &db,
            format!(
                "is store {d}, but {} says this directory holds store {f}: it is another store's database",
                id_path.display()
            ),
        )),
        (Some(_), None) => Err(refused(
            &db,
            format!("has no store id, but {} says a store was created here: it is not that store", id_path.display()),
        )),
        (None, Some(d)) => {
            write_id_file(dir, &d)?;
            Ok(d)
        }
        (None, None) => {
            let id = crate::leases::new_id();
            conn.execute("INSERT INTO meta (key, value) VALUES ('store_id', ?1)", params![id]).map_err(sql)?;
            write_id_file(dir, &id)?;
            Ok(id)
        }
    }
}

/// Writes the identity file durably: a temporary file, fsync, rename, fsync of the directory.
fn write_id_file(dir: &Path, id: &str) -> Result<(), StoreError> {
    let path = dir.join(ID_FILE);
    let io = |e: std::io::Error| StoreError::Dir { path: path.clone(), source: e };
    let tmp = dir.join(format!("{ID_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    writeln!(f, "{id}").map_err(io)?;
    writeln!(f, "# vramguard store identity: the database {DB_FILE} beside this file must carry this id.")
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Moves the store's files (database, write-ahead log, shared memory, identity) into a new
/// directory `state_dir/reset-<UTC time>` and returns it. Nothing is deleted.
pub fn move_aside(dir: &Path) -> Result<PathBuf, StoreError> {
    let stamp: String = crate::time::rfc3339_unix(crate::time::now_unix())
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    let mut dest = dir.join(format!("reset-{stamp}Z"));
    let mut n = 1;
    while dest.exists() {
        n += 1;
        dest = dir.join(format!("reset-{stamp}Z-{n}"));
    }
    let io = |path: &Path, e: std::io::Error| StoreError::Dir { path: path.to_owned(), source: e };
    std::fs::create_dir_all(&dest).map_err(|e| io(&dest, e))?;
    for name in STORE_FILES {
        let from = dir.join(name);
        if from.exists() {
            std::fs::rename(&from, dest.join(name)).map_err(|e| io(&from, e))?;
        }
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))?;
    Ok(dest)
}

/// The file's identity on disk, to notice it being deleted or replaced while open.
#[cfg(unix)]
pub(super) fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().as_ref().and_then(id_of)
}

/// The identity (device, inode) in `m` (one `stat` gives the size and the identity).
#[cfg(unix)]
fn id_of(m: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn id_of(_m: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

/// The file's identity on disk (not tracked off Unix).
#[cfg(not(unix))]
pub(super) fn file_id(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// Whether the database file is still the one that was opened: present, the same file (not
/// deleted and replaced), not truncated. A write into a deleted file would succeed and vanish
/// with the process, so it must not be acknowledged.
pub(super) fn check_still_there(path: &Path, opened: Option<(u64, u64)>) -> Result<(), StoreError> {
    let vanished = |what: String| StoreError::Vanished { path: path.to_owned(), what };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(vanished("was deleted or moved while vramguard was running".to_owned()))
        }
        Err(e) => Err(vanished(format!("cannot be checked: {e}"))),
        Ok(m) if m.len() == 0 => Err(vanished("was truncated to 0 bytes while vramguard was running".to_owned())),
        Ok(m) => match (opened, id_of(&m)) {
            (Some(a), Some(b)) if a != b => {
                Err(vanished("was replaced by another file while vramguard was running".to_owned()))
            }
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn refusal(dir: &Path) -> String {
        let e = Store::open(dir).unwrap_err();
        assert!(e.resettable(), "{e}");
        e.to_string()
    }

    /// A first start writes the id into the database and the file; a database file that holds
    /// the header from the first commit on is never 0 bytes while open.
    #[test]
    fn a_first_start_writes_the_identity_and_a_later_one_checks_it() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let s = Store::open(dir.path()).unwrap();
            assert!(std::fs::metadata(s.path()).unwrap().len() > 0);
            read_id_file(dir.path()).unwrap().unwrap()
        };
        drop(Store::open(dir.path()).unwrap());
        assert_eq!(read_id_file(dir.path()).unwrap().unwrap(), id);
    }

    #[test]
    fn a_missing_empty_or_foreign_database_is_refused_naming_it_and_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let db = dir.path().join(DB_FILE);
        for extra in ["vramguard.db-wal", "vramguard.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(extra));
        }

        std::fs::remove_file(&db).unwrap();
        let err = refusal(dir.path());
        assert!(err.contains("vramguard.db: is missing") && err.contains(ID_FILE), "{err}");
        assert!(err.contains("vramguard --reset-state"), "{err}");
        assert!(!db.exists(), "a refused start must not create the database");

        std::fs::write(&db, b"").unwrap();
        assert!(refusal(dir.path()).contains("is empty (0 bytes)"));

        // Another state directory's database.
        let other = tempfile::tempdir().unwrap();
        drop(Store::open(other.path()).unwrap());
        std::fs::copy(other.path().join(DB_FILE), &db).unwrap();
        let err = refusal(dir.path());
        assert!(err.contains("another store's database"), "{err}");
    }

    /// A database from before identities existed is adopted, and so is one whose identity file
    /// was lost (the database holds the truth).
    #[test]
    fn a_database_without_the_file_is_adopted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
            conn.execute_batch(
                "CREATE TABLE overrides (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL)",
            )
            .unwrap();
        }
        drop(Store::open(dir.path()).unwrap());
        let id = read_id_file(dir.path()).unwrap().unwrap();
        std::fs::remove_file(dir.path().join(ID_FILE)).unwrap();
        drop(Store::open(dir.path()).unwrap());
        assert_eq!(read_id_file(dir.path()).unwrap().unwrap(), id);
    }

    #[test]
    fn a_reset_moves_every_store_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        std::fs::write(dir.path().join(DB_FILE), b"").unwrap();
        let aside = move_aside(dir.path()).unwrap();
        assert!(aside.file_name().unwrap().to_str().unwrap().starts_with("reset-"));
        assert!(aside.join(DB_FILE).exists() && aside.join(ID_FILE).exists());
        assert!(!dir.path().join(ID_FILE).exists());
        drop(Store::open(dir.path()).unwrap());
        assert_ne!(move_aside(dir.path()).unwrap(), aside, "a second reset gets its own directory");
    }

    /// Deleting or replacing the open database makes the next write fail (and the status go
    /// down) instead of writing into a file nobody will read again; a write that succeeds again
    /// brings it back up.
    #[test]
    fn a_vanished_database_fails_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.save_override("k", &1, 1.0).unwrap();
        let status = s.status();
        std::fs::rename(dir.path().join(DB_FILE), dir.path().join("moved.db")).unwrap();
        let err = s.save_override("k", &2, 2.0).unwrap_err().to_string();
        assert!(err.contains("was deleted or moved"), "{err}");
        assert!(!status.is_up() && status.problem().unwrap().contains("deleted or moved"));
        std::fs::copy(dir.path().join("moved.db"), dir.path().join(DB_FILE)).unwrap();
        let err = s.save_override("k", &2, 2.0).unwrap_err().to_string();
        assert!(err.contains("replaced by another file"), "{err}");
        std::fs::remove_file(dir.path().join(DB_FILE)).unwrap();
        std::fs::rename(dir.path().join("moved.db"), dir.path().join(DB_FILE)).unwrap();
        s.save_override("k", &3, 3.0).unwrap();
        assert!(status.is_up());
        assert_eq!(s.load_override::<i32>("k").unwrap(), Some(3));
    }
}
