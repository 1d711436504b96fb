//! Hugging Face Hub sources through `hf-hub` (sync API), with the Python
//! cache layout (`models--org--name/{blobs,refs,snapshots}`): a file already
//! in the snapshot is never downloaded again, `HF_HUB_OFFLINE=1` resolves
//! from the cache only, and an unreachable Hub falls back to the cache.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{PrepError, Result};

/// The Hub endpoint used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Hub settings from the environment and the command line.
#[derive(Clone)]
pub struct HubSettings {
    /// The cache directory holding `models--org--name` folders.
    pub cache_dir: PathBuf,
    /// Base URL of the Hub.
    pub endpoint: String,
    /// Access token (`--hf-token` or `HF_TOKEN`); never printed.
    pub token: Option<String>,
    /// Resolve from the cache only (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Show hf-hub's download progress bars.
    pub progress: bool,
}

impl std::fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("cache_dir", &self.cache_dir)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .finish()
    }
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

impl HubSettings {
    /// Settings from `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME`, `HOME`,
    /// `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE`, in Python's precedence.
    pub fn from_env(token_arg: Option<String>, progress: bool) -> HubSettings {
        let cache_dir = if let Some(c) = env_nonempty("HF_HUB_CACHE") {
            PathBuf::from(c)
        } else {
            let home = env_nonempty("HF_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    let base = env_nonempty("XDG_CACHE_HOME")
                        .map(PathBuf::from)
                        .unwrap_or_else(|| {
                            PathBuf::from(env_nonempty("HOME").unwrap_or_else(|| ".".into()))
                                .join(".cache")
                        });
                    base.join("huggingface")
                });
            home.join("hub")
        };
        let endpoint = env_nonempty("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
            .trim_end_matches('/')
            .to_string();
        let offline = env_nonempty("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
        });
        HubSettings {
            cache_dir,
            endpoint,
            token: token_arg.or_else(|| env_nonempty("HF_TOKEN")),
            offline,
            progress,
        }
    }
}

/// Whether `s` has the form of a Hub repository id (`org/name`).
pub fn looks_like_repo_id(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !p.contains("..")
    };
    match s.split_once('/') {
        Some((org, name)) => part(org) && part(name),
        None => false,
    }
}

/// Whether `s` is an acceptable revision (branch, tag or commit): a
/// relative name of `[A-Za-z0-9._/-]` without `..` or empty components.
pub fn valid_revision(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// A Hub repository resolved to one commit.
pub struct HubRepo {
    settings: HubSettings,
    repo_id: String,
    revision: String,
    commit: String,
    snapshot: PathBuf,
    blobs: PathBuf,
    /// Files of the commit, when the Hub answered; `None` when working from the cache.
    remote_files: Option<HashSet<String>>,
    api: Option<Api>,
}

impl std::fmt::Debug for HubRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubRepo")
            .field("repo_id", &self.repo_id)
            .field("commit", &self.commit)
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

impl HubRepo {
    fn err(repo: &str, reason: String) -> PrepError {
        PrepError::Hub {
            repo: repo.to_string(),
            reason,
        }
    }

    /// Resolves `revision` of `repo_id` to a commit: from the Hub when online
    /// (falling back to the cache if the Hub cannot be reached), from the
    /// cache's `refs/` when offline. Returns the repository and, when the Hub
    /// was unreachable, a warning to show.
    pub fn open(
        settings: HubSettings,
        repo_id: &str,
        revision: &str,
    ) -> Result<(HubRepo, Option<String>)> {
        let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
        let folder = settings.cache_dir.join(repo.folder_name());
        if settings.offline {
            let commit = cached_commit(&folder, revision).ok_or_else(|| {
                Self::err(
                    repo_id,
                    format!(
                        "HF_HUB_OFFLINE is set and revision {revision:?} is not in the cache {}",
                        settings.cache_dir.display()
                    ),
                )
            })?;
            return Ok((
                Self::from_parts(settings, repo_id, revision, commit, &folder, None, None),
                None,
            ));
        }
        let mut builder = ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone()))
            .with_endpoint(settings.endpoint.clone())
            .with_progress(settings.progress)
            .with_retries(2)
            .with_user_agent("strata-prep", env!("CARGO_PKG_VERSION"));
        if let Some(t) = &settings.token {
            builder = builder.with_token(Some(t.clone()));
        }
        let api = builder
            .build()
            .map_err(|e| Self::err(repo_id, format!("cannot set up the HTTP client: {e}")))?;
        match api.repo(repo.clone()).info() {
            Ok(info) => {
                if !is_commit_hash(&info.sha) {
                    return Err(Self::err(
                        repo_id,
                        format!("the Hub answered a malformed commit {:?}", info.sha),
                    ));
                }
                let files = info.siblings.into_iter().map(|s| s.rfilename).collect();
                Ok((
                    Self::from_parts(
                        settings,
                        repo_id,
                        revision,
                        info.sha,
                        &folder,
                        Some(files),
                        Some(api),
                    ),
                    None,
                ))
            }
            Err(e) => match cached_commit(&folder, revision) {
                Some(commit) => {
                    let warning = format!(
                        "cannot reach {} ({e}); using the cached snapshot {commit} of {repo_id}@{revision}",
                        settings.endpoint
                    );
                    Ok((
                        Self::from_parts(settings, repo_id, revision, commit, &folder, None, None),
                        Some(warning),
                    ))
                }
                None => Err(Self::err(
                    repo_id,
                    format!(
                        "cannot resolve revision {revision:?} at {} ({e}; check the id, --revision and --hf-token/HF_TOKEN), and it is not in the cache {}",
                        settings.endpoint,
                        settings.cache_dir.display()
                    ),
                )),
            },
        }
    }

    fn from_parts(
        settings: HubSettings,
        repo_id: &str,
        revision: &str,
        commit: String,
        folder: &Path,
        remote_files: Option<HashSet<String>>,
        api: Option<Api>,
    ) -> HubRepo {
        HubRepo {
            snapshot: folder.join("snapshots").join(&commit),
            blobs: folder.join("blobs"),
            settings,
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            commit,
            remote_files,
            api,
        }
    }

    /// The repository id.
    pub fn repo_id(&self) -> &str {
        &self.repo_id
    }

    /// The resolved commit hash.
    pub fn commit(&self) -> &str {
        &self.commit
    }

    /// The snapshot folder holding the commit's files (links into `blobs/`).
    pub fn snapshot(&self) -> &Path {
        &self.snapshot
    }

    /// The cache folder holding the downloaded file contents.
    pub fn blobs_dir(&self) -> &Path {
        &self.blobs
    }

    /// Whether the commit has `name` (remote listing, or the snapshot when offline).
    pub fn has(&self, name: &str) -> bool {
        match &self.remote_files {
            Some(files) => files.contains(name),
            None => self.snapshot.join(name).is_file(),
        }
    }

    /// Local path of `name` (which the commit must have), downloading it into
    /// the cache unless the snapshot already holds it.
    pub fn fetch(&self, name: &str) -> Result<PathBuf> {
        let local = self.snapshot.join(name);
        if local.is_file() {
            return Ok(local);
        }
        let Some(api) = &self.api else {
            return Err(Self::err(
                &self.repo_id,
                format!(
                    "{name} of commit {} is not in the cache {} and the Hub is not used{}",
                    self.commit,
                    self.settings.cache_dir.display(),
                    if self.settings.offline {
                        " (HF_HUB_OFFLINE is set)"
                    } else {
                        " (it could not be reached)"
                    }
                ),
            ));
        };
        log::info!(
            "downloading {name} from {}/{}",
            self.settings.endpoint,
            self.repo_id
        );
        let repo =
            Repo::with_revision(self.repo_id.clone(), RepoType::Model, self.revision.clone());
        let got = api
            .repo(repo)
            .download(name)
            .map_err(|e| Self::err(&self.repo_id, format!("downloading {name}: {e}")))?;
        if got != local {
            return Err(Self::err(
                &self.repo_id,
                format!(
                    "{name} was downloaded to {} but commit {} expects {} (the revision moved during the download; run again)",
                    got.display(),
                    self.commit,
                    local.display()
                ),
            ));
        }
        Ok(local)
    }
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit a revision resolves to in the cache: `refs/<revision>`, or the
/// revision itself when it is a commit whose snapshot exists.
pub fn cached_commit(folder: &Path, revision: &str) -> Option<String> {
    if is_commit_hash(revision) && folder.join("snapshots").join(revision).is_dir() {
        return Some(revision.to_string());
    }
    let commit = std::fs::read_to_string(folder.join("refs").join(revision)).ok()?;
    let commit = commit.trim();
    (is_commit_hash(commit) && folder.join("snapshots").join(commit).is_dir())
        .then(|| commit.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(looks_like_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(looks_like_repo_id("meta-llama/Llama-3.2-1B"));
        assert!(!looks_like_repo_id("gpt2"));
        assert!(!looks_like_repo_id("./models/x"));
        assert!(!looks_like_repo_id("/abs/path"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("org/.."));
        assert!(!looks_like_repo_id("org/"));
    }

    #[test]
    fn revisions() {
        for ok in [
            "main",
            "v1.0",
            "refs/pr/1",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert!(valid_revision(ok), "{ok}");
        }
        for bad in ["", "../x", "a/../b", "/abs", "a//b", "a b", "x/"] {
            assert!(!valid_revision(bad), "{bad}");
        }
    }

    #[test]
    fn cache_refs() {
        let d = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(cached_commit(d.path(), "main"), None);
        std::fs::create_dir_all(d.path().join("refs")).unwrap();
        std::fs::write(d.path().join("refs/main"), commit).unwrap();
        assert_eq!(cached_commit(d.path(), "main"), None, "no snapshot yet");
        std::fs::create_dir_all(d.path().join("snapshots").join(commit)).unwrap();
        assert_eq!(cached_commit(d.path(), "main").as_deref(), Some(commit));
        assert_eq!(cached_commit(d.path(), commit).as_deref(), Some(commit));
        assert_eq!(cached_commit(d.path(), "v2"), None);
    }

    #[test]
    fn token_is_not_printed() {
        let s = HubSettings {
            cache_dir: "/c".into(),
            endpoint: DEFAULT_ENDPOINT.into(),
            token: Some("hf_secret".into()),
            offline: false,
            progress: false,
        };
        assert!(!format!("{s:?}").contains("hf_secret"));
    }
}
