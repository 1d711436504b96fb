//! One container's objects on a remote store (`s3://bucket/prefix` or an
//! `http(s)://` base), reached through the `object_store` crate: whole and
//! ranged GETs with our own retry and backoff, uploads, and errors that name
//! the object's URL.

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientConfigKey, ClientOptions, GetOptions, GetRange, ObjectStore,
    ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};

use crate::error::{Result, RunnerError};

/// Bytes per ranged GET of a streamed read or a download.
pub const PIECE: u64 = 4 << 20;
/// Ranged GETs in flight for one read.
pub const IN_FLIGHT: usize = 4;
/// Default number of retries of one request (`STRATA_REMOTE_RETRIES`).
pub const DEFAULT_RETRIES: u32 = 10;
/// First backoff between retries; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest backoff between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// Bytes per part of a multipart upload.
const UPLOAD_PART: usize = 16 << 20;

/// Whether `s` names a remote container rather than a local path.
pub fn is_url(s: &str) -> bool {
    ["s3://", "http://", "https://"]
        .iter()
        .any(|p| s.len() > p.len() && s[..p.len()].eq_ignore_ascii_case(p))
}

/// What one object is now on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// The server's entity tag, when it sends one.
    pub etag: Option<String>,
}

/// Counters of the traffic to the store.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Requests made (retries included).
    pub requests: AtomicU64,
    /// Body bytes received.
    pub bytes: AtomicU64,
}

/// A container's location on a remote store.
pub struct Store {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    runtime: tokio::runtime::Runtime,
    retries: u32,
    /// Requests and bytes so far.
    pub traffic: Traffic,
}

/// How a failed request should be handled.
enum Failure {
    /// Worth another try (network, server error, a cut body).
    Transient(String),
    /// Final: the object is absent.
    NotFound,
    /// Final: credentials missing, wrong or not allowed.
    Denied(String),
    /// Final: the object changed since its size and tag were read.
    Changed,
    /// Final: anything else the server refused.
    Other(String),
}

/// An error with its chain of causes, on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cause = c.source();
    }
    out
}

fn classify(e: &object_store::Error) -> Failure {
    use object_store::Error as E;
    let text = chain(e);
    match e {
        E::NotFound { .. } => Failure::NotFound,
        E::Precondition { .. } | E::NotModified { .. } => Failure::Changed,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => Failure::Denied(text),
        E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => Failure::Other(text),
        _ => {
            // Statuses the crate reports as generic errors ("... status code: 403 Forbidden").
            let lower = text.to_ascii_lowercase();
            match status_of(&lower) {
                Some(401 | 403) => Failure::Denied(text),
                Some(404) => Failure::NotFound,
                Some(412) => Failure::Changed,
                Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => Failure::Other(text),
                _ if lower.contains("accessdenied")
                    || lower.contains("signaturedoesnotmatch")
                    || lower.contains("invalidaccesskeyid") =>
                {
                    Failure::Denied(text)
                }
                _ if lower.contains("non-partial response") => Failure::Other(text),
                _ => Failure::Transient(text),
            }
        }
    }
}

/// The HTTP status in an error's text (`status code: 403`), if any.
fn status_of(lower: &str) -> Option<u16> {
    let at = lower.find("status code: ")? + "status code: ".len();
    lower.get(at..at + 3)?.parse().ok()
}

impl Store {
    /// Connects to the container at `url`: `s3://bucket/prefix` (credentials,
    /// region and endpoint from the usual `AWS_*` environment: `AWS_ENDPOINT_URL`
    /// for S3-compatible servers, `AWS_ALLOW_HTTP=true` for plain-HTTP ones) or
    /// an `http(s)://` base address read with ranged GETs.
    pub fn open(url: &str) -> Result<Store> {
        let url = url.trim_end_matches('/').to_string();
        let bad = |reason: String| RunnerError::Remote {
            object: url.clone(),
            reason,
        };
        let retries = match std::env::var("STRATA_REMOTE_RETRIES") {
            Ok(v) => v
                .trim()
                .parse::<u32>()
                .map_err(|_| bad(format!("STRATA_REMOTE_RETRIES={v:?} is not a count")))?,
            Err(_) => DEFAULT_RETRIES,
        };
        // Retries are ours (they also cover bodies cut mid-transfer); the
        // crate's own are off so that a final error is not delayed twice.
        let no_retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 0,
            retry_timeout: Duration::from_secs(30),
        };
        let options = ClientOptions::new()
            .with_timeout(Duration::from_secs(60))
            .with_connect_timeout(Duration::from_secs(10));
        let lower = url.to_ascii_lowercase();
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = if lower.starts_with("s3://") {
            let rest = &url["s3://".len()..];
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name (s3://BUCKET/PREFIX)".into()));
            }
            // Timeouts set key by key: the environment's client settings
            // (AWS_ALLOW_HTTP among them) stay in force.
            let s3 = AmazonS3Builder::from_env()
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), "60s")
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    "10s",
                )
                .with_bucket_name(bucket)
                // One DELETE per object: S3-compatible servers differ on the
                // bulk form, and push deletes one object.
                .with_disable_bulk_delete(true)
                .with_retry(no_retry.clone())
                .build()
                .map_err(|e| bad(format!("cannot configure the S3 client: {e}")))?;
            let prefix = ObjectPath::parse(prefix)
                .map_err(|e| bad(format!("not a valid object prefix: {e}")))?;
            (Arc::new(s3), prefix)
        } else if lower.starts_with("http://") || lower.starts_with("https://") {
            let http = HttpBuilder::new()
                .with_url(url.clone())
                .with_retry(no_retry)
                .with_client_options(options.with_allow_http(true))
                .build()
                .map_err(|e| bad(format!("cannot configure the HTTP client: {e}")))?;
            (Arc::new(http), ObjectPath::default())
        } else {
            return Err(bad(
                "not a container URL (s3://, http:// or https://)".into()
            ));
        };
        Store::build(store, prefix, &url, retries)
    }

    /// A store over any `object_store` implementation (an in-memory one in
    /// tests), named `url` in messages, its objects under `prefix`; 2 retries.
    pub fn with_object_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        url: &str,
    ) -> Result<Store> {
        let prefix = ObjectPath::parse(prefix).map_err(|e| RunnerError::Remote {
            object: url.to_string(),
            reason: format!("not a valid object prefix: {e}"),
        })?;
        Store::build(store, prefix, url, 2)
    }

    fn build(
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        url: &str,
        retries: u32,
    ) -> Result<Store> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strata-remote")
            .enable_all()
            .build()
            .map_err(|e| RunnerError::Remote {
                object: url.to_string(),
                reason: format!("cannot start the network runtime: {e}"),
            })?;
        Ok(Store {
            store,
            prefix,
            url: url.trim_end_matches('/').to_string(),
            runtime,
            retries,
            traffic: Traffic::default(),
        })
    }

    /// The container's URL (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of the object `name` (for messages).
    pub fn object_url(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    fn key(&self, name: &str) -> ObjectPath {
        name.split('/')
            .fold(self.prefix.clone(), |p, part| p.clone().join(part))
    }

    /// Runs `fut` to completion on the store's runtime, also from inside
    /// another tokio runtime (the server's), where it runs on a helper thread.
    fn block<F: Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| self.runtime.block_on(fut))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            self.runtime.block_on(fut)
        }
    }

    fn error(&self, name: &str, f: Failure, attempts: u32) -> RunnerError {
        let object = self.object_url(name);
        let reason = match f {
            Failure::NotFound => "not found".to_string(),
            Failure::Denied(e) => format!(
                "access denied: check the credentials (AWS_ACCESS_KEY_ID, \
                 AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) and the bucket's permissions: {e}"
            ),
            Failure::Changed => {
                "changed on the server while it was being read (its size or ETag differs); \
                 run again"
                    .to_string()
            }
            Failure::Other(e) => e,
            Failure::Transient(e) => format!("gave up after {attempts} attempts: {e}"),
        };
        RunnerError::Remote { object, reason }
    }

    /// Runs `op` with retries and exponential backoff on transient failures.
    async fn retrying<T, Fut>(&self, name: &str, op: impl Fn() -> Fut) -> Result<T>
    where
        Fut: Future<Output = std::result::Result<T, object_store::Error>>,
    {
        let mut wait = FIRST_BACKOFF;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.traffic.requests.fetch_add(1, Ordering::Relaxed);
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => match classify(&e) {
                    Failure::Transient(text) if attempt <= self.retries => {
                        log::warn!(
                            "remote: {}: {text}; retrying in {:.2} s ({attempt}/{})",
                            self.object_url(name),
                            wait.as_secs_f64(),
                            self.retries
                        );
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(MAX_BACKOFF);
                    }
                    f => return Err(self.error(name, f, attempt)),
                },
            }
        }
    }

    async fn get_async(
        &self,
        name: &str,
        range: Option<Range<u64>>,
        etag: Option<&str>,
    ) -> Result<(Bytes, ObjectInfo)> {
        let key = self.key(name);
        let (bytes, info) = self
            .retrying(name, || {
                let opts = GetOptions {
                    range: range.clone().map(GetRange::Bounded),
                    if_match: etag.map(str::to_string),
                    ..GetOptions::default()
                };
                let key = &key;
                async move {
                    let r = self.store.get_opts(key, opts).await?;
                    let info = ObjectInfo {
                        size: r.meta.size,
                        etag: r.meta.e_tag.clone(),
                    };
                    let bytes = r.bytes().await?;
                    Ok((bytes, info))
                }
            })
            .await?;
        self.traffic
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if let Some(r) = &range {
            if bytes.len() as u64 != r.end - r.start {
                return Err(RunnerError::Remote {
                    object: self.object_url(name),
                    reason: format!(
                        "asked for bytes {}..{}, the server sent {}",
                        r.start,
                        r.end,
                        bytes.len()
                    ),
                });
            }
        }
        Ok((bytes, info))
    }

    /// The whole object `name`, at most `limit` bytes.
    pub fn get(&self, name: &str, limit: u64) -> Result<(Bytes, ObjectInfo)> {
        let (bytes, info) = self.block(self.get_async(name, None, None))?;
        if bytes.len() as u64 > limit {
            return Err(RunnerError::Remote {
                object: self.object_url(name),
                reason: format!("{} bytes, more than the {limit} allowed", bytes.len()),
            });
        }
        Ok((bytes, info))
    }

    /// Bytes `range` of object `name`; with `etag`, only if the object still has it.
    pub fn get_range(&self, name: &str, range: Range<u64>, etag: Option<&str>) -> Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        Ok(self.block(self.get_async(name, Some(range), etag))?.0)
    }

    /// Fills `out` with the bytes of object `name` from `offset` on, by
    /// [`IN_FLIGHT`] concurrent ranged GETs of [`PIECE`] bytes.
    pub fn read_into(
        &self,
        name: &str,
        offset: u64,
        out: &mut [u8],
        etag: Option<&str>,
    ) -> Result<()> {
        use futures::StreamExt;
        let mut pieces: Vec<(u64, &mut [u8])> = Vec::new();
        let mut at = offset;
        for chunk in out.chunks_mut(PIECE as usize) {
            let n = chunk.len() as u64;
            pieces.push((at, chunk));
            at += n;
        }
        let jobs: Vec<_> = pieces
            .into_iter()
            .map(|(at, dst)| self.piece(name, at, dst, etag))
            .collect();
        self.block(async {
            let mut jobs = futures::stream::iter(jobs).buffer_unordered(IN_FLIGHT);
            while let Some(r) = jobs.next().await {
                r?;
            }
            Ok(())
        })
    }

    /// Fills `dst` with the bytes of object `name` at `at`.
    async fn piece(&self, name: &str, at: u64, dst: &mut [u8], etag: Option<&str>) -> Result<()> {
        let (b, _) = self
            .get_async(name, Some(at..at + dst.len() as u64), etag)
            .await?;
        dst.copy_from_slice(&b);
        Ok(())
    }

    /// The size and ETag of object `name`.
    pub fn head(&self, name: &str) -> Result<ObjectInfo> {
        let key = self.key(name);
        self.block(self.retrying(name, || async {
            let m = self.store.head(&key).await?;
            Ok(ObjectInfo {
                size: m.size,
                etag: m.e_tag,
            })
        }))
    }

    /// Deletes object `name`; an absent object is not an error.
    pub fn delete(&self, name: &str) -> Result<()> {
        let key = self.key(name);
        match self.block(self.retrying(name, || self.store.delete(&key))) {
            Err(RunnerError::Remote { reason, .. }) if reason == "not found" => Ok(()),
            r => r,
        }
    }

    /// Uploads the local file `path` as object `name` (multipart above one part).
    pub fn put_file(&self, name: &str, path: &std::path::Path) -> Result<()> {
        use std::io::Read;
        let key = self.key(name);
        let io = |e| RunnerError::io(path, e);
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len <= UPLOAD_PART as u64 {
            let bytes = std::fs::read(path).map_err(io)?;
            let payload = PutPayload::from(bytes);
            self.block(self.retrying(name, || self.store.put(&key, payload.clone())))?;
            self.traffic.bytes.fetch_add(len, Ordering::Relaxed);
            return Ok(());
        }
        std::fs::File::open(path).map_err(io)?;
        // A failed part fails the upload; the whole file is then sent again
        // (with the same retries and backoff as a read).
        self.block(self.retrying(name, || async {
            let local = |e: std::io::Error| object_store::Error::Generic {
                store: "local file",
                source: format!("{}: {e}", path.display()).into(),
            };
            let mut file = std::fs::File::open(path).map_err(local)?;
            let upload = self.store.put_multipart(&key).await?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART);
            let mut buf = vec![0u8; UPLOAD_PART];
            let failed = loop {
                let n = match file.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => n,
                    Err(e) => break Some(local(e)),
                };
                if let Err(e) = w.wait_for_capacity(IN_FLIGHT).await {
                    break Some(e);
                }
                w.write(&buf[..n]);
            };
            match failed {
                // The parts already sent are dropped on the server.
                Some(e) => {
                    let _ = w.abort().await;
                    Err(e)
                }
                None => w.finish().await.map(|_| ()),
            }
        }))?;
        self.traffic.bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        for u in ["s3://b/p", "S3://b", "http://h:1/x", "https://h/"] {
            assert!(is_url(u), "{u}");
        }
        for p in [
            "s3://",
            "./s3:/x",
            "/data/model",
            "model",
            "file:///x",
            "http://",
        ] {
            assert!(!is_url(p), "{p}");
        }
    }

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.to_string().into(),
        }
    }

    #[test]
    fn failures_are_told_apart_by_status_not_by_stray_digits() {
        let t =
            "Error performing GET http://h/x in 412.3µs - tcp connect error: Connection refused";
        assert!(matches!(classify(&generic(t)), Failure::Transient(_)));
        let t = "Server returned non-2xx status code: 403 Forbidden: <Code>SignatureDoesNotMatch";
        assert!(matches!(classify(&generic(t)), Failure::Denied(_)));
        let t = "Server returned non-2xx status code: 412 Precondition Failed";
        assert!(matches!(classify(&generic(t)), Failure::Changed));
        let t = "Server returned non-2xx status code: 503 Service Unavailable";
        assert!(matches!(classify(&generic(t)), Failure::Transient(_)));
        let t = "Server returned non-2xx status code: 400 Bad Request";
        assert!(matches!(classify(&generic(t)), Failure::Other(_)));
        assert_eq!(status_of("status code: 404 not found"), Some(404));
        assert_eq!(status_of("in 404.1µs"), None);
    }

    #[test]
    fn bad_urls_are_named() {
        let err = Store::open("s3:///prefix")
            .err()
            .expect("no bucket")
            .to_string();
        assert!(
            err.contains("s3:///prefix") && err.contains("bucket"),
            "{err}"
        );
    }
}
