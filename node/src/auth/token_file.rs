//! Named API tokens from a file (`--token-file`): one `NAME TOKEN` a line, `#` comments.
//! The file is read again when it changes (looked at no more than once a second), so a token
//! rotates without a restart: add the new one, move the clients, remove the old one. A file
//! that changes into one that does not parse keeps the tokens before it (logged, never the
//! tokens themselves).

use super::constant_time_eq;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often a request may look at the file again.
const RECHECK: Duration = Duration::from_secs(1);
/// The shortest token accepted: a guessable one protects nothing.
const MIN_TOKEN: usize = 16;

pub struct TokenFile {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    stamp: SystemTime,
    checked: Instant,
    /// (name, token)
    tokens: Vec<(String, String)>,
}

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

fn read(path: &Path) -> io::Result<(SystemTime, Vec<(String, String)>)> {
    let stamp = std::fs::metadata(path)?.modified()?;
    let text = std::fs::read_to_string(path)?;
    let tokens =
        parse(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
    Ok((stamp, tokens))
}

impl TokenFile {
    /// Reads `path`; a file that does not parse is an error (the node does not start).
    pub fn load(path: &Path) -> io::Result<Self> {
        let (stamp, tokens) = read(path)?;
        let state = Mutex::new(State { stamp, checked: Instant::now(), tokens });
        Ok(Self { path: path.to_path_buf(), state })
    }

    /// The name of the token `given` is, if any (every token compared).
    pub fn matches(&self, given: &[u8]) -> Option<String> {
        let mut st = self.state.lock().expect("poisoned");
        if st.checked.elapsed() >= RECHECK {
            st.checked = Instant::now();
            match std::fs::metadata(&self.path).and_then(|m| m.modified()) {
                Ok(stamp) if stamp != st.stamp => match read(&self.path) {
                    Ok((stamp, tokens)) => {
                        tracing::info!(file = %self.path.display(), tokens = tokens.len(), "token file changed; loaded it");
                        st.stamp = stamp;
                        st.tokens = tokens;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "token file changed but does not load; keeping the old tokens")
                    }
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the token file; keeping the old tokens"),
            }
        }
        let mut found = None;
        for (name, token) in &st.tokens {
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
        let f = TokenFile::load(&path).unwrap();
        assert_eq!(f.matches(b"0123456789abcdef-old").as_deref(), Some("alice"));
        assert_eq!(f.matches(b"0123456789abcdef-new"), None);
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::write(&path, "alice 0123456789abcdef-new\n").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        f.state.lock().unwrap().checked -= RECHECK;
        assert_eq!(f.matches(b"0123456789abcdef-new").as_deref(), Some("alice"));
        assert_eq!(f.matches(b"0123456789abcdef-old"), None);
        std::fs::write(&path, "not a token file").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later + RECHECK).unwrap();
        f.state.lock().unwrap().checked -= RECHECK;
        assert_eq!(f.matches(b"0123456789abcdef-new").as_deref(), Some("alice"), "a bad file keeps the old tokens");
        assert!(TokenFile::load(&path).is_err(), "a bad file at start is an error");
    }
}
