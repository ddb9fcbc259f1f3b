//! A value loaded from files and loaded again when one of them changes: how certificates
//! (`tls::Reloading`) and a node's token file rotate without a restart.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// How often a caller looks at the files again, by default.
pub const RECHECK: Duration = Duration::from_secs(1);

type Load<T> = Box<dyn Fn() -> io::Result<T> + Send + Sync>;

/// `load`'s value, loaded again once the modification time of one of `paths` changes (looked
/// at no more than once per `recheck`, when the value is asked for). A change that does not
/// load (a half-written file) keeps the value before it, is logged, and is tried again.
pub struct Reloaded<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Load<T>,
    recheck: Duration,
    state: Mutex<State<T>>,
}

struct State<T> {
    stamps: Vec<SystemTime>,
    checked: Instant,
    current: T,
}

impl<T> fmt::Debug for Reloaded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reloaded({}: {:?})", self.what, self.paths)
    }
}

fn stamps(paths: &[PathBuf]) -> io::Result<Vec<SystemTime>> {
    paths.iter().map(|p| std::fs::metadata(p)?.modified()).collect()
}

impl<T: Clone> Reloaded<T> {
    /// Loads at once: an error here is the caller's to report (a node does not start).
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        recheck: Duration,
        load: impl Fn() -> io::Result<T> + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let stamps = stamps(&paths)?;
        let current = load()?;
        let state = Mutex::new(State { stamps, checked: Instant::now(), current });
        Ok(Self { what, paths, load: Box::new(load), recheck, state })
    }

    /// The value now.
    pub fn current(&self) -> T {
        let mut st = self.state.lock().expect("poisoned");
        if st.checked.elapsed() >= self.recheck {
            st.checked = Instant::now();
            match stamps(&self.paths) {
                Ok(s) if s != st.stamps => match (self.load)() {
                    Ok(v) => {
                        tracing::info!(what = self.what, files = ?self.paths, "files changed; loaded them");
                        st.stamps = s;
                        st.current = v;
                    }
                    Err(e) => {
                        tracing::warn!(what = self.what, error = %e, "files changed but do not load; keeping the old")
                    }
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(what = self.what, error = %e, "cannot read the files; keeping the old"),
            }
        }
        st.current.clone()
    }
}
