//! The API token check, the same for every client door; the per-key and per-topic rules
//! (`rules.rs`).

pub mod rules;
mod token_file;

pub use statenode_proto::headers::API_TOKEN as TOKEN_HEADER;
pub use token_file::TokenFile;

use std::sync::Arc;

/// The tokens a node accepts from its clients, if any: `--api-token`, and the named tokens
/// of `--token-file` (several valid at once, so a token rotates without a restart).
#[derive(Clone, Default)]
pub struct Token {
    one: Option<String>,
    file: Option<Arc<TokenFile>>,
}

/// Never prints a secret.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.one.is_some() || self.file.is_some();
        f.write_str(if set { "Token(set)" } else { "Token(none)" })
    }
}

impl Token {
    pub fn new(token: Option<String>) -> Self {
        Self { one: token, file: None }
    }

    /// `--api-token` and, when given, the tokens of a token file.
    pub fn with_file(token: Option<String>, file: Option<&std::path::Path>) -> std::io::Result<Self> {
        let file = file.map(TokenFile::load).transpose()?.map(Arc::new);
        Ok(Self { one: token, file })
    }

    /// Checks the token a request presented (`None`: none was sent). Every accepted token is
    /// compared, in constant time each, whichever matches.
    pub fn check(&self, given: Option<&[u8]>) -> Result<(), Denied> {
        if self.one.is_none() && self.file.is_none() {
            return Ok(());
        }
        let Some(g) = given else {
            return Err(Denied::Missing);
        };
        let mut ok = self.one.as_ref().is_some_and(|want| constant_time_eq(g, want.as_bytes()));
        if let Some(file) = &self.file {
            ok |= file.matches(g).is_some();
        }
        if ok {
            Ok(())
        } else {
            Err(Denied::Mismatch)
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
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
