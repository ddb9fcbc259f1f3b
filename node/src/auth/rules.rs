//! Authorization rules in the AIO broker's model (reference §15): each rule names
//! principals (client ids, verified usernames) and what they may do — connect, publish and
//! subscribe to topics (`brokerResources`), read and write keys (`stateStoreResources`,
//! key patterns, exact strings or base64 binary keys). `{principal.clientId}` and
//! `{principal.username}` in a topic or key pattern stand for the caller's own, matched
//! literally. With no `[authorization]` section everything is allowed; with one, only what
//! a rule allows.
//!
//! ```toml
//! [[authorization.users]]
//! username = "alice"
//! password = "secret"
//!
//! [[authorization.rules]]
//! principals = { clientIds = ["sensor-*"], usernames = ["alice"] }
//! brokerResources = [
//!   { method = "Connect" },
//!   { method = "Publish", topics = ["statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/command/invoke"] },
//!   { method = "Subscribe", topics = ["clients/{principal.clientId}/#"] },
//! ]
//! stateStoreResources = [
//!   { method = "Read", keyType = "Pattern", keys = ["config/*"] },
//!   { method = "ReadWrite", keys = ["sensors/{principal.clientId}/*"] },
//! ]
//! ```

use crate::error::{Error, Result};
use crate::pattern::{self, Tok};
use base64::Engine;
use serde::Deserialize;

/// The `[authorization]` section of a node's config file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// An MQTT username and its password.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub username: String,
    pub password: String,
}

/// Never prints the password.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "User({})", self.username)
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub principals: Principals,
    #[serde(default)]
    pub broker_resources: Vec<BrokerResource>,
    #[serde(default)]
    pub state_store_resources: Vec<StateStoreResource>,
    /// Cluster operations on the HTTP and gRPC doors: join, leave, backup.
    #[serde(default)]
    pub admin: bool,
}

/// Who a rule is for: any of these client ids (globs) or verified usernames (globs).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Principals {
    #[serde(default)]
    pub client_ids: Vec<String>,
    #[serde(default)]
    pub usernames: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerResource {
    pub method: BrokerMethod,
    /// Topic filters (`+`, `#`); not used by `Connect`.
    #[serde(default)]
    pub topics: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum BrokerMethod {
    Connect,
    Publish,
    Subscribe,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateStoreResource {
    pub method: KeyMethod,
    #[serde(default)]
    pub key_type: KeyType,
    pub keys: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum KeyMethod {
    Read,
    Write,
    ReadWrite,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum KeyType {
    #[default]
    #[serde(alias = "pattern")]
    Pattern,
    #[serde(alias = "string")]
    String,
    #[serde(alias = "binary")]
    Binary,
}

/// What a key request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Who is asking: the MQTT client id and, once its password was checked, the username.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    pub client_id: String,
    pub username: Option<String>,
}

/// Why a CONNECT is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown username or wrong password.
    BadCredentials,
    /// No rule lets this principal connect.
    NotAuthorized,
}

/// The rules a node enforces; `None` inside: everything allowed.
#[derive(Clone, Debug, Default)]
pub struct Policy(Option<Authorization>);

const TOKENS: [&str; 2] = ["{principal.clientId}", "{principal.username}"];

impl Authorization {
    /// Checks the rules once at load (`Config::validate`), so a typo is an error at start,
    /// not a silent deny.
    pub fn check(&self) -> Result<()> {
        for rule in &self.rules {
            let keys = rule.state_store_resources.iter().flat_map(|r| r.keys.iter().map(move |k| (r.key_type, k)));
            for (kind, key) in keys {
                if kind == KeyType::Binary {
                    base64::engine::general_purpose::STANDARD
                        .decode(key)
                        .map_err(|e| Error::invalid(format!("authorization: binary key {key:?} is not base64: {e}")))?;
                } else {
                    check_tokens(key)?;
                }
            }
            for t in rule.broker_resources.iter().flat_map(|r| &r.topics) {
                check_tokens(t)?;
            }
        }
        Ok(())
    }
}

impl Policy {
    /// The rules to enforce (checked by `Authorization::check`); `None`: allow everything.
    pub fn new(auth: Option<Authorization>) -> Self {
        Self(auth)
    }

    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The principal of a CONNECT, its password checked when users are configured. A
    /// verified client certificate's common name (`cert`) is the username of a CONNECT that
    /// names none.
    pub fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        cert: Option<&str>,
    ) -> Result<Principal, Refusal> {
        let mut p = Principal { client_id: client_id.to_string(), username: None };
        let Some(a) = &self.0 else { return Ok(p) };
        if let Some(name) = username {
            let user = a.users.iter().find(|u| u.username == name).ok_or(Refusal::BadCredentials)?;
            let ok = password.is_some_and(|given| super::constant_time_eq(given, user.password.as_bytes()));
            if !ok {
                return Err(Refusal::BadCredentials);
            }
            p.username = Some(name.to_string());
        } else {
            p.username = cert.map(str::to_string);
        }
        if !self.rules_for(&p).any(|r| r.broker_resources.iter().any(|b| b.method == BrokerMethod::Connect)) {
            return Err(Refusal::NotAuthorized);
        }
        Ok(p)
    }

    /// Whether `p` may publish to `topic`.
    pub fn can_publish(&self, p: &Principal, topic: &str) -> bool {
        self.topic_allowed(p, BrokerMethod::Publish, |allowed| pattern::topic_matches(allowed, topic))
    }

    /// Whether `p` may subscribe with `filter` (an allowed filter must cover it).
    pub fn can_subscribe(&self, p: &Principal, filter: &str) -> bool {
        self.topic_allowed(p, BrokerMethod::Subscribe, |allowed| pattern::filter_covers(allowed, filter))
    }

    /// Whether `p` may read or write `key`.
    pub fn can_key(&self, p: &Principal, key: &[u8], access: Access) -> bool {
        if self.0.is_none() {
            return true;
        }
        let wanted = |m: KeyMethod| match access {
            Access::Read => m != KeyMethod::Write,
            Access::Write => m != KeyMethod::Read,
        };
        self.rules_for(p)
            .flat_map(|r| &r.state_store_resources)
            .filter(|r| wanted(r.method))
            .any(|r| r.keys.iter().any(|k| key_matches(r.key_type, k, p, key)))
    }

    /// Whether `p` may run cluster operations.
    pub fn is_admin(&self, p: &Principal) -> bool {
        self.0.is_none() || self.rules_for(p).any(|r| r.admin)
    }

    fn topic_allowed(&self, p: &Principal, method: BrokerMethod, fits: impl Fn(&str) -> bool) -> bool {
        if self.0.is_none() {
            return true;
        }
        self.rules_for(p)
            .flat_map(|r| &r.broker_resources)
            .filter(|b| b.method == method)
            .flat_map(|b| &b.topics)
            .any(|f| substitute_topic(f, p).is_some_and(|f| fits(&f)))
    }

    fn rules_for<'a>(&'a self, p: &'a Principal) -> impl Iterator<Item = &'a Rule> + 'a {
        let rules = self.0.as_ref().map(|a| a.rules.as_slice()).unwrap_or_default();
        rules.iter().filter(move |r| {
            let by_id = r.principals.client_ids.iter().any(|g| pattern::glob(g.as_bytes(), p.client_id.as_bytes()));
            let by_name = p.username.as_ref().is_some_and(|name| {
                r.principals.usernames.iter().any(|g| pattern::glob(g.as_bytes(), name.as_bytes()))
            });
            by_id || by_name
        })
    }
}

/// Only the known `{...}` tokens may appear.
fn check_tokens(s: &str) -> Result<()> {
    let mut rest = s;
    while let Some(start) = rest.find('{') {
        let token = TOKENS.iter().find(|t| rest[start..].starts_with(**t));
        let Some(token) = token else {
            return Err(Error::invalid(format!("authorization: unknown substitution in {s:?} (known: {TOKENS:?})")));
        };
        rest = &rest[start + token.len()..];
    }
    Ok(())
}

/// The principal's value for `token`.
fn value<'a>(token: &str, p: &'a Principal) -> Option<&'a str> {
    match token {
        "{principal.clientId}" => Some(&p.client_id),
        _ => p.username.as_deref(),
    }
}

/// A topic filter with the principal's values put in; `None` when a value is missing or
/// would act as a wildcard or level separator.
fn substitute_topic(filter: &str, p: &Principal) -> Option<String> {
    let mut out = filter.to_string();
    for t in TOKENS {
        if out.contains(t) {
            let v = value(t, p)?;
            if v.contains(['+', '#', '/']) {
                return None;
            }
            out = out.replace(t, v);
        }
    }
    Some(out)
}

fn key_matches(kind: KeyType, rule_key: &str, p: &Principal, key: &[u8]) -> bool {
    match kind {
        KeyType::Binary => base64::engine::general_purpose::STANDARD.decode(rule_key).is_ok_and(|k| k == key),
        KeyType::String => rule_key.as_bytes() == key,
        KeyType::Pattern => compile_with(rule_key, p).is_some_and(|toks| pattern::matches_compiled(&toks, key)),
    }
}

/// Compiles a key pattern with the principal's values as literals (a client id with `*`
/// in it matches only itself).
fn compile_with(rule_key: &str, p: &Principal) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut rest = rule_key;
    loop {
        let next = TOKENS.iter().filter_map(|t| rest.find(t).map(|i| (i, *t))).min();
        let Some((i, token)) = next else {
            out.extend(pattern::compile(rest.as_bytes()));
            return Some(out);
        };
        out.extend(pattern::compile(&rest.as_bytes()[..i]));
        out.extend(value(token, p)?.bytes().map(Tok::Lit));
        rest = &rest[i + token.len()..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
        [[users]]
        username = "alice"
        password = "s3cret"

        [[rules]]
        principals = { clientIds = ["sensor-*"], usernames = ["alice"] }
        brokerResources = [
          { method = "Connect" },
          { method = "Publish", topics = ["statestore/v1/+/command/invoke", "data/{principal.clientId}/#"] },
          { method = "Subscribe", topics = ["clients/{principal.clientId}/#"] },
        ]
        stateStoreResources = [
          { method = "Read", keyType = "Pattern", keys = ["config/*", "unit[0-9]"] },
          { method = "ReadWrite", keys = ["sensors/{principal.clientId}/*"] },
          { method = "Write", keyType = "String", keys = ["lit*eral"] },
          { method = "ReadWrite", keyType = "Binary", keys = ["AAEC"] },
        ]

        [[rules]]
        principals = { usernames = ["alice"] }
        brokerResources = [{ method = "Connect" }]
        stateStoreResources = [{ method = "ReadWrite", keys = ["alice/{principal.username}/*"] }]
    "#;

    fn policy() -> Policy {
        let a: Authorization = toml::from_str(RULES).unwrap();
        a.check().unwrap();
        Policy::new(Some(a))
    }

    fn sensor() -> Principal {
        Principal { client_id: "sensor-1".into(), username: None }
    }

    #[test]
    fn no_rules_allow_everything() {
        let p = Policy::default();
        assert!(p.authenticate("anyone", Some("who"), None, None).is_ok());
        assert!(p.can_key(&sensor(), b"x", Access::Write));
        assert!(p.can_publish(&sensor(), "a/b") && p.can_subscribe(&sensor(), "#"));
    }

    #[test]
    fn connect_needs_a_rule_and_the_right_password() {
        let p = policy();
        assert_eq!(p.authenticate("sensor-9", None, None, None).unwrap().username, None);
        assert_eq!(p.authenticate("intruder", None, None, None), Err(Refusal::NotAuthorized));
        assert_eq!(p.authenticate("x", Some("alice"), Some(b"wrong"), None), Err(Refusal::BadCredentials));
        assert_eq!(p.authenticate("x", Some("alice"), None, None), Err(Refusal::BadCredentials));
        assert_eq!(p.authenticate("x", Some("mallory"), Some(b"s3cret"), None), Err(Refusal::BadCredentials));
        assert_eq!(
            p.authenticate("x", Some("alice"), Some(b"s3cret"), None).unwrap().username.as_deref(),
            Some("alice")
        );
        // A client certificate names the user when CONNECT does not; a password still must
        // match when it does.
        assert_eq!(p.authenticate("x", None, None, Some("alice")).unwrap().username.as_deref(), Some("alice"));
        assert_eq!(p.authenticate("x", None, None, Some("bob")), Err(Refusal::NotAuthorized));
        assert_eq!(p.authenticate("x", Some("alice"), Some(b"no"), Some("alice")), Err(Refusal::BadCredentials));
    }

    #[test]
    fn keys_by_pattern_string_binary_and_substitution() {
        let (p, s) = (policy(), sensor());
        assert!(p.can_key(&s, b"config/a", Access::Read));
        assert!(!p.can_key(&s, b"config/a", Access::Write));
        assert!(p.can_key(&s, b"unit7", Access::Read) && !p.can_key(&s, b"unitX", Access::Read));
        assert!(p.can_key(&s, b"sensors/sensor-1/t", Access::Write));
        assert!(!p.can_key(&s, b"sensors/sensor-2/t", Access::Read), "another principal's keys");
        assert!(p.can_key(&s, b"lit*eral", Access::Write) && !p.can_key(&s, b"litXeral", Access::Write));
        assert!(p.can_key(&s, &[0, 1, 2], Access::Read));
        // A client id with glob characters matches only itself.
        let sly = Principal { client_id: "sensor-*".into(), username: None };
        assert!(p.can_key(&sly, b"sensors/sensor-*/t", Access::Read));
        assert!(!p.can_key(&sly, b"sensors/sensor-1/t", Access::Read));
        let alice = Principal { client_id: "x".into(), username: Some("alice".into()) };
        assert!(p.can_key(&alice, b"alice/alice/k", Access::Write));
        assert!(!p.can_key(&Principal { client_id: "x".into(), username: None }, b"alice/alice/k", Access::Read));
    }

    #[test]
    fn topics_with_substitution() {
        let (p, s) = (policy(), sensor());
        assert!(p.can_publish(&s, "statestore/v1/FA9AE35F-2F64-47CD-9BFF-08E2B32A0FE8/command/invoke"));
        assert!(p.can_publish(&s, "data/sensor-1/temp") && !p.can_publish(&s, "data/sensor-2/temp"));
        assert!(p.can_subscribe(&s, "clients/sensor-1/#") && p.can_subscribe(&s, "clients/sensor-1/a/+"));
        assert!(!p.can_subscribe(&s, "clients/#"));
        assert!(!p.can_subscribe(&s, "clients/+/x"), "a wildcard where the rule has a literal");
        let wild = Principal { client_id: "sensor-+".into(), username: None };
        assert!(!p.can_publish(&wild, "data/x/y"), "a wildcard in a client id widens nothing");
    }

    #[test]
    fn bad_rules_are_refused_at_load() {
        let bad_b64 = r#"[[rules]]
            stateStoreResources = [{ method = "Read", keyType = "Binary", keys = ["***"] }]"#;
        assert!(toml::from_str::<Authorization>(bad_b64).unwrap().check().is_err());
        let bad_token = r#"[[rules]]
            stateStoreResources = [{ method = "Read", keys = ["{principal.attributes.x}"] }]"#;
        assert!(toml::from_str::<Authorization>(bad_token).unwrap().check().is_err());
        assert!(toml::from_str::<Authorization>(
            r#"[[rules]]
            stateStoreResources = [{ method = "Delete", keys = ["a"] }]"#
        )
        .is_err());
        assert!(toml::from_str::<Authorization>("[[rules]]\nprincipal = {}").is_err());
    }
}
