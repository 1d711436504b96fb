//! Containers on object storage, through the library with an in-memory object
//! store: logits equal to the local copy (cached and streamed), a warm run
//! fetching only the manifest, damaged and missing objects named, the cache
//! bound kept, a partial download resumed, a full disk refused cleanly.
//! `scripts/test-remote.sh` runs the same against real S3 and HTTP servers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use strata_e2e::{prepared, tiny_fixture};
use strata_format::Manifest;
use strata_runner::engine::{Engine, EngineOptions};
use strata_runner::io::IoChoice;
use strata_runner::model::Want;
use strata_runner::remote::{self, Remote, RemoteOptions, Store};

fn container() -> PathBuf {
    prepared(&tiny_fixture("llama"), "remote-tiny-llama", &[])
}

fn options() -> EngineOptions {
    EngineOptions {
        max_memory: Some(0),
        io: IoChoice::Pread,
        prefetch: 1,
        verify: true,
        ctx: Some(64),
        keep_compressed: None,
        sequences: 1,
    }
}

/// Uploads every file of `dir` under `prefix`, the manifest included.
fn upload(store: &InMemory, dir: &Path, prefix: &str) {
    let rt = tokio_rt();
    for e in std::fs::read_dir(dir).expect("read dir") {
        let e = e.expect("entry");
        let bytes = std::fs::read(e.path()).expect("read");
        let key = ObjectPath::from(format!("{prefix}/{}", e.file_name().to_string_lossy()));
        rt.block_on(store.put(&key, PutPayload::from(bytes)))
            .expect("put");
    }
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn logits(dir: &Path) -> Vec<f32> {
    let mut e = Engine::open(dir, &options()).expect("open");
    e.forward(&[1, 2, 3, 4], Want::All).expect("forward").data
}

fn try_attach(
    store: &Arc<InMemory>,
    prefix: &str,
    cache: &Path,
    max: Option<u64>,
) -> strata_runner::Result<Arc<Remote>> {
    let s = Store::with_object_store(store.clone(), prefix, &format!("mem://{prefix}"))?;
    remote::attach_store(
        s,
        &RemoteOptions {
            cache_dir: cache.to_path_buf(),
            cache_max: max,
        },
    )
}

fn attach(store: &Arc<InMemory>, prefix: &str, cache: &Path, max: Option<u64>) -> PathBuf {
    let r = try_attach(store, prefix, cache, max).expect("attach");
    r.dir().to_path_buf()
}

/// The error of attaching, opening or running the container.
fn attach_err(store: &Arc<InMemory>, prefix: &str, cache: &Path, max: Option<u64>) -> String {
    match try_attach(store, prefix, cache, max) {
        Err(e) => e.to_string(),
        Ok(r) => match Engine::open(r.dir(), &options()) {
            Err(e) => e.to_string(),
            Ok(mut e) => e
                .forward(&[1, 2, 3], Want::Last)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| panic!("no error")),
        },
    }
}

fn largest_layer(dir: &Path) -> (String, u64, String) {
    let m = Manifest::load(dir).expect("manifest");
    let f = m
        .files
        .iter()
        .filter(|f| m.stages.layers.contains(&f.path))
        .max_by_key(|f| f.bytes)
        .expect("a layer");
    (f.path.clone(), f.bytes, f.sha256.clone())
}

#[test]
fn remote_logits_equal_the_local_copy_cached_and_streamed() {
    let dir = container();
    let want = logits(&dir);
    let store = Arc::new(InMemory::new());
    upload(&store, &dir, "c/tiny");
    let cache = tempfile::tempdir().expect("tempdir");
    for max in [None, Some(0)] {
        let cache = cache.path().join(format!("{max:?}"));
        let view = attach(&store, "c/tiny", &cache, max);
        assert_eq!(logits(&view), want, "cache_max {max:?}");
        let cached = std::fs::read_dir(cache.join("objects"))
            .expect("objects")
            .count();
        match max {
            Some(0) => assert_eq!(cached, 0, "nothing cached with --cache-max 0"),
            _ => assert!(cached > 0, "stage files cached"),
        }
    }
}

#[test]
fn a_warm_cache_fetches_only_the_manifest() {
    let dir = container();
    let store = Arc::new(InMemory::new());
    upload(&store, &dir, "warm");
    let cache = tempfile::tempdir().expect("tempdir");
    let view = attach(&store, "warm", cache.path(), None);
    let want = logits(&view);
    let r = try_attach(&store, "warm", cache.path(), None).expect("attach");
    assert_eq!(logits(r.dir()), want);
    let manifest = std::fs::metadata(dir.join("manifest.json"))
        .expect("m")
        .len();
    assert_eq!(
        r.traffic(),
        (manifest, 1),
        "bytes and requests of a warm run"
    );
}

#[test]
fn damaged_and_missing_objects_are_named_and_never_cached() {
    let dir = container();
    let (layer, size, sha) = largest_layer(&dir);
    let store = Arc::new(InMemory::new());
    upload(&store, &dir, "bad");
    let mut bytes = std::fs::read(dir.join(&layer)).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    tokio_rt()
        .block_on(store.put(&ObjectPath::from(format!("bad/{layer}")), bytes.into()))
        .expect("put");
    for max in [None, Some(0)] {
        let cache = tempfile::tempdir().expect("tempdir");
        let err = attach_err(&store, "bad", cache.path(), max);
        assert!(
            err.contains(&layer) && (err.contains("damaged") || err.contains("sha256")),
            "{max:?}: {err}"
        );
        assert!(
            !cache.path().join("objects").join(&sha).exists(),
            "a damaged file is never cached"
        );
        let parts = std::fs::read_dir(cache.path().join("partial"))
            .expect("partial")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.metadata().is_ok_and(|m| m.len() == size))
            })
            .count();
        assert_eq!(parts, 0, "no damaged bytes left behind");
    }

    let store = Arc::new(InMemory::new());
    upload(&store, &dir, "gone");
    tokio_rt()
        .block_on(store.delete(&ObjectPath::from(format!("gone/{layer}"))))
        .expect("delete");
    let cache = tempfile::tempdir().expect("tempdir");
    let err = attach_err(&store, "gone", cache.path(), None);
    assert!(err.contains(&layer) && err.contains("not found"), "{err}");

    let cache = tempfile::tempdir().expect("tempdir");
    let err = attach_err(&store, "nothing-here", cache.path(), None);
    assert!(
        err.contains("manifest.json") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn the_cache_keeps_its_bound() {
    let dir = container();
    let (_, size, _) = largest_layer(&dir);
    let store = Arc::new(InMemory::new());
    upload(&store, &dir, "bound");
    let cache = tempfile::tempdir().expect("tempdir");
    let bound = size * 2;
    let view = attach(&store, "bound", cache.path(), Some(bound));
    let want = logits(&container());
    assert_eq!(logits(&view), want);
    let held: u64 = std::fs::read_dir(cache.path().join("objects"))
        .expect("objects")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    assert!(
        held > 0 && held <= bound,
        "{held} bytes held, bound {bound}"
    );
}

#[test]
fn a_partial_download_is_resumed() {
    let dir = container();
    let (layer, size, sha) = largest_layer(&dir);
    let store = Arc::new(InMemory::new());
    upload(&store, &dir, "resume");
    let cache = tempfile::tempdir().expect("tempdir");
    // A first download of everything, to learn the traffic of a cold run.
    let view = attach(&store, "resume", cache.path(), None);
    let want = logits(&view);
    // Then: the layer's file half downloaded, as a killed run leaves it.
    let object = cache.path().join("objects").join(&sha);
    let bytes = std::fs::read(&object).expect("cached");
    let etag = tokio_rt()
        .block_on(store.head(&ObjectPath::from(format!("resume/{layer}"))))
        .expect("head")
        .e_tag
        .expect("etag");
    std::fs::remove_file(&object).expect("rm");
    let keep = size / 2;
    let partial = cache.path().join("partial");
    std::fs::write(partial.join(format!("{sha}.part")), &bytes[..keep as usize]).expect("part");
    std::fs::write(partial.join(format!("{sha}.etag")), &etag).expect("etag");
    let r = try_attach(&store, "resume", cache.path(), None).expect("attach");
    assert_eq!(logits(r.dir()), want);
    let manifest = std::fs::metadata(dir.join("manifest.json"))
        .expect("m")
        .len();
    let (got, _) = r.traffic();
    assert_eq!(got, manifest + size - keep, "only the missing part fetched");
    assert!(object.exists());
}

#[test]
fn a_full_cache_disk_is_a_clean_error() {
    let dir = container();
    let (layer, _, sha) = largest_layer(&dir);
    let store = Arc::new(InMemory::new());
    upload(&store, &dir, "full");
    let cache = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(cache.path().join("partial")).expect("mkdir");
    // Writes to /dev/full fail with ENOSPC, as on a full file system.
    std::os::unix::fs::symlink(
        "/dev/full",
        cache.path().join("partial").join(format!("{sha}.part")),
    )
    .expect("symlink");
    let err = attach_err(&store, "full", cache.path(), None);
    assert!(
        err.contains(&layer) && err.contains("cannot be stored in the cache directory"),
        "{err}"
    );
    assert!(!cache.path().join("objects").join(&sha).exists());
    assert!(
        !cache
            .path()
            .join("partial")
            .join(format!("{sha}.part"))
            .exists(),
        "the partial file is removed"
    );
}
