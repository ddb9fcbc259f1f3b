//! Named API tokens from a file (`--token-file`): one `NAME TOKEN` a line, `#` comments.
//! The file is read again when it changes (looked at no more than once a second), so a token
//! rotates without a restart: add the new one, move the clients, remove the old one. A file
//! that changes into one that does not parse keeps the tokens before it (logged, never the
//! tokens themselves).

use super::constant_time_eq;
use statenode_client::reload::{self, Reloaded};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The shortest token accepted: a guessable one protects nothing.
const MIN_TOKEN: usize = 16;

/// (name, token) pairs.
pub struct TokenFile(Reloaded<Arc<Vec<(String, String)>>>);

/// The tokens of a token file's text; an error names the line, never a token.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, token] = fields[..] else {
            return Err(format!("line {}: want `NAME TOKEN`", i + 1));
        };
        let name_ok = name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(format!("line {}: a name is 1 to 64 of A-Z a-z 0-9 - _ .", i + 1));
        }
        if token.len() < MIN_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("line {}: a token is {MIN_TOKEN}+ visible ASCII characters", i + 1));
        }
        if tokens.iter().any(|(n, _)| n == name) {
            return Err(format!("line {}: the name {name} is given twice", i + 1));
        }
        tokens.push((name.to_string(), token.to_string()));
    }
    Ok(tokens)
}

fn read(path: &Path) -> io::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)?;
    parse(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
}

impl TokenFile {
    /// Reads `path`; a file that does not parse is an error (the node does not start).
    pub fn load(path: &Path) -> io::Result<Self> {
        Self::load_with(path, reload::RECHECK)
    }

    /// `load`, looking at the file again no more than once per `recheck`.
    pub fn load_with(path: &Path, recheck: Duration) -> io::Result<Self> {
        let owned = path.to_path_buf();
        let tokens = Reloaded::new("token file", vec![owned.clone()], recheck, move || read(&owned).map(Arc::new))?;
        Ok(Self(tokens))
    }

    /// The name of the token `given` is, if any (every token compared).
    pub fn matches(&self, given: &[u8]) -> Option<String> {
        let mut found = None;
        for (name, token) in self.0.current().iter() {
            if constant_time_eq(given, token.as_bytes()) {
                found = Some(name.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn parses_names_and_tokens_and_refuses_bad_lines() {
        let ok = "# rotation: both valid for now\nalice  0123456789abcdef-old\n\nalice-2 0123456789abcdef-new\n";
        let t = parse(ok).unwrap();
        assert_eq!(t.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["alice", "alice-2"]);
        for bad in
            ["alice", "alice short", "a b c d", "al/ice 0123456789abcdef0", "a 0123456789abcdef\na 0123456789abcdeg"]
        {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with("line "), "{e}");
            assert!(!e.contains("0123456789"), "an error must not show a token: {e}");
        }
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_bad_one_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "alice 0123456789abcdef-old\n").unwrap();
        let f = TokenFile::load_with(&path, Duration::ZERO).unwrap();
        assert_eq!(f.matches(b"0123456789abcdef-old").as_deref(), Some("alice"));
        assert_eq!(f.matches(b"0123456789abcdef-new"), None);
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::write(&path, "alice 0123456789abcdef-new\n").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        assert_eq!(f.matches(b"0123456789abcdef-new").as_deref(), Some("alice"));
        assert_eq!(f.matches(b"0123456789abcdef-old"), None);
        std::fs::write(&path, "not a token file").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later + reload::RECHECK).unwrap();
        assert_eq!(f.matches(b"0123456789abcdef-new").as_deref(), Some("alice"), "a bad file keeps the old tokens");
        assert!(TokenFile::load(&path).is_err(), "a bad file at start is an error");
    }
}
