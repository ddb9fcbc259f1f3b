//! Generated gRPC code for statenode: the `statenode.v1` client services and the peer service,
//! the state subset of Dapr's runtime API, and `google.rpc.Status` for rich errors.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("statenode.v1");
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod dapr {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("dapr.proto.common.v1");
            }
        }
        pub mod runtime {
            pub mod v1 {
                tonic::include_proto!("dapr.proto.runtime.v1");
            }
        }
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// Header and metadata names that node and clients share, spelled once.
pub mod headers {
    /// The API token, on every client request when the server requires one (Dapr's name).
    pub const API_TOKEN: &str = "dapr-api-token";
    /// The Dapr app id a request speaks for (key prefixes by app id).
    pub const APP_ID: &str = "dapr-app-id";
    /// On an unavailable reply: the client (gRPC) address of the leader, when known.
    pub const LEADER: &str = "x-statenode-leader";
    /// On a Raft RPC: the node id it is meant for.
    pub const TARGET: &str = "x-statenode-target";
    /// On a Raft RPC: the sender's cluster id.
    pub const CLUSTER: &str = "x-statenode-cluster";
}

/// The backup file (`statectl backup`, `statenode restore`): a header, the state machine's
/// snapshot, and a SHA-256 of everything before it.
///
/// ```text
/// b"STATENODE-BACKUP"  16 bytes
/// format               u16 LE (1)
/// reserved             u16 LE (0)
/// revision             u64 LE: the applied index the snapshot holds
/// length               u64 LE: bytes of snapshot that follow
/// snapshot             the state machine's snapshot (its own versioned format)
/// sha256               32 bytes, over everything above
/// ```
pub mod backup {
    use sha2::{Digest, Sha256};

    const MAGIC: &[u8; 16] = b"STATENODE-BACKUP";
    const FORMAT: u16 = 1;
    const HEADER: usize = 16 + 2 + 2 + 8 + 8;
    const SUM: usize = 32;

    /// A verified backup file.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Backup<'a> {
        pub revision: u64,
        pub snapshot: &'a [u8],
        /// Hex SHA-256 of the file (without its last 32 bytes), as printed when it was made.
        pub checksum: String,
    }

    #[derive(Debug, PartialEq, Eq)]
    pub enum BackupError {
        NotABackup,
        UnknownFormat(u16),
        Truncated { expected: u64, found: u64 },
        TrailingBytes(u64),
        Corrupt { expected: String, found: String },
    }

    impl std::fmt::Display for BackupError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Self::NotABackup => write!(f, "not a statenode backup file"),
                Self::UnknownFormat(v) => write!(f, "backup format {v} is not one this build reads ({FORMAT})"),
                Self::Truncated { expected, found } => {
                    write!(f, "backup file is truncated: {found} of {expected} bytes")
                }
                Self::TrailingBytes(n) => write!(f, "backup file has {n} bytes after its end"),
                Self::Corrupt { expected, found } => {
                    write!(f, "backup file is corrupt: its checksum is {expected}, its contents hash to {found}")
                }
            }
        }
    }

    impl std::error::Error for BackupError {}

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The whole file for `snapshot` at `revision`.
    pub fn encode(revision: u64, snapshot: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + snapshot.len() + SUM);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&revision.to_le_bytes());
        out.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
        out.extend_from_slice(snapshot);
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        out
    }

    /// The size a file announces in its header, once `head` holds the header; lets a reader
    /// of a stream tell a short one from a complete one.
    pub fn announced_len(head: &[u8]) -> Option<u64> {
        if head.len() < HEADER || &head[..16] != MAGIC {
            return None;
        }
        let len = u64::from_le_bytes(head[28..36].try_into().expect("8 bytes"));
        Some(((HEADER + SUM) as u64).saturating_add(len))
    }

    /// Checks magic, format, length and checksum; borrows the snapshot from `file`.
    pub fn decode(file: &[u8]) -> Result<Backup<'_>, BackupError> {
        if file.len() < 16 || &file[..16] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let found = file.len() as u64;
        let short = |expected| BackupError::Truncated { expected, found };
        if file.len() < HEADER {
            return Err(short(HEADER as u64 + SUM as u64));
        }
        let format = u16::from_le_bytes([file[16], file[17]]);
        if format != FORMAT {
            return Err(BackupError::UnknownFormat(format));
        }
        let revision = u64::from_le_bytes(file[20..28].try_into().expect("8 bytes"));
        let expected = announced_len(file).expect("header checked");
        if found < expected {
            return Err(short(expected));
        }
        if found > expected {
            return Err(BackupError::TrailingBytes(found - expected));
        }
        let (body, sum) = file.split_at(file.len() - SUM);
        let actual = Sha256::digest(body);
        if actual.as_slice() != sum {
            return Err(BackupError::Corrupt { expected: hex(sum), found: hex(&actual) });
        }
        Ok(Backup { revision, snapshot: &body[HEADER..], checksum: hex(sum) })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trip() {
            let file = encode(42, b"snapshot bytes");
            let b = decode(&file).unwrap();
            assert_eq!((b.revision, b.snapshot), (42, &b"snapshot bytes"[..]));
            assert_eq!(b.checksum.len(), 64);
            assert_eq!(announced_len(&file), Some(file.len() as u64));
        }

        #[test]
        fn refuses_damaged_files() {
            let file = encode(7, &[9u8; 1000]);
            assert_eq!(decode(b""), Err(BackupError::NotABackup));
            assert_eq!(decode(b"{\"json\": true}  and more"), Err(BackupError::NotABackup));
            for cut in [17, HEADER, HEADER + 500, file.len() - 1] {
                let e = decode(&file[..cut]).unwrap_err();
                assert!(matches!(e, BackupError::Truncated { .. }), "cut at {cut}: {e}");
            }
            assert!(decode(&file[..HEADER + 500]).unwrap_err().to_string().contains("truncated"));
            let mut longer = file.clone();
            longer.push(0);
            assert_eq!(decode(&longer), Err(BackupError::TrailingBytes(1)));
            for at in [20, HEADER + 10, file.len() - 5] {
                let mut flipped = file.clone();
                flipped[at] ^= 0x40;
                let e = decode(&flipped).unwrap_err();
                assert!(matches!(e, BackupError::Corrupt { .. }), "bit flip at {at}: {e}");
            }
            let mut future = file.clone();
            future[16] = 9;
            assert_eq!(decode(&future), Err(BackupError::UnknownFormat(9)));
            // A length field claiming an absurd size is a truncation, not an allocation.
            let mut huge = file;
            huge[28..36].copy_from_slice(&u64::MAX.to_le_bytes());
            assert!(matches!(decode(&huge), Err(BackupError::Truncated { .. })));
        }
    }
}
