//! The API token check, the same for every client door; the per-key and per-topic rules
//! (`rules.rs`).

pub mod rules;

pub use statenode_proto::headers::API_TOKEN as TOKEN_HEADER;

/// The token a node requires of its clients, if any.
#[derive(Clone, Default)]
pub struct Token(Option<String>);

/// Never prints the secret.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Token(set)" } else { "Token(none)" })
    }
}

impl Token {
    pub fn new(token: Option<String>) -> Self {
        Self(token)
    }

    /// Checks the token a request presented (`None`: none was sent).
    pub fn check(&self, given: Option<&[u8]>) -> Result<(), Denied> {
        let Some(want) = &self.0 else {
            return Ok(());
        };
        match given {
            None => Err(Denied::Missing),
            Some(g) if constant_time_eq(g, want.as_bytes()) => Ok(()),
            Some(_) => Err(Denied::Mismatch),
        }
    }
}

/// Why a request was refused; each door words it its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Mismatch,
}

/// Compares secrets without stopping at the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }

    #[test]
    fn checks_only_when_configured() {
        assert!(Token::new(None).check(None).is_ok());
        let t = Token::new(Some("s3".into()));
        assert!(t.check(Some(b"s3")).is_ok());
        assert!(t.check(Some(b"s4")).is_err());
        assert!(t.check(None).is_err());
    }
}
