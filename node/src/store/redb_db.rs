//! The one way statenode talks to redb: open a file and its tables, run a read or a durable
//! write transaction. Inside a transaction every failure is a `redb::Error` (`?` converts
//! redb's own errors, and `enc`/`dec` report theirs as one); it becomes an `io::Error`
//! here, once, for the storage traits.

use redb::{Database, Key, ReadTransaction, ReadableDatabase, TableDefinition, Value, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io;
use std::path::Path;

pub type DbResult<T> = Result<T, redb::Error>;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A table `open` creates.
pub trait Table {
    fn create(&self, txn: &WriteTransaction) -> DbResult<()>;
}

impl<K: Key + 'static, V: Value + 'static> Table for TableDefinition<'_, K, V> {
    fn create(&self, txn: &WriteTransaction) -> DbResult<()> {
        txn.open_table(*self)?;
        Ok(())
    }
}

/// Opens (or creates) the database at `path` and every one of its `tables`, so a read never
/// finds one missing.
pub fn open(path: &Path, file: &'static str, tables: &[&dyn Table]) -> io::Result<Db> {
    let db = Db { db: Database::create(path).map_err(io_err)?, file };
    write(&db, |txn| tables.iter().try_for_each(|t| t.create(txn)))?;
    Ok(db)
}

/// A database and its file name (the label of its commit latency metric).
pub struct Db {
    pub db: Database,
    pub file: &'static str,
}

/// Runs `f` in one write transaction and commits it durably (fsync) before returning.
pub fn write<T>(db: &Db, f: impl FnOnce(&WriteTransaction) -> DbResult<T>) -> io::Result<T> {
    write_with(db, true, f)
}

/// Runs `f` in one write transaction and commits it, durably (fsync, with everything
/// committed before) or not: a commit that is not durable is atomic and visible at once, but
/// a crash before the next durable commit loses it (the file stays consistent).
pub fn write_with<T>(db: &Db, durable: bool, f: impl FnOnce(&WriteTransaction) -> DbResult<T>) -> io::Result<T> {
    let mut txn = db.db.begin_write().map_err(io_err)?;
    if !durable {
        txn.set_durability(redb::Durability::None).map_err(io_err)?;
    }
    let out = f(&txn).map_err(io_err)?;
    let start = std::time::Instant::now();
    txn.commit().map_err(io_err)?;
    if durable {
        crate::metrics::disk_commit(db.file, start.elapsed());
    }
    Ok(out)
}

/// Runs `f` in one read transaction (a consistent view).
pub fn read<T>(db: &Db, f: impl FnOnce(&ReadTransaction) -> DbResult<T>) -> io::Result<T> {
    let txn = db.db.begin_read().map_err(io_err)?;
    f(&txn).map_err(io_err)
}

pub fn enc<T: Serialize>(v: &T) -> DbResult<Vec<u8>> {
    bincode::serialize(v).map_err(|e| redb::Error::Io(io::Error::other(format!("cannot encode a record: {e}"))))
}

pub fn dec<T: DeserializeOwned>(b: &[u8]) -> DbResult<T> {
    bincode::deserialize(b).map_err(|e| redb::Error::Corrupted(format!("undecodable record: {e}")))
}
