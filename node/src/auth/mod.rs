//! Who a client request acts for, the same for every client door: the API token check, a
//! client certificate's name, and the per-key and per-topic rules (`rules.rs`) that bound
//! what a named caller may do (`Caller`).

pub mod rules;
pub mod token_file;

pub use statenode_proto::headers::API_TOKEN as TOKEN_HEADER;
pub use token_file::TokenFile;

use crate::error::{Error, Result};
use rules::{Access, Policy, Principal};
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
    pub fn check(&self, given: Option<&[u8]>) -> Result<Credential, Denied> {
        if self.one.is_none() && self.file.is_none() {
            return Ok(Credential::None);
        }
        let Some(g) = given else {
            return Err(Denied::Missing);
        };
        let unnamed = self.one.as_ref().is_some_and(|want| constant_time_eq(g, want.as_bytes()));
        let named = self.file.as_ref().and_then(|file| file.matches(g));
        match (unnamed, named) {
            (true, _) => Ok(Credential::Root),
            (false, Some(name)) => Ok(Credential::Named(name)),
            (false, None) => Err(Denied::Mismatch),
        }
    }
}

/// What a request's token proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// No token is asked for.
    None,
    /// The unnamed `--api-token`: the operator's own.
    Root,
    /// A token of the token file, by its name.
    Named(String),
}

/// What a verified client certificate (signed by the cluster CA) says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertName {
    /// A node certificate (`statenode certs create-node`): the operator's own.
    Node,
    /// A client certificate: its common name (`statenode certs create-client NAME`).
    Client(String),
}

/// Turns a request's credentials into its `Caller`: the token check, client certificates,
/// the rules. One per node, shared by the HTTP and gRPC doors.
#[derive(Clone, Debug)]
pub struct Gate {
    token: Token,
    policy: Arc<Policy>,
}

impl Gate {
    pub fn new(token: Token, policy: Arc<Policy>) -> Self {
        Self { token, policy }
    }

    /// Who a request acts for. A token, when sent, must be a valid one and names the caller;
    /// else a client certificate does (it stands in for the token); else, with no token
    /// asked for, nobody in particular. Without rules every caller may do everything.
    pub fn caller(&self, token: Option<&[u8]>, cert: Option<&CertName>) -> Result<Caller, Denied> {
        let credential = match self.token.check(token) {
            Err(Denied::Missing) if cert.is_some() => Credential::None,
            other => other?,
        };
        if !self.policy.enabled() {
            return Ok(Caller::Root);
        }
        let name = match (credential, cert) {
            (Credential::Root, _) | (Credential::None, Some(CertName::Node)) => return Ok(Caller::Root),
            (Credential::Named(name), _) => name,
            (Credential::None, Some(CertName::Client(name))) => name.clone(),
            (Credential::None, None) => return Ok(Caller::Nobody),
        };
        let principal = Arc::new(Principal { client_id: name.clone(), username: Some(name) });
        Ok(Caller::Named { principal, policy: self.policy.clone() })
    }
}

/// Who a request acts for, and so what it may do.
#[derive(Clone, Debug, Default)]
pub enum Caller {
    /// Everything: no rules are configured, or the operator's own credential (the unnamed
    /// `--api-token`, a node certificate), or the node itself.
    #[default]
    Root,
    /// A named principal (a token file's name, a client certificate's common name, both as
    /// `clientIds` and `usernames` in the rules): what its rules allow.
    Named { principal: Arc<Principal>, policy: Arc<Policy> },
    /// Rules are configured and the request named nobody: no key, no cluster operation.
    Nobody,
}

impl Caller {
    /// Whether this caller may read or write `key`.
    pub fn may(&self, key: &[u8], access: Access) -> bool {
        match self {
            Caller::Root => true,
            Caller::Named { principal, policy } => policy.can_key(principal, key, access),
            Caller::Nobody => false,
        }
    }

    /// `may`, as the error a door answers.
    pub fn check(&self, key: &[u8], access: Access) -> Result<()> {
        if self.may(key, access) {
            return Ok(());
        }
        let verb = if access == Access::Read { "read" } else { "write" };
        Err(Error::Forbidden(format!("{self} may not {verb} the key \"{}\"", key.escape_ascii())))
    }

    /// Whether this caller may see any key at all (a list or watch is then filtered by `may`).
    pub fn check_some_keys(&self) -> Result<()> {
        match self {
            Caller::Nobody => Err(Error::Forbidden(format!("{self} may not read keys"))),
            _ => Ok(()),
        }
    }

    /// Cluster operations: join, leave, backup.
    pub fn check_admin(&self) -> Result<()> {
        let ok = match self {
            Caller::Root => true,
            Caller::Named { principal, policy } => policy.is_admin(principal),
            Caller::Nobody => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Forbidden(format!("{self} may not administer the cluster")))
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Root => f.write_str("the operator"),
            Caller::Named { principal, .. } => write!(f, "principal {:?}", principal.client_id),
            Caller::Nobody => f.write_str("a caller without a named token or client certificate"),
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
        assert_eq!(Token::new(None).check(None), Ok(Credential::None));
        let t = Token::new(Some("s3".into()));
        assert_eq!(t.check(Some(b"s3")), Ok(Credential::Root));
        assert_eq!(t.check(Some(b"s4")), Err(Denied::Mismatch));
        assert_eq!(t.check(None), Err(Denied::Missing));
    }

    fn rules(text: &str) -> Arc<Policy> {
        let a: rules::Authorization = toml::from_str(text).unwrap();
        a.check().unwrap();
        Arc::new(Policy::new(Some(a)))
    }

    const RULES: &str = r#"
        [[rules]]
        principals = { usernames = ["app"] }
        stateStoreResources = [{ method = "ReadWrite", keys = ["app/{principal.username}/*"] }]

        [[rules]]
        principals = { usernames = ["ops"] }
        admin = true
        stateStoreResources = [{ method = "Read", keys = ["*"] }]
    "#;

    fn token_file(dir: &std::path::Path) -> Token {
        let path = dir.join("tokens");
        std::fs::write(&path, "app aaaaaaaaaaaaaaaaaaaa\nops oooooooooooooooooooo\n").unwrap();
        Token::with_file(Some("rootrootrootroot".into()), Some(&path)).unwrap()
    }

    #[test]
    fn callers_from_tokens_and_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Gate::new(token_file(dir.path()), rules(RULES));
        let app = gate.caller(Some(b"aaaaaaaaaaaaaaaaaaaa"), None).unwrap();
        assert!(app.may(b"app/app/x", Access::Write) && !app.may(b"app/ops/x", Access::Read));
        assert!(app.check_admin().is_err() && app.check_some_keys().is_ok());
        let ops = gate.caller(Some(b"oooooooooooooooooooo"), None).unwrap();
        assert!(ops.check_admin().is_ok() && ops.may(b"app/app/x", Access::Read) && !ops.may(b"k", Access::Write));
        assert!(matches!(gate.caller(Some(b"rootrootrootroot"), None), Ok(Caller::Root)));
        assert_eq!(gate.caller(Some(b"wrongwrongwrongwrong"), None).unwrap_err(), Denied::Mismatch);
        assert_eq!(gate.caller(None, None).unwrap_err(), Denied::Missing);
        // A certificate stands in for the token, never beside a wrong one.
        let cert = CertName::Client("app".into());
        assert!(gate.caller(None, Some(&cert)).unwrap().may(b"app/app/1", Access::Write));
        assert_eq!(gate.caller(Some(b"wrongwrongwrongwrong"), Some(&cert)).unwrap_err(), Denied::Mismatch);
        assert!(matches!(gate.caller(None, Some(&CertName::Node)), Ok(Caller::Root)));
        // A name with glob characters is no glob: no rule names "*".
        let sly = gate.caller(None, Some(&CertName::Client("*".into()))).unwrap();
        assert!(!sly.may(b"app/app/1", Access::Read) && !sly.may(b"app/*/1", Access::Read));
    }

    #[test]
    fn no_token_asked_names_nobody_and_no_rules_allow_all() {
        let gate = Gate::new(Token::new(None), rules(RULES));
        let nobody = gate.caller(None, None).unwrap();
        assert!(!nobody.may(b"app/app/x", Access::Read));
        assert!(nobody.check_some_keys().is_err() && nobody.check_admin().is_err());
        let err = nobody.check(b"k\xff", Access::Write).unwrap_err().to_string();
        assert!(err.contains(r#"may not write the key "k\xff""#), "{err}");
        let open = Gate::new(Token::new(None), Arc::new(Policy::default()));
        assert!(matches!(open.caller(None, None), Ok(Caller::Root)));
    }
}
