//! Containers on object storage: `s3://bucket/prefix` and `http(s)://…/`,
//! run through a verified local cache.
//!
//! [`attach`] fetches the manifest (always: that is how a changed container is
//! noticed), keeps it and the container's small files (tokenizer, generation
//! config) in a local directory, and reads every stage file's header (kept
//! too). The container is then opened from that directory like a local one;
//! its stage files are read through the [`Remote`] registered for it: whole
//! files downloaded into the cache (resumed after an interruption, sha256
//! checked before first use, least recently used ones evicted past
//! `--cache-max`), or, for files the cache may not hold (`--cache-max 0`),
//! ranged GETs straight into the read buffers.

pub mod cache;
mod store;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};
use strata_format::header::{Prefix, PREFIX_LEN};
use strata_format::manifest::MANIFEST_NAME;
use strata_format::{FileHeader, Manifest};

pub use cache::Cache;
pub use store::{is_url, ObjectInfo, Store, DEFAULT_RETRIES, IN_FLIGHT, PIECE};

use crate::error::{Result, RunnerError};

/// The reason given when a resumed download does not verify (it is then
/// downloaded again from its start).
const RESUME_FAILED: &str = "a resumed download did not verify";

/// Where and how much to cache.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// The cache directory.
    pub cache_dir: PathBuf,
    /// The bound on cached stage files (`None`: none; `Some(0)`: stream all).
    pub cache_max: Option<u64>,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            cache_dir: cache::default_dir(),
            cache_max: None,
        }
    }
}

/// A stage file of a remote container.
#[derive(Debug)]
struct Object {
    name: String,
    size: u64,
    sha256: String,
    /// Size and tag on the server, read once per process for streamed reads.
    info: OnceLock<ObjectInfo>,
}

/// A remote container attached to a local directory.
pub struct Remote {
    store: Store,
    cache: Cache,
    dir: PathBuf,
    objects: HashMap<PathBuf, Object>,
    /// One lock per download, so that two readers never fetch a file twice.
    downloads: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url())
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Remotes attached in this process, by local directory.
fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Remote>>> {
    static R: OnceLock<Mutex<HashMap<PathBuf, Arc<Remote>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The remote container attached to directory `dir`, if any.
pub fn lookup(dir: &Path) -> Option<Arc<Remote>> {
    registry().lock().ok()?.get(dir).cloned()
}

/// Resolves a container argument: a local path is returned as it is; a URL is
/// attached (see the module's documentation) and its local directory returned.
pub fn resolve(arg: &str, o: &RemoteOptions) -> Result<PathBuf> {
    if !is_url(arg) {
        return Ok(PathBuf::from(arg));
    }
    Ok(attach(arg, o)?.dir.clone())
}

/// Attaches the container at `url`: fetches its manifest, small files and
/// stage headers, and registers the [`Remote`] for its local directory.
pub fn attach(url: &str, o: &RemoteOptions) -> Result<Arc<Remote>> {
    attach_store(Store::open(url)?, o)
}

/// [`attach`] for an already connected store.
pub fn attach_store(store: Store, o: &RemoteOptions) -> Result<Arc<Remote>> {
    let cache = Cache::open(&o.cache_dir, o.cache_max)?;
    let dir = cache.container_dir(store.url());
    fs::create_dir_all(&dir).map_err(|e| RunnerError::io(&dir, e))?;
    let (bytes, _) = store
        .get(MANIFEST_NAME, strata_format::manifest::MAX_MANIFEST_BYTES)
        .map_err(|e| match e {
            RunnerError::Remote { object, reason } if reason == "not found" => {
                RunnerError::Remote {
                    object,
                    reason: "not found: is this a strata container (written by `prep`, \
                             published with `runner push`)?"
                        .into(),
                }
            }
            e => e,
        })?;
    let manifest_url = store.object_url(MANIFEST_NAME);
    let manifest = Manifest::from_json(&bytes, Path::new(&manifest_url))?;
    let local = dir.join(MANIFEST_NAME);
    if fs::read(&local).ok().as_deref() != Some(&bytes[..]) {
        strata_format::fsutil::write_atomic(&local, &bytes)?;
    }
    let stages: Vec<&str> = std::iter::once(&manifest.stages.embed)
        .chain(&manifest.stages.layers)
        .chain(std::iter::once(&manifest.stages.head))
        .map(String::as_str)
        .collect();
    let mut objects = HashMap::new();
    for f in &manifest.files {
        if stages.contains(&f.path.as_str()) {
            objects.insert(
                Manifest::resolve(&dir, &f.path)?,
                Object {
                    name: f.path.clone(),
                    size: f.bytes,
                    sha256: f.sha256.clone(),
                    info: OnceLock::new(),
                },
            );
        } else {
            small_file(&store, &dir, &f.path, f.bytes, &f.sha256)?;
        }
    }
    let remote = Arc::new(Remote {
        store,
        cache,
        dir: dir.clone(),
        objects,
        downloads: Mutex::new(HashMap::new()),
    });
    remote.fetch_headers()?;
    if let Ok(mut r) = registry().lock() {
        r.insert(dir, remote.clone());
    }
    Ok(remote)
}

/// Makes sure the small file `name` in `dir` has `size` bytes and digest `sha`,
/// fetching it when not.
fn small_file(store: &Store, dir: &Path, name: &str, size: u64, sha: &str) -> Result<()> {
    let path = Manifest::resolve(dir, name)?;
    if let Ok(bytes) = fs::read(&path) {
        if bytes.len() as u64 == size && strata_format::checksum::sha256_hex(&bytes) == sha {
            return Ok(());
        }
    }
    let (bytes, _) = store.get(name, size)?;
    let actual = strata_format::checksum::sha256_hex(&bytes);
    if bytes.len() as u64 != size || actual != sha {
        return Err(damaged(store, name, bytes.len() as u64, size, &actual, sha));
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| RunnerError::io(parent, e))?;
    }
    strata_format::fsutil::write_atomic(&path, &bytes)?;
    Ok(())
}

fn damaged(store: &Store, name: &str, len: u64, size: u64, actual: &str, sha: &str) -> RunnerError {
    RunnerError::Remote {
        object: store.object_url(name),
        reason: if len != size {
            format!("damaged: {len} bytes, the manifest says {size}; not used")
        } else {
            format!("damaged: sha256 {actual}, the manifest says {sha}; not used")
        },
    }
}

impl Remote {
    /// The container's URL.
    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// The local directory the container is opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Bytes received and requests made so far.
    pub fn traffic(&self) -> (u64, u64) {
        (
            self.store.traffic.bytes.load(Ordering::Relaxed),
            self.store.traffic.requests.load(Ordering::Relaxed),
        )
    }

    /// Bytes of all stage files.
    pub fn stage_bytes(&self) -> u64 {
        self.objects.values().map(|o| o.size).sum()
    }

    /// One line for the plan: where the stage files come from and what the
    /// cache keeps on disk.
    pub fn describe(&self) -> String {
        let transfer = crate::units::human(PIECE * IN_FLIGHT as u64);
        let total = crate::units::human(self.stage_bytes());
        match self.cache.max() {
            Some(0) => format!(
                "{}: every layer streamed by ranged GETs ({transfer} in flight per read, \
                 within the runtime allowance); nothing cached",
                self.url()
            ),
            Some(m) if self.streams_any() => format!(
                "{}: files up to {} cached in {}, larger ones streamed by ranged GETs \
                 ({transfer} in flight per read); stage files {total}",
                self.url(),
                crate::units::human(m),
                self.cache.root().display()
            ),
            Some(m) => format!(
                "{}: stage files ({total}) cached in {}, at most {} kept (least recently \
                 used evicted)",
                self.url(),
                self.cache.root().display(),
                crate::units::human(m)
            ),
            None => format!(
                "{}: stage files ({total}) cached in {} (no bound: --cache-max)",
                self.url(),
                self.cache.root().display()
            ),
        }
    }

    /// Whether every stage file is kept in the cache (else some are streamed).
    pub fn streams_any(&self) -> bool {
        self.objects.values().any(|o| !self.cache.holds(o.size))
    }

    fn object(&self, path: &Path) -> Result<&Object> {
        self.objects.get(path).ok_or_else(|| {
            RunnerError::Invalid(format!(
                "{} is not a stage file of {}",
                path.display(),
                self.url()
            ))
        })
    }

    /// The stage file's object name, for `path` in the local directory.
    pub fn object_url(&self, path: &Path) -> String {
        match self.objects.get(path) {
            Some(o) => self.store.object_url(&o.name),
            None => path.display().to_string(),
        }
    }

    /// Reads the header of every stage file not yet known to the cache,
    /// several at a time.
    fn fetch_headers(&self) -> Result<()> {
        let missing: Vec<&Object> = self
            .objects
            .values()
            .filter(|o| !self.cache.header(&o.sha256).exists())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        log::info!(
            "remote: reading the headers of {} stage files of {}",
            missing.len(),
            self.url()
        );
        std::thread::scope(|s| {
            let chunks: Vec<_> = missing.chunks(missing.len().div_ceil(8)).collect();
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|c| s.spawn(move || c.iter().try_for_each(|o| self.fetch_header(o))))
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })
    }

    fn fetch_header(&self, o: &Object) -> Result<()> {
        let bytes = match self.cache.lookup(&o.sha256, o.size) {
            Some(p) => {
                let mut f = fs::File::open(&p).map_err(|e| RunnerError::io(&p, e))?;
                let mut v = vec![0u8; (o.size.min(64 << 10)) as usize];
                f.read_exact(&mut v).map_err(|e| RunnerError::io(&p, e))?;
                v
            }
            None => self
                .store
                .get_range(&o.name, 0..o.size.min(64 << 10), None)?
                .to_vec(),
        };
        let url = self.store.object_url(&o.name);
        let prefix = Prefix::parse(&bytes, Path::new(&url))?;
        let end = (PREFIX_LEN as u64)
            .checked_add(u64::from(prefix.header_len))
            .filter(|&e| e <= o.size)
            .ok_or_else(|| RunnerError::Remote {
                object: url.clone(),
                reason: format!(
                    "header of {} bytes runs past the end of the {}-byte file",
                    prefix.header_len, o.size
                ),
            })?;
        let mut head = bytes;
        if (head.len() as u64) < end {
            let more = self
                .store
                .get_range(&o.name, head.len() as u64..end, None)?;
            head.extend_from_slice(&more);
        }
        head.truncate(end as usize);
        FileHeader::parse_file_start(&head, o.size, Path::new(&url))?;
        strata_format::fsutil::write_atomic(&self.cache.header(&o.sha256), &head)?;
        Ok(())
    }

    /// The prefix and header of the stage file at `path` (kept in the cache).
    pub fn header(&self, path: &Path) -> Result<FileHeader> {
        let o = self.object(path)?;
        let hp = self.cache.header(&o.sha256);
        let bytes = fs::read(&hp).map_err(|e| RunnerError::io(&hp, e))?;
        let url = self.store.object_url(&o.name);
        Ok(FileHeader::parse_file_start(&bytes, o.size, Path::new(&url))?.1)
    }

    /// The local copy of the stage file at `path` when the cache keeps it
    /// (downloading it now if needed), or `None` when it is to be streamed.
    pub fn local(&self, path: &Path) -> Result<Option<PathBuf>> {
        let o = self.object(path)?;
        if !self.cache.holds(o.size) {
            return Ok(None);
        }
        if let Some(p) = self.cache.lookup(&o.sha256, o.size) {
            return Ok(Some(p));
        }
        let lock = {
            let mut d = self
                .downloads
                .lock()
                .map_err(|_| RunnerError::Prefetch("download lock poisoned".into()))?;
            d.entry(o.sha256.clone()).or_default().clone()
        };
        let _held = lock
            .lock()
            .map_err(|_| RunnerError::Prefetch("download lock poisoned".into()))?;
        if let Some(p) = self.cache.lookup(&o.sha256, o.size) {
            return Ok(Some(p));
        }
        match self.download(o, true) {
            Err(RunnerError::Remote { reason, .. }) if reason == RESUME_FAILED => {
                log::warn!(
                    "remote: a resumed download of {} did not verify; downloading it again",
                    self.store.object_url(&o.name)
                );
                self.download(o, false).map(Some)
            }
            r => r.map(Some),
        }
    }

    /// Downloads `o` into the cache: resumes a partial download of the same
    /// object version, checks the sha256, then moves it into place.
    fn download(&self, o: &Object, resume: bool) -> Result<PathBuf> {
        let url = self.store.object_url(&o.name);
        let info = self.store.head(&o.name)?;
        if info.size != o.size {
            return Err(RunnerError::Remote {
                object: url,
                reason: format!(
                    "{} bytes on the server, the manifest says {}: the container changed or \
                     is damaged; not used",
                    info.size, o.size
                ),
            });
        }
        let (part, tag) = self.cache.partial(&o.sha256);
        let tag_now = info.etag.clone().unwrap_or_default();
        let mut start = 0u64;
        if let (Ok(m), Ok(t)) = (fs::metadata(&part), fs::read_to_string(&tag)) {
            if resume && t == tag_now && !tag_now.is_empty() && m.len() <= o.size {
                // Bytes are appended in order: what is there is a prefix
                // (a torn tail is caught by the sha256 check, then the file is
                // downloaded again from its start).
                start = m.len();
                if start > 0 {
                    log::info!("remote: resuming {url} at {start} bytes");
                }
            }
        }
        if start == 0 {
            strata_format::fsutil::write_atomic(&tag, tag_now.as_bytes())?;
        }
        self.cache.make_room(o.size, &o.sha256)?;
        let need = o.size - start;
        if let Some(free) = self.cache.free_bytes() {
            if free < need {
                return Err(self.full(&part, &url, &format!("{free} bytes free, {need} needed")));
            }
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(start == 0)
            .open(&part)
            .map_err(|e| RunnerError::io(&part, e))?;
        if start > 0 {
            f.set_len(start).map_err(|e| RunnerError::io(&part, e))?;
            f.seek(std::io::SeekFrom::Start(start))
                .map_err(|e| RunnerError::io(&part, e))?;
        }
        let etag = info.etag.as_deref();
        let mut at = start;
        while at < o.size {
            let end = (at + PIECE * IN_FLIGHT as u64).min(o.size);
            let mut buf = vec![0u8; (end - at) as usize];
            self.store.read_into(&o.name, at, &mut buf, etag)?;
            if let Err(e) = f.write_all(&buf) {
                return Err(self.full(&part, &url, &e.to_string()));
            }
            at = end;
        }
        f.sync_all()
            .map_err(|e| self.full(&part, &url, &e.to_string()))?;
        drop(f);
        let (len, actual) = strata_format::checksum::sha256_file(&part)?;
        if len != o.size || actual != o.sha256 {
            let _ = fs::remove_file(&part);
            let _ = fs::remove_file(&tag);
            if start > 0 {
                return Err(RunnerError::Remote {
                    object: url,
                    reason: RESUME_FAILED.into(),
                });
            }
            return Err(damaged(
                &self.store,
                &o.name,
                len,
                o.size,
                &actual,
                &o.sha256,
            ));
        }
        let dst = self.cache.object(&o.sha256);
        strata_format::fsutil::commit_tmp(&part, &dst)?;
        let _ = fs::remove_file(&tag);
        log::debug!("remote: cached {url} ({len} bytes)");
        Ok(dst)
    }

    /// The error for a cache that cannot take a download; the partial file is
    /// removed so that nothing half-written is left to be used.
    fn full(&self, part: &Path, url: &str, why: &str) -> RunnerError {
        let _ = fs::remove_file(part);
        RunnerError::Remote {
            object: url.to_string(),
            reason: format!(
                "cannot be stored in the cache directory {}: {why} (free space, or use \
                 --cache-max to bound the cache, --cache-max 0 to stream without one)",
                self.cache.root().display()
            ),
        }
    }

    fn info(&self, o: &Object) -> Result<ObjectInfo> {
        if let Some(i) = o.info.get() {
            return Ok(i.clone());
        }
        let info = self.store.head(&o.name)?;
        if info.size != o.size {
            return Err(RunnerError::Remote {
                object: self.store.object_url(&o.name),
                reason: format!(
                    "{} bytes on the server, the manifest says {}: the container changed or \
                     is damaged; not used",
                    info.size, o.size
                ),
            });
        }
        Ok(o.info.get_or_init(|| info).clone())
    }

    /// Fills `out` with bytes of the stage file at `path` from `offset` on,
    /// by ranged GETs (the object must not change meanwhile).
    pub fn read_direct(&self, path: &Path, offset: u64, out: &mut [u8]) -> Result<()> {
        let o = self.object(path)?;
        let info = self.info(o)?;
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|&e| e <= o.size);
        if end.is_none() {
            return Err(RunnerError::Invalid(format!(
                "{}: bytes {offset}..+{} are outside the {}-byte file",
                self.store.object_url(&o.name),
                out.len(),
                o.size
            )));
        }
        self.store
            .read_into(&o.name, offset, out, info.etag.as_deref())
    }

    /// The sha256 of the stage file at `path`, streamed from the remote.
    pub fn sha256_streamed(&self, path: &Path) -> Result<String> {
        let o = self.object(path)?;
        let info = self.info(o)?;
        let mut h = Sha256::new();
        let mut at = 0u64;
        let step = PIECE * IN_FLIGHT as u64;
        let mut buf = vec![0u8; step.min(o.size) as usize];
        while at < o.size {
            let n = (o.size - at).min(step) as usize;
            self.store
                .read_into(&o.name, at, &mut buf[..n], info.etag.as_deref())?;
            h.update(&buf[..n]);
            at += n as u64;
        }
        Ok(strata_format::checksum::hex_digest(h))
    }
}

impl Remote {
    /// Checks every file of the container against the manifest `m`: small
    /// files in the local directory, stage files by downloading them into the
    /// cache (which checks them) or, when the cache does not keep them, by
    /// hashing them as they stream.
    pub fn verify(&self, m: &Manifest) -> strata_format::verify::VerifyReport {
        use strata_format::verify::{check_file, FileProblem, Problem, VerifyReport};
        let mut report = VerifyReport::default();
        for f in &m.files {
            report.files_checked += 1;
            let path = match Manifest::resolve(&self.dir, &f.path) {
                Ok(p) => p,
                Err(e) => {
                    report.problems.push(FileProblem {
                        file: f.path.clone(),
                        problem: Problem::Structure {
                            reason: e.to_string(),
                        },
                    });
                    continue;
                }
            };
            let problem = if self.objects.contains_key(&path) {
                let got = match self.local(&path) {
                    Ok(Some(p)) => strata_format::checksum::sha256_file(&p)
                        .map(|(_, d)| d)
                        .map_err(RunnerError::from),
                    Ok(None) => self.sha256_streamed(&path),
                    Err(e) => Err(e),
                };
                match got {
                    Ok(d) if d == f.sha256 => None,
                    Ok(d) => Some(Problem::Checksum {
                        expected: f.sha256.clone(),
                        actual: d,
                    }),
                    Err(e) => Some(Problem::Unreadable {
                        reason: e.to_string(),
                    }),
                }
            } else {
                check_file(&self.dir, m, &f.path, true)
            };
            match problem {
                Some(problem) => report.problems.push(FileProblem {
                    file: f.path.clone(),
                    problem,
                }),
                None => report.bytes_checked += f.bytes,
            }
        }
        report
    }
}

/// Logs, for each container attached in this process, the bytes received and
/// the requests made (one line each: `remote: fetched N bytes in M requests`).
pub fn report_traffic() {
    let Ok(r) = registry().lock() else {
        return;
    };
    for remote in r.values() {
        let (bytes, requests) = remote.traffic();
        log::info!(
            "remote: fetched {bytes} bytes in {requests} requests from {}",
            remote.url()
        );
    }
}

/// Uploads the local container `dir` to `url`: checks every file against the
/// manifest first, removes the remote manifest (so that no reader sees a
/// half-replaced container), uploads every listed file, then the manifest.
/// Returns the files and bytes uploaded.
pub fn push(dir: &Path, url: &str) -> Result<(usize, u64)> {
    let manifest = Manifest::load(dir)?;
    let report = strata_format::verify::verify_container(dir, &manifest);
    if !report.ok() {
        let first = report
            .problems
            .first()
            .map(|p| format!("{}: {}", p.file, p.problem))
            .unwrap_or_default();
        return Err(RunnerError::Invalid(format!(
            "{} does not verify ({first}); run `runner verify {}`",
            dir.display(),
            dir.display()
        )));
    }
    let store = Store::open(url)?;
    store.delete(MANIFEST_NAME)?;
    let mut total = 0u64;
    for (i, f) in manifest.files.iter().enumerate() {
        let path = Manifest::resolve(dir, &f.path)?;
        log::info!(
            "push: [{}/{}] {} ({})",
            i + 1,
            manifest.files.len(),
            f.path,
            crate::units::human(f.bytes)
        );
        store.put_file(&f.path, &path)?;
        total += f.bytes;
    }
    let mpath = dir.join(MANIFEST_NAME);
    store.put_file(MANIFEST_NAME, &mpath)?;
    let mlen = fs::metadata(&mpath)
        .map_err(|e| RunnerError::io(&mpath, e))?
        .len();
    Ok((manifest.files.len() + 1, total + mlen))
}
