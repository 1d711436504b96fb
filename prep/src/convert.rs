//! The conversion job: resolve the source, lock and inspect the output
//! directory (resume or refuse), check every source tensor against the plan,
//! check disk space, write the stage files one by one (optionally deleting
//! each source shard once everything it holds is written and re-verified),
//! copy the tokenizer files and write the manifest last.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;
use strata_format::checksum::{sha256_file, sha256_hex};
use strata_format::codec;
use strata_format::compress::{self, Codec};
use strata_format::dtype::DType;
use strata_format::error::CodecError;
use strata_format::fsutil::{sync_dir, tmp_path, write_atomic, TMP_SUFFIX};
use strata_format::manifest::{
    FileEntry, Manifest, Quantization, Source as SourceInfo, Stages, TokenizerInfo, Tool,
    MANIFEST_NAME,
};
use strata_format::writer::{layout_header, StageWriter, TensorSpec, WrittenFile};
use strata_format::StageFile;

use crate::config::{parse_architecture, parse_json, parse_token_ids};
use crate::disk;
use crate::error::{human_bytes, PrepError, Result};
use crate::gguf_input::GgufInput;
use crate::hashing::ShardHasher;
use crate::hub::HubSettings;
use crate::job::{JobFile, JobIdentity, OutDir, StageRecord, JOB_NAME};
use crate::plan::{plan, Class, Classifier, Derive, PlannedTensor, QuantPolicy, Stage};
use crate::progress::Reporter;
use crate::safetensors::{convert_slice, Shard, SourceDType, TensorInfo};
use crate::source::{
    Origin, Source, WeightLayout, CONFIG, GENERATION_CONFIG, QWEN_TIKTOKEN, TOKENIZER_FILES,
    TOKENIZER_JSON,
};
use crate::{spm, tiktoken};

/// Name written into the manifest's `tool.name`.
pub const TOOL_NAME: &str = "strata-prep";
/// Upper bound of the f32 working set of one chunk of a tensor.
const CHUNK_F32_BYTES: usize = 64 << 20;
/// Upper bound of the f32 working set of one parallel work item.
const GROUP_F32_BYTES: usize = 1 << 20;
/// Room reserved for the manifest and the job record in the disk check.
const METADATA_RESERVE: u64 = 1 << 20;

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// A checkpoint folder or a Hub repository id.
    pub source: String,
    /// The container directory to write.
    pub out: PathBuf,
    /// Encodings.
    pub quant: QuantPolicy,
    /// Delete each source shard once everything it holds is written and verified.
    pub delete_originals: bool,
    /// Hub revision (branch, tag or commit).
    pub revision: Option<String>,
    /// Hub token (else `HF_TOKEN`, else the cache's token file).
    pub hf_token: Option<String>,
    /// No progress bar and no notes.
    pub quiet: bool,
}

/// The outcome of a run (printed on stderr, or as JSON with `--json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The container directory.
    pub out: String,
    /// The source's location (folder or repository id).
    pub source: String,
    /// The Hub commit, for Hub sources.
    pub revision: Option<String>,
    /// Encoding of the linear weights.
    pub quant: String,
    /// Block size of quantized encodings, if any.
    pub block_size: Option<u32>,
    /// True when the directory already held this container (nothing was done).
    pub already_complete: bool,
    /// Stage files written by this run.
    pub stages_written: usize,
    /// Stage files kept from an interrupted run.
    pub stages_reused: usize,
    /// Source tensor bytes converted by this run.
    pub bytes_in: u64,
    /// Stage file bytes written by this run.
    pub bytes_out: u64,
    /// Size of the whole container (all files listed by the manifest).
    pub container_bytes: u64,
    /// `bytes_out / bytes_in`.
    pub ratio: f64,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// `bytes_in` per second, in MB (10⁶ bytes).
    pub mb_per_s: f64,
    /// Source files deleted by `--delete-originals` in this run.
    pub deleted: Vec<String>,
    /// Bytes those deletions freed.
    pub bytes_freed: u64,
}

impl Summary {
    /// The one-paragraph human summary.
    pub fn human(&self) -> String {
        if self.already_complete {
            return format!(
                "{} already holds this container ({}); nothing to do",
                self.out,
                human_bytes(self.container_bytes)
            );
        }
        let mut s = format!(
            "wrote {} ({} stage files, {} reused) from {}: read {}, wrote {} (ratio {:.3}) in {:.1} s, {:.1} MB/s",
            self.out,
            self.stages_written,
            self.stages_reused,
            self.source,
            human_bytes(self.bytes_in),
            human_bytes(self.bytes_out),
            self.ratio,
            self.seconds,
            self.mb_per_s
        );
        if !self.deleted.is_empty() {
            s.push_str(&format!(
                "; deleted {} source file(s), freeing {}",
                self.deleted.len(),
                human_bytes(self.bytes_freed)
            ));
        }
        s
    }
}

/// For each stage and tensor, the (shard, tensor) it was found at.
type Located = Vec<Vec<Option<(usize, usize)>>>;

/// What happens to one stage.
enum Work {
    /// Keep the complete file an interrupted run left.
    Reuse(StageRecord),
    /// Write it; each tensor's source as (shard, tensor) indices.
    Write(Vec<(usize, usize)>),
}

/// Runs one conversion: resolve the source, lock the output directory, then
/// the steps of the job, one method each, in order.
pub fn run(opts: &Options, rep: &mut Reporter) -> Result<Summary> {
    let started = Instant::now();
    let input = Input::resolve(opts, rep)?;
    let out = input.lock_output(opts)?;
    if out.path().join(MANIFEST_NAME).exists() {
        let (source, layout, identity) = (&input.source, &input.layout, &input.identity);
        return already_complete(
            out.path(),
            source,
            layout,
            identity,
            &input.quantization,
            started,
        );
    }
    let mut job = Conversion::resume(opts, &input, out, rep)?;
    job.open_shards()?;
    job.plan_work(rep)?;
    job.check_space()?;
    job.finish_recorded_deletions(rep)?;
    let mut hasher = job.start_hashing();
    job.write_stages(&mut hasher, rep)?;
    job.copy_tokenizer(rep)?;
    job.record_sources(hasher)?;
    job.finish(started)
}

/// Everything read from the source before the output directory is touched.
struct Input {
    /// The resolved source.
    source: Source,
    /// The bytes of its config.json (none for a GGUF: its config is derived).
    config_bytes: Option<Vec<u8>>,
    /// The architecture config.json describes.
    arch: strata_format::manifest::Architecture,
    /// BOS / EOS / PAD ids.
    tokens: crate::config::TokenIds,
    /// The weight shards and their index.
    layout: WeightLayout,
    /// The tokenizer files the source has, by name.
    tokenizer_paths: Vec<(&'static str, PathBuf)>,
    /// The stage files to write.
    stages: Vec<Stage>,
    /// The manifest's `quantization` (from the stages, when a GGUF's
    /// encodings are kept).
    quantization: Quantization,
    /// What this conversion is, as recorded in the job file.
    identity: JobIdentity,
    /// For a GGUF source: what it holds, seen as a Hugging Face checkpoint.
    gguf: Option<GgufInput>,
}

impl Input {
    /// Resolves the source and reads its configuration, weight layout and
    /// tokenizer files; plans the stages and checks the architecture's bounds.
    fn resolve(opts: &Options, rep: &Reporter) -> Result<Input> {
        let interactive = rep.interactive();
        let (source, warning) = Source::resolve(&opts.source, opts.revision.as_deref(), || {
            HubSettings::from_env(opts.hf_token.clone(), interactive)
        })?;
        if let Some(w) = warning {
            rep.warn(&w);
        }
        let gguf = match &source.gguf {
            Some(files) => Some(GgufInput::read(&source.dir, files, rep)?),
            None => None,
        };
        let (config_path, config_bytes, config) = match &gguf {
            // The GGUF itself is the source file recorded; its config is derived.
            Some(g) => (g.first.clone(), None, g.view.config.clone()),
            None => {
                let path = source.required(CONFIG)?;
                let bytes = read(&path)?;
                let config = parse_json(&bytes, &path)?;
                (path, Some(bytes), config)
            }
        };
        let arch = parse_architecture(&config, &config_path)?;
        let generation = match (&gguf, source.file(GENERATION_CONFIG)?) {
            (Some(g), _) => Some((g.view.generation_config.clone(), g.first.clone())),
            (None, Some(p)) => {
                let bytes = read(&p)?;
                Some((parse_json(&bytes, &p)?, p))
            }
            (None, None) => None,
        };
        let tokens = parse_token_ids(
            generation.as_ref().map(|(v, p)| (v, p.as_path())),
            &config,
            &config_path,
        )?;
        let layout = source.weight_layout()?;
        // Small files first, so a Hub source fails early rather than after hours.
        let mut tokenizer_paths = Vec::new();
        if gguf.is_none() {
            for name in TOKENIZER_FILES {
                if let Some(p) = source.file(name)? {
                    tokenizer_paths.push((name, p));
                }
            }
        }
        let mut stages = plan(&arch, &opts.quant);
        let quantization = match &gguf {
            Some(g) => g.adjust(&mut stages, &arch, &opts.quant)?,
            None => opts.quant.manifest(),
        };
        let identity = JobIdentity {
            tool: format!("{TOOL_NAME} {}", env!("CARGO_PKG_VERSION")),
            source_kind: kind_name(&source).into(),
            location: source.location.clone(),
            revision: source.revision.clone(),
            quant: quantization.weights,
            block_size: quantization.block_size,
            weights: layout.shards.clone(),
            compress: quantization.compression.clone(),
        };
        // Catch architecture bounds before anything is written.
        provisional_manifest(&stages, &arch, &quantization, &tokens).validate(&config_path)?;
        Ok(Input {
            source,
            config_bytes,
            arch,
            tokens,
            layout,
            tokenizer_paths,
            stages,
            quantization,
            identity,
            gguf,
        })
    }

    /// Locks the output directory, refusing the source folder itself.
    fn lock_output(&self, opts: &Options) -> Result<OutDir> {
        let out = OutDir::lock(&opts.out)?;
        let dir = out.path().to_path_buf();
        if dir.canonicalize().ok() == self.source.dir.canonicalize().ok() {
            return Err(PrepError::Output {
                dir,
                reason: "is the source folder; the container needs a directory of its own".into(),
            });
        }
        Ok(out)
    }
}

/// The state of a conversion into a locked directory, from the job record
/// to the manifest; one method per step, called in order by [`run`].
struct Conversion<'a> {
    opts: &'a Options,
    input: &'a Input,
    /// The locked output directory (released by [`Conversion::finish`]).
    out: OutDir,
    /// `out`'s path.
    dir: PathBuf,
    /// The job record, saved after every step that changes it.
    job: JobFile,
    /// Source shards deleted by earlier `--delete-originals` runs.
    deleted: HashSet<String>,
    /// Each shard's path, `None` once deleted.
    shard_paths: Vec<Option<PathBuf>>,
    /// Each shard, mapped, `None` once deleted.
    shards: Vec<Option<Shard>>,
    /// What happens to each stage.
    work: Vec<Work>,
    /// The stage after which each present shard holds nothing more to convert.
    last_use: Vec<usize>,
    /// Source tensor bytes this run converts.
    total_in: u64,
    stages_written: usize,
    stages_reused: usize,
    bytes_out: u64,
    /// The manifest's file list, as files are written.
    files: Vec<FileEntry>,
    /// The tokenizer files the container holds.
    tokenizer_files: Vec<String>,
    /// The source files the manifest records, by name.
    source_files: BTreeMap<String, FileEntry>,
    /// Source files deleted by this run.
    deleted_now: Vec<String>,
    bytes_freed: u64,
}

impl<'a> Conversion<'a> {
    /// Takes up the interrupted job the directory holds (the same conversion),
    /// or starts a new one in a directory that holds no stage file; refuses
    /// anything else.
    fn resume(
        opts: &'a Options,
        input: &'a Input,
        out: OutDir,
        rep: &Reporter,
    ) -> Result<Conversion<'a>> {
        let (identity, stages) = (&input.identity, &input.stages);
        let dir = out.path().to_path_buf();
        let job = match JobFile::load(&dir)? {
            Some(j) if j.identity == *identity => {
                rep.note(&format!("resuming the interrupted job in {}", dir.display()));
                j
            }
            Some(j) => {
                return Err(PrepError::Output {
                    dir,
                    reason: format!(
                        "holds an interrupted conversion of {}, but this run converts {}; rerun the original command to finish it, or choose another --out",
                        j.identity.describe(),
                        identity.describe()
                    ),
                })
            }
            None => {
                if let Some(s) = stages.iter().find(|s| dir.join(&s.file).exists()) {
                    return Err(PrepError::Output {
                        dir,
                        reason: format!(
                            "holds {} but no {JOB_NAME}: it is not an interrupted conversion of this model; choose another --out or empty it",
                            s.file
                        ),
                    });
                }
                JobFile {
                    identity: identity.clone(),
                    weight_sizes: BTreeMap::new(),
                    stages: BTreeMap::new(),
                    deleted: Vec::new(),
                }
            }
        };
        let deleted: HashSet<String> = job.deleted.iter().map(|f| f.path.clone()).collect();
        Ok(Conversion {
            opts,
            input,
            out,
            dir,
            job,
            deleted,
            shard_paths: Vec::new(),
            shards: Vec::new(),
            work: Vec::new(),
            last_use: Vec::new(),
            total_in: 0,
            stages_written: 0,
            stages_reused: 0,
            bytes_out: 0,
            files: Vec::new(),
            tokenizer_files: Vec::new(),
            source_files: BTreeMap::new(),
            deleted_now: Vec::new(),
            bytes_freed: 0,
        })
    }

    /// Maps the shards not yet deleted, refusing any whose size changed since
    /// the interrupted job read it.
    fn open_shards(&mut self) -> Result<()> {
        let (source, layout, dir) = (&self.input.source, &self.input.layout, &self.dir);
        let job = &mut self.job;
        let shard_paths = source.shard_paths(&layout.shards, &self.deleted)?;
        for (name, path) in layout.shards.iter().zip(&shard_paths) {
            let Some(path) = path else { continue };
            let len = std::fs::metadata(path)
                .map_err(|e| PrepError::io(path, e))?
                .len();
            match job.weight_sizes.get(name) {
                Some(&old) if old != len => {
                    return Err(PrepError::Output {
                        dir: dir.clone(),
                        reason: format!(
                            "the interrupted job read {name} when it was {old} bytes; it is now {len} bytes (the source changed); empty the directory to start over"
                        ),
                    })
                }
                Some(_) => {}
                None => {
                    job.weight_sizes.insert(name.clone(), len);
                }
            }
        }
        let gguf = &self.input.gguf;
        self.shards = shard_paths
            .iter()
            .enumerate()
            .map(|(s, p)| {
                p.as_deref()
                    .map(|p| match gguf {
                        Some(g) => g.shard(s, p),
                        None => Shard::open(p),
                    })
                    .transpose()
            })
            .collect::<Result<_>>()?;
        self.shard_paths = shard_paths;
        Ok(())
    }

    /// Finds every planned tensor in the shards and decides, stage by stage,
    /// whether an interrupted run's file is kept or the stage is written; notes
    /// the last stage each shard feeds.
    fn plan_work(&mut self, rep: &Reporter) -> Result<()> {
        let (source, layout, arch, stages) = (
            &self.input.source,
            &self.input.layout,
            &self.input.arch,
            &self.input.stages,
        );
        let (dir, opts, shards) = (&self.dir, self.opts, &self.shards);
        let located = locate(stages, arch, layout, shards, source)?;

        remove_stale_tmp(dir, stages)?;
        let mut work: Vec<Work> = Vec::with_capacity(stages.len());
        for (i, stage) in stages.iter().enumerate() {
            if let Some(rec) = reusable(
                dir,
                stage,
                &self.job,
                opts.delete_originals,
                opts.quant.compress.is_some(),
                rep,
            )? {
                work.push(Work::Reuse(rec));
                continue;
            }
            let mut locs = Vec::with_capacity(stage.tensors.len());
            for (t, pt) in stage.tensors.iter().enumerate() {
                match located[i][t] {
                    Some(l) => locs.push(l),
                    None => return Err(missing(stage, pt, layout, &self.deleted, source, dir)),
                }
            }
            work.push(Work::Write(locs));
        }

        // The stage after which each present shard holds nothing more to convert.
        let mut last_use: Vec<usize> = vec![0; shards.len()];
        let mut used_any = vec![false; shards.len()];
        for (i, locs) in located.iter().enumerate() {
            for &(s, _) in locs.iter().flatten() {
                last_use[s] = last_use[s].max(i);
                used_any[s] = true;
            }
        }
        for (s, used) in used_any.iter().enumerate() {
            if !used {
                last_use[s] = stages.len() - 1;
            }
        }
        self.work = work;
        self.last_use = last_use;
        Ok(())
    }

    /// Refuses a disk too small for the peak need, then saves the job record.
    fn check_space(&self) -> Result<()> {
        SpaceCheck {
            dir: &self.dir,
            stages: &self.input.stages,
            work: &self.work,
            tokenizer_paths: &self.input.tokenizer_paths,
            generated_bytes: self.input.gguf.as_ref().map_or(0, |g| g.generated_bytes()),
            shard_paths: &self.shard_paths,
            last_use: &self.last_use,
            source: &self.input.source,
            delete: self.opts.delete_originals,
        }
        .run()?;
        self.job.save(&self.dir)
    }

    /// Carries out the deletions recorded (after verification) by a run killed
    /// before it could carry them out.
    fn finish_recorded_deletions(&mut self, rep: &Reporter) -> Result<()> {
        if !self.opts.delete_originals {
            return Ok(());
        }
        let source = &self.input.source;
        for d in &self.job.deleted {
            let path = source.dir.join(&d.path);
            if std::fs::symlink_metadata(&path).is_ok() {
                self.bytes_freed += delete_source(source, &path, rep)?;
                rep.note(&format!(
                    "deleted {} (verified by an earlier run)",
                    path.display()
                ));
                self.deleted_now.push(d.path.clone());
            }
        }
        Ok(())
    }

    /// Starts hashing the present shards in the background, in the order the
    /// stages finish with them.
    fn start_hashing(&self) -> ShardHasher {
        let (shards, shard_paths, last_use) = (&self.shards, &self.shard_paths, &self.last_use);
        let mut hash_order: Vec<usize> =
            (0..shards.len()).filter(|&s| shards[s].is_some()).collect();
        hash_order.sort_by_key(|&s| (last_use[s], s));
        ShardHasher::spawn(
            hash_order
                .iter()
                .filter_map(|&s| shard_paths[s].clone().map(|p| (s, p)))
                .collect(),
        )
    }

    /// Writes (or keeps) the stage files in order, recording each in the job
    /// file; with `--delete-originals`, verifies each on disk and deletes every
    /// shard once the last stage it feeds is written.
    fn write_stages(&mut self, hasher: &mut ShardHasher, rep: &mut Reporter) -> Result<()> {
        let (source, layout, stages) = (&self.input.source, &self.input.layout, &self.input.stages);
        let (dir, opts, work, last_use) = (&self.dir, self.opts, &self.work, &self.last_use);
        let (job, shards, shard_paths) = (&mut self.job, &mut self.shards, &self.shard_paths);
        let total_in: u64 = stages
            .iter()
            .zip(work)
            .filter_map(|(stage, w)| match w {
                Work::Write(locs) => Some(stage.tensors.iter().zip(locs)),
                Work::Reuse(_) => None,
            })
            .flatten()
            .map(|(pt, &(s, t))| {
                shards[s]
                    .as_ref()
                    .map_or(0, |sh| pt.source_bytes(sh.tensors()[t].len))
            })
            .sum();
        self.total_in = total_in;
        rep.start(total_in);
        for (i, stage) in stages.iter().enumerate() {
            let record = match &work[i] {
                Work::Reuse(rec) => {
                    self.stages_reused += 1;
                    if !job.stages.contains_key(&stage.file) {
                        job.stages.insert(stage.file.clone(), rec.clone());
                        job.save(dir)?;
                    }
                    rec.clone()
                }
                Work::Write(locs) => {
                    rep.stage(&stage.label());
                    let w = write_stage(dir, stage, locs, shards, opts.quant.compress, rep)?;
                    if opts.delete_originals {
                        verify_on_disk(&w)?;
                    }
                    self.stages_written += 1;
                    self.bytes_out += w.bytes;
                    let rec = StageRecord {
                        bytes: w.bytes,
                        sha256: w.sha256,
                    };
                    job.stages.insert(stage.file.clone(), rec.clone());
                    job.save(dir)?;
                    rec
                }
            };
            self.files.push(FileEntry {
                path: stage.file.clone(),
                bytes: record.bytes,
                sha256: record.sha256,
            });
            if opts.delete_originals {
                let complete: Vec<usize> = (0..shards.len())
                    .filter(|&s| last_use[s] == i && shards[s].is_some())
                    .collect();
                for s in complete {
                    let (bytes, sha256) = hasher.wait(s)?;
                    let name = layout.shards[s].clone();
                    job.deleted.push(FileEntry {
                        path: name.clone(),
                        bytes,
                        sha256,
                    });
                    job.save(dir)?;
                    shards[s] = None;
                    let path = shard_paths[s].as_deref().unwrap_or(Path::new(&name));
                    let freed = delete_source(source, path, rep)?;
                    rep.note(&format!(
                        "deleted {} ({}) after verifying every stage it fed",
                        path.display(),
                        human_bytes(freed)
                    ));
                    self.bytes_freed += freed;
                    self.deleted_now.push(name);
                }
            }
        }
        rep.finish();
        // Unmap the shards.
        shards.clear();
        Ok(())
    }

    /// Copies the tokenizer files verbatim, and writes a tokenizer.json
    /// derived from the others when the source has none.
    fn copy_tokenizer(&mut self, rep: &Reporter) -> Result<()> {
        let (source, arch, tokenizer_paths) = (
            &self.input.source,
            &self.input.arch,
            &self.input.tokenizer_paths,
        );
        let (dir, files, source_files, tokenizer_files) = (
            &self.dir,
            &mut self.files,
            &mut self.source_files,
            &mut self.tokenizer_files,
        );
        if let Some(g) = &self.input.gguf {
            for (name, bytes) in &g.generated {
                write_atomic(&dir.join(name), bytes)?;
                files.push(FileEntry {
                    path: name.to_string(),
                    bytes: bytes.len() as u64,
                    sha256: sha256_hex(bytes),
                });
                tokenizer_files.push(name.to_string());
            }
            for note in &g.view.notes {
                rep.note(note);
            }
        }
        for (name, p) in tokenizer_paths {
            let bytes = read(p)?;
            write_atomic(&dir.join(name), &bytes)?;
            let entry = FileEntry {
                path: name.to_string(),
                bytes: bytes.len() as u64,
                sha256: sha256_hex(&bytes),
            };
            files.push(entry.clone());
            source_files.insert(name.to_string(), entry);
            tokenizer_files.push(name.to_string());
        }
        if !tokenizer_files.iter().any(|f| f == TOKENIZER_JSON) {
            match derive_tokenizer(tokenizer_paths, &arch.family)? {
                Ok((bytes, from)) => {
                    write_atomic(&dir.join(TOKENIZER_JSON), &bytes)?;
                    files.push(FileEntry {
                        path: TOKENIZER_JSON.into(),
                        bytes: bytes.len() as u64,
                        sha256: sha256_hex(&bytes),
                    });
                    tokenizer_files.push(TOKENIZER_JSON.into());
                    rep.note(&format!("wrote tokenizer.json from {from}"));
                }
                Err(why) => rep.warn(&format!(
                    "{} has no tokenizer.json{why}: the container holds no tokenizer, so the runner will need token ids",
                    source.location
                )),
            }
        }
        Ok(())
    }

    /// Records the source files: configuration, index, shards (hashed in the
    /// background, or recorded before they were deleted).
    fn record_sources(&mut self, mut hasher: ShardHasher) -> Result<()> {
        let (layout, config_bytes) = (&self.input.layout, &self.input.config_bytes);
        let source_files = &mut self.source_files;
        if let Some(config_bytes) = config_bytes {
            source_files.insert(
                CONFIG.into(),
                FileEntry {
                    path: CONFIG.into(),
                    bytes: config_bytes.len() as u64,
                    sha256: sha256_hex(config_bytes),
                },
            );
        }
        if let Some(index) = &layout.index {
            let (bytes, sha256) = sha256_file(index)?;
            let name = file_name(index);
            source_files.insert(
                name.clone(),
                FileEntry {
                    path: name,
                    bytes,
                    sha256,
                },
            );
        }
        for d in &self.job.deleted {
            source_files.insert(d.path.clone(), d.clone());
        }
        for (s, name) in layout.shards.iter().enumerate() {
            if self.shard_paths[s].is_some() && !source_files.contains_key(name) {
                let (bytes, sha256) = hasher.wait(s)?;
                source_files.insert(
                    name.clone(),
                    FileEntry {
                        path: name.clone(),
                        bytes,
                        sha256,
                    },
                );
            }
        }
        drop(hasher);
        Ok(())
    }

    /// Writes the manifest (last), removes the job record and releases the
    /// directory.
    fn finish(mut self, started: Instant) -> Result<Summary> {
        let (input, dir) = (self.input, &self.dir);
        let source = &input.source;
        let mut manifest = provisional_manifest(
            &input.stages,
            &input.arch,
            &input.quantization,
            &input.tokens,
        );
        manifest.tokenizer.files = std::mem::take(&mut self.tokenizer_files);
        manifest.files = std::mem::take(&mut self.files);
        manifest.source = SourceInfo {
            kind: kind_name(source).into(),
            location: source.location.clone(),
            revision: source.revision.clone(),
            files: std::mem::take(&mut self.source_files)
                .into_values()
                .collect(),
        };
        let manifest_path = dir.join(MANIFEST_NAME);
        manifest.validate(&manifest_path)?;
        write_atomic(&manifest_path, &manifest.to_json())?;
        JobFile::remove(dir)?;
        sync_dir(dir)?;
        drop(self.out);

        let seconds = started.elapsed().as_secs_f64();
        let (bytes_in, bytes_out) = (self.total_in, self.bytes_out);
        Ok(Summary {
            out: self.dir.display().to_string(),
            source: source.location.clone(),
            revision: source.revision.clone(),
            quant: input.quantization.weights.name().into(),
            block_size: input.quantization.block_size,
            already_complete: false,
            stages_written: self.stages_written,
            stages_reused: self.stages_reused,
            bytes_in,
            bytes_out,
            container_bytes: manifest.files.iter().map(|f| f.bytes).sum(),
            ratio: if bytes_in > 0 {
                bytes_out as f64 / bytes_in as f64
            } else {
                0.0
            },
            seconds,
            mb_per_s: bytes_in as f64 / 1e6 / seconds.max(1e-9),
            deleted: self.deleted_now,
            bytes_freed: self.bytes_freed,
        })
    }
}

/// tokenizer.json derived from the source's other tokenizer files, for the
/// families that publish none: a SentencePiece `tokenizer.model` (InternLM2,
/// Baichuan 2, ChatGLM 3; see `spm`) or a tiktoken rank file (Qwen's
/// `qwen.tiktoken`, GLM-4's `tokenizer.model`; see `tiktoken`). Returns the
/// bytes and what they were made from, or why there are none, as a clause
/// for the warning.
fn derive_tokenizer(
    paths: &[(&str, PathBuf)],
    family: &str,
) -> Result<std::result::Result<(Vec<u8>, String), String>> {
    let find = |name: &str| paths.iter().find(|(n, _)| *n == name).map(|(_, p)| p);
    let flavor = tiktoken::Flavor::of(family);
    if let (Some(p), Some(flavor)) = (find(QWEN_TIKTOKEN), &flavor) {
        return Ok(match tiktoken::parse(&read(p)?) {
            Ok(ranks) => Ok((
                tiktoken::tokenizer_json(&ranks, flavor)
                    .to_string()
                    .into_bytes(),
                format!("{QWEN_TIKTOKEN} (tiktoken, {} ranks)", ranks.len()),
            )),
            Err(e) => Err(format!(" and its {QWEN_TIKTOKEN} was not converted ({e})")),
        });
    }
    let Some(model_path) = find("tokenizer.model") else {
        return Ok(Err(String::new()));
    };
    let bytes = read(model_path)?;
    // GLM-4's tokenizer.model is a tiktoken rank file; the strict line format
    // tells it from a SentencePiece protobuf, which is binary.
    if let Some(flavor) = &flavor {
        if let Ok(ranks) = tiktoken::parse(&bytes) {
            return Ok(Ok((
                tiktoken::tokenizer_json(&ranks, flavor)
                    .to_string()
                    .into_bytes(),
                format!("tokenizer.model (tiktoken, {} ranks)", ranks.len()),
            )));
        }
    }
    let model = match spm::SpmModel::parse(&bytes) {
        Ok(model) => model,
        Err(e) => {
            return Ok(Err(format!(
                " and its tokenizer.model was not converted ({e})"
            )))
        }
    };
    let config = match find("tokenizer_config.json") {
        Some(p) => Some(parse_json(&read(p)?, p)?),
        None => None,
    };
    let converted = spm::Additions::of(family, config.as_ref().and_then(|c| c.as_object()))
        .and_then(|additions| spm::tokenizer_json_bytes(&model, &additions));
    Ok(match converted {
        Ok(json) => Ok((
            json,
            format!(
                "tokenizer.model (SentencePiece BPE, {} pieces)",
                model.pieces.len()
            ),
        )),
        Err(e) => Err(format!(" and its tokenizer.model was not converted ({e})")),
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| PrepError::io(path, e))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn kind_name(source: &Source) -> &'static str {
    match (&source.origin, &source.gguf) {
        (Origin::Local, Some(_)) => "gguf",
        (Origin::Local, None) => "local",
        (Origin::Hub(_), _) => "hub",
    }
}

/// The manifest with everything known before conversion; `files` lists the
/// planned names with placeholder digests so validation can run up front.
fn provisional_manifest(
    stages: &[Stage],
    arch: &strata_format::manifest::Architecture,
    quantization: &Quantization,
    tokens: &crate::config::TokenIds,
) -> Manifest {
    let layers: Vec<String> = stages[1..stages.len() - 1]
        .iter()
        .map(|s| s.file.clone())
        .collect();
    Manifest {
        format_version: strata_format::format_version(),
        tool: Tool {
            name: TOOL_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        architecture: arch.clone(),
        quantization: quantization.clone(),
        tokenizer: TokenizerInfo {
            bos_token_id: tokens.bos,
            eos_token_ids: tokens.eos.clone(),
            pad_token_id: tokens.pad,
            files: Vec::new(),
        },
        stages: Stages {
            embed: stages[0].file.clone(),
            layers,
            head: stages[stages.len() - 1].file.clone(),
        },
        files: stages
            .iter()
            .map(|s| FileEntry {
                path: s.file.clone(),
                bytes: 0,
                sha256: "0".repeat(64),
            })
            .collect(),
        source: SourceInfo {
            kind: String::new(),
            location: String::new(),
            revision: None,
            files: Vec::new(),
        },
    }
}

/// The directory already holds a manifest: the same container (done) or another (refused).
fn already_complete(
    dir: &Path,
    source: &Source,
    layout: &WeightLayout,
    identity: &JobIdentity,
    quantization: &Quantization,
    started: Instant,
) -> Result<Summary> {
    let m = Manifest::load(dir).map_err(|e| PrepError::Output {
        dir: dir.to_path_buf(),
        reason: format!(
            "holds a {MANIFEST_NAME} that cannot be read ({e}); delete it or choose another --out"
        ),
    })?;
    let same_files = layout.shards.iter().all(|name| {
        let on_disk = std::fs::metadata(source.dir.join(name))
            .ok()
            .map(|m| m.len());
        let listed = m
            .source
            .files
            .iter()
            .find(|f| &f.path == name)
            .map(|f| f.bytes);
        listed.is_some() && (on_disk.is_none() || on_disk == listed)
    });
    let same = m.source.kind == identity.source_kind
        && m.source.location == identity.location
        && m.source.revision == identity.revision
        && m.quantization == *quantization
        && same_files;
    if !same {
        let rev = m
            .source
            .revision
            .as_ref()
            .map(|r| format!("@{r}"))
            .unwrap_or_default();
        return Err(PrepError::Output {
            dir: dir.to_path_buf(),
            reason: format!(
                "already holds a complete container of {}{rev} (weights {}, block size {:?}), not of {}; choose another --out or delete it",
                m.source.location,
                m.quantization.weights,
                m.quantization.block_size,
                identity.describe()
            ),
        });
    }
    JobFile::remove(dir)?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Summary {
        out: dir.display().to_string(),
        source: m.source.location.clone(),
        revision: m.source.revision.clone(),
        quant: m.quantization.weights.name().into(),
        block_size: m.quantization.block_size,
        already_complete: true,
        stages_written: 0,
        stages_reused: m.stages.layers.len() + 2,
        bytes_in: 0,
        bytes_out: 0,
        container_bytes: m.files.iter().map(|f| f.bytes).sum(),
        ratio: 0.0,
        seconds,
        mb_per_s: 0.0,
        deleted: Vec::new(),
        bytes_freed: 0,
    })
}

/// Finds every planned tensor in the shards, checking dtypes, shapes, the
/// index, and that no source tensor would be silently dropped.
fn locate(
    stages: &[Stage],
    arch: &strata_format::manifest::Architecture,
    layout: &WeightLayout,
    shards: &[Option<Shard>],
    source: &Source,
) -> Result<Located> {
    let classifier = Classifier::new(stages, arch);
    let mut located: Located = stages.iter().map(|s| vec![None; s.tensors.len()]).collect();
    let index_err = |reason: String| PrepError::Index {
        path: layout
            .index
            .clone()
            .unwrap_or_else(|| source.dir.join(crate::source::WEIGHTS_INDEX)),
        reason,
    };
    for (s, shard) in shards.iter().enumerate() {
        let Some(shard) = shard else { continue };
        let shard_name = &layout.shards[s];
        for (t, info) in shard.tensors().iter().enumerate() {
            match classifier.classify(&info.name) {
                Class::Used(targets) => {
                    if layout.index.is_some()
                        && layout.weight_map.get(&info.name) != Some(shard_name)
                    {
                        return Err(index_err(format!(
                            "tensor `{}` is in {shard_name} but the index says {}",
                            info.name,
                            layout
                                .weight_map
                                .get(&info.name)
                                .map_or("nothing".to_string(), |n| n.clone())
                        )));
                    }
                    for (stage, tensor) in targets {
                        if let Some((other, _)) = located[stage][tensor] {
                            return Err(PrepError::Safetensors {
                                path: shard.path().to_path_buf(),
                                reason: format!(
                                    "tensor `{}` is also in {}",
                                    info.name, layout.shards[other]
                                ),
                            });
                        }
                        check_tensor(&stages[stage], &stages[stage].tensors[tensor], info, shard)?;
                        located[stage][tensor] = Some((s, t));
                    }
                }
                Class::Ignored(why) => {
                    log::debug!("ignoring {} in {shard_name}: {why}", info.name);
                }
                Class::Unexpected(reason) => {
                    return Err(PrepError::UnexpectedTensor {
                        path: shard.path().to_path_buf(),
                        tensor: info.name.clone(),
                        reason,
                    })
                }
            }
        }
    }
    for (name, shard_name) in &layout.weight_map {
        let Some(s) = layout.shards.iter().position(|n| n == shard_name) else {
            continue;
        };
        if let Some(shard) = &shards[s] {
            if !shard.tensors().iter().any(|t| &t.name == name) {
                return Err(index_err(format!(
                    "lists `{name}` in {shard_name}, which does not hold it"
                )));
            }
        }
    }
    Ok(located)
}

fn check_tensor(stage: &Stage, pt: &PlannedTensor, info: &TensorInfo, shard: &Shard) -> Result<()> {
    let err = |reason: String| PrepError::Tensor {
        path: shard.path().to_path_buf(),
        tensor: info.name.clone(),
        reason,
    };
    if info.source_dtype().is_none() {
        return Err(err(format!(
            "dtype {} is not supported (F32, F16 and BF16 are; from GGUF files also Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K to Q6_K)",
            info.dtype
        )));
    }
    let want = pt.source_shape();
    if info.shape != want {
        return Err(err(format!(
            "shape {:?}, but config.json implies {want:?} for {} `{}`",
            info.shape,
            stage.label(),
            pt.spec.name
        )));
    }
    Ok(())
}

fn missing(
    stage: &Stage,
    pt: &PlannedTensor,
    layout: &WeightLayout,
    deleted: &HashSet<String>,
    source: &Source,
    dir: &Path,
) -> PrepError {
    let tensor = pt.source.as_str();
    let shard = match layout.weight_map.get(tensor) {
        Some(s) => Some(s),
        None if layout.index.is_none() => layout.shards.first(),
        None => None,
    };
    match shard.filter(|s| deleted.contains(*s)) {
        Some(shard) => PrepError::Output {
            dir: dir.to_path_buf(),
            reason: format!(
                "{} must be rebuilt but its source {shard} was deleted by an earlier --delete-originals run; the conversion cannot be finished from this source",
                stage.file
            ),
        },
        None => PrepError::MissingTensor {
            tensor: tensor.to_string(),
            needed_for: format!("{} `{}`", stage.label(), pt.spec.name),
            source_dir: source.dir.clone(),
        },
    }
}

/// Removes leftovers of interrupted writes of the files this job writes.
fn remove_stale_tmp(dir: &Path, stages: &[Stage]) -> Result<()> {
    let names = stages
        .iter()
        .map(|s| s.file.as_str())
        .chain(TOKENIZER_FILES)
        .chain([MANIFEST_NAME, JOB_NAME]);
    for name in names {
        let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
        match std::fs::remove_file(&tmp) {
            Ok(()) => log::debug!("removed stale {}", tmp.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(PrepError::io(tmp, e)),
        }
    }
    Ok(())
}

/// Whether a stage file left by an interrupted run can be kept: its header
/// must be byte-identical to the one this run would write, and its sha256
/// must match the one recorded when it was written (required when sources
/// are to be deleted). Anything else is removed and rewritten.
fn reusable(
    dir: &Path,
    stage: &Stage,
    job: &JobFile,
    strict: bool,
    compressed: bool,
    rep: &Reporter,
) -> Result<Option<StageRecord>> {
    let path = dir.join(&stage.file);
    if !path.exists() {
        return Ok(None);
    }
    let (prefix, header) = layout_header(stage.kind, stage.layer, &stage.specs(), &path)?;
    let expected_json =
        serde_json::to_vec(&header).map_err(|e| PrepError::io(&path, std::io::Error::other(e)))?;
    let ok_structure = match StageFile::open(&path) {
        // Compressed lengths are only known once written: the table must hold
        // the planned tensors in order; the recorded sha256 vouches for the rest.
        Ok(f) if compressed => {
            let h = f.header();
            f.prefix().major == prefix.major
                && h.stage == header.stage
                && h.layer == header.layer
                && h.tensors.len() == header.tensors.len()
                && h.tensors.iter().zip(&header.tensors).all(|(a, b)| {
                    a.name == b.name
                        && a.dtype == b.dtype
                        && a.shape == b.shape
                        && a.block_size == b.block_size
                })
                && job.stages.contains_key(&stage.file)
        }
        Ok(f) => {
            let mut start = vec![0u8; 16 + expected_json.len()];
            f.prefix() == prefix
                && *f.header() == header
                && read_prefix(&path, &mut start).is_ok()
                && start[..16] == prefix.to_bytes()
                && start[16..] == expected_json[..]
        }
        Err(_) => false,
    };
    let record = job.stages.get(&stage.file);
    let verdict = if !ok_structure {
        Err("its header differs from this conversion's")
    } else {
        if strict {
            disk::drop_page_cache(&path)?;
        }
        let (bytes, sha256) = sha256_file(&path)?;
        match record {
            Some(r) if r.bytes == bytes && r.sha256 == sha256 => Ok(StageRecord { bytes, sha256 }),
            Some(_) => Err("its sha256 differs from the one recorded when it was written"),
            None if strict => {
                Err("no sha256 was recorded for it, and --delete-originals needs one to verify it")
            }
            None => Ok(StageRecord { bytes, sha256 }),
        }
    };
    match verdict {
        Ok(rec) => Ok(Some(rec)),
        Err(why) => {
            rep.warn(&format!("rewriting {}: {why}", path.display()));
            std::fs::remove_file(&path).map_err(|e| PrepError::io(&path, e))?;
            Ok(None)
        }
    }
}

fn read_prefix(path: &Path, buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open(path)?.read_exact(buf)
}

/// The disk-space check made before anything is written.
struct SpaceCheck<'a> {
    dir: &'a Path,
    stages: &'a [Stage],
    work: &'a [Work],
    tokenizer_paths: &'a [(&'a str, PathBuf)],
    /// Bytes of the tokenizer files written from a GGUF's metadata.
    generated_bytes: u64,
    shard_paths: &'a [Option<PathBuf>],
    last_use: &'a [usize],
    source: &'a Source,
    delete: bool,
}

/// The peak disk usage of a conversion and how it was computed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Need {
    /// Peak bytes the output file system must hold.
    peak: u64,
    /// Bytes of stage files to write.
    stage_bytes: u64,
    /// Bytes of sources freed on the same file system by `--delete-originals`.
    freed: u64,
    /// Whether some sources to delete live on another file system.
    other_fs: bool,
}

impl SpaceCheck<'_> {
    /// Computes the peak disk usage: stage files in order, each source shard
    /// freed (with `--delete-originals`, same file system only) right after
    /// the last stage it feeds, then the tokenizer files and the manifest.
    fn need(&self) -> Result<Need> {
        let mut writes = Vec::with_capacity(self.stages.len());
        for (stage, w) in self.stages.iter().zip(self.work) {
            writes.push(match w {
                Work::Reuse(_) => 0,
                Work::Write(_) => stage.file_size()?,
            });
        }
        let mut frees = vec![0u64; self.stages.len()];
        let mut other_fs = false;
        if self.delete {
            let out_dev = disk::device_of(self.dir)?;
            for (s, path) in self.shard_paths.iter().enumerate() {
                let Some(path) = path else { continue };
                if let Some((bytes, dev)) = deletion_target(self.source, path)? {
                    if dev == out_dev {
                        frees[self.last_use[s]] += bytes;
                    } else {
                        other_fs = true;
                    }
                }
            }
        }
        let mut tail = METADATA_RESERVE + self.generated_bytes;
        for (_, p) in self.tokenizer_paths {
            tail += std::fs::metadata(p).map_err(|e| PrepError::io(p, e))?.len();
        }
        Ok(Need {
            peak: disk::peak_need(&writes, &frees, tail),
            stage_bytes: writes.iter().sum(),
            freed: frees.iter().sum(),
            other_fs,
        })
    }

    /// Refuses the conversion, with the numbers, when the peak does not fit.
    fn run(&self) -> Result<()> {
        let need = self.need()?;
        let available = disk::available_bytes(self.dir)?;
        if need.peak <= available {
            return Ok(());
        }
        let mut detail = format!(
            " ({} of stage files to write",
            human_bytes(need.stage_bytes)
        );
        if need.freed > 0 {
            detail.push_str(&format!(
                ", {} of sources freed by --delete-originals as shards are converted; each stage must fit before the shard it completes is deleted",
                human_bytes(need.freed)
            ));
        }
        if need.other_fs {
            detail.push_str(
                ", some sources are on another file system so deleting them frees nothing here",
            );
        }
        detail.push(')');
        Err(PrepError::DiskSpace {
            dir: self.dir.to_path_buf(),
            need: need.peak,
            available,
            detail,
        })
    }
}

/// What deleting a source shard would free: `(bytes, device)`, or `None`
/// when prep would not delete it (a link out of a local folder).
fn deletion_target(source: &Source, path: &Path) -> Result<Option<(u64, u64)>> {
    let link = std::fs::symlink_metadata(path).map_err(|e| PrepError::io(path, e))?;
    let target = if link.file_type().is_symlink() {
        match hub_blob(source, path)? {
            Some(blob) => blob,
            None => return Ok(None),
        }
    } else {
        path.to_path_buf()
    };
    let m = std::fs::metadata(&target).map_err(|e| PrepError::io(&target, e))?;
    let freed = if m.nlink() == 1 { m.len() } else { 0 };
    Ok(Some((freed, m.dev())))
}

/// The blob a Hub snapshot link points to, if `path` is such a link and the
/// blob lies in the repository's own `blobs/` folder.
fn hub_blob(source: &Source, path: &Path) -> Result<Option<PathBuf>> {
    let Origin::Hub(h) = &source.origin else {
        return Ok(None);
    };
    let target = std::fs::canonicalize(path).map_err(|e| PrepError::io(path, e))?;
    let blobs =
        std::fs::canonicalize(h.blobs_dir()).map_err(|e| PrepError::io(h.blobs_dir(), e))?;
    Ok(target.starts_with(&blobs).then_some(target))
}

/// Deletes one source shard (for a Hub cache: the blob and the snapshot
/// link). Returns the bytes freed.
fn delete_source(source: &Source, path: &Path, rep: &Reporter) -> Result<u64> {
    let Some((freed, _)) = deletion_target(source, path)? else {
        rep.warn(&format!(
            "not deleting {}: it is a symbolic link to a file outside the source",
            path.display()
        ));
        return Ok(0);
    };
    let link = std::fs::symlink_metadata(path).map_err(|e| PrepError::io(path, e))?;
    if link.file_type().is_symlink() {
        if let Some(blob) = hub_blob(source, path)? {
            std::fs::remove_file(&blob).map_err(|e| PrepError::io(&blob, e))?;
            sync_dir(strata_format::fsutil::parent_dir(&blob))?;
        }
    }
    std::fs::remove_file(path).map_err(|e| PrepError::io(path, e))?;
    sync_dir(strata_format::fsutil::parent_dir(path))?;
    Ok(freed)
}

/// Re-reads a just-written stage file from the disk (not the page cache)
/// and checks its sha256 against the one computed while writing.
fn verify_on_disk(w: &WrittenFile) -> Result<()> {
    disk::drop_page_cache(&w.path)?;
    let (bytes, sha256) = sha256_file(&w.path)?;
    if bytes != w.bytes || sha256 != w.sha256 {
        return Err(PrepError::Verify {
            path: w.path.clone(),
            expected: w.sha256.clone(),
            actual: sha256,
        });
    }
    Ok(())
}

/// Where a converted tensor's bytes go: straight into the stage file, or
/// into memory to be compressed before the stage file is laid out.
trait TensorSink {
    fn put(&mut self, name: &str, bytes: &[u8]) -> Result<()>;
}

impl TensorSink for StageWriter {
    fn put(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        Ok(self.write(name, bytes)?)
    }
}

impl TensorSink for Vec<u8> {
    fn put(&mut self, _name: &str, bytes: &[u8]) -> Result<()> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// Tensors smaller than this are never compressed (norms, biases: nothing to gain).
pub const MIN_COMPRESS_BYTES: usize = 64 << 10;
/// A tensor is stored compressed only when that saves at least this share of its bytes.
pub const MIN_COMPRESS_SAVING: f64 = 0.05;

/// Compresses one encoded tensor when it is large enough and zstd saves at
/// least [`MIN_COMPRESS_SAVING`]; returns the spec to write and the stored bytes.
fn maybe_compress(
    spec: &TensorSpec,
    encoded: Vec<u8>,
    codec: Codec,
    path: &Path,
) -> Result<(TensorSpec, Vec<u8>)> {
    if encoded.len() < MIN_COMPRESS_BYTES {
        return Ok((spec.clone(), encoded));
    }
    let Some((_, row_bytes)) = compress::rows_and_row_bytes(&spec.shape, encoded.len() as u64)
    else {
        return Err(PrepError::Tensor {
            tensor: spec.name.clone(),
            path: path.to_path_buf(),
            reason: format!(
                "{} encoded bytes do not divide into the rows of shape {:?}",
                encoded.len(),
                spec.shape
            ),
        });
    };
    let codec = Codec {
        bytesplit: codec.bytesplit && matches!(spec.dtype, DType::F16 | DType::Bf16),
        ..codec
    };
    let c = compress::compress(
        &encoded,
        row_bytes as usize,
        compress::frame_rows_for(row_bytes) as usize,
        codec,
        path,
        &spec.name,
    )?;
    if c.bytes.len() as f64 > encoded.len() as f64 * (1.0 - MIN_COMPRESS_SAVING) {
        return Ok((spec.clone(), encoded));
    }
    let mut spec = spec.clone();
    spec.compression = Some(c.compression);
    Ok((spec, c.bytes))
}

fn write_stage(
    dir: &Path,
    stage: &Stage,
    locs: &[(usize, usize)],
    shards: &[Option<Shard>],
    compress: Option<Codec>,
    rep: &Reporter,
) -> Result<WrittenFile> {
    let path = dir.join(&stage.file);
    let result = (|| {
        let source = |pt: &PlannedTensor, s: usize| {
            shards[s].as_ref().ok_or_else(|| PrepError::Output {
                dir: dir.to_path_buf(),
                reason: format!(
                    "{}: source of `{}` was already released",
                    stage.file, pt.source
                ),
            })
        };
        let Some(codec) = compress else {
            let mut w = StageWriter::create(&path, stage.kind, stage.layer, &stage.specs())?;
            for (pt, &(s, t)) in stage.tensors.iter().zip(locs) {
                let shard = source(pt, s)?;
                convert_tensor(&mut w, stage, pt, shard, &shard.tensors()[t], rep)?;
            }
            return Ok(w.finish()?);
        };
        // Compressed lengths fix the layout, so the stage is assembled in
        // memory first (at most one stage's stored bytes plus one tensor).
        let mut specs = Vec::with_capacity(stage.tensors.len());
        let mut stored = Vec::with_capacity(stage.tensors.len());
        for (pt, &(s, t)) in stage.tensors.iter().zip(locs) {
            let shard = source(pt, s)?;
            let mut buf = Vec::new();
            convert_tensor(&mut buf, stage, pt, shard, &shard.tensors()[t], rep)?;
            let (spec, bytes) = maybe_compress(&pt.spec, buf, codec, &path)?;
            specs.push(spec);
            stored.push(bytes);
        }
        let mut w = StageWriter::create(&path, stage.kind, stage.layer, &specs)?;
        for (spec, bytes) in specs.iter().zip(&stored) {
            w.write(&spec.name, bytes)?;
        }
        Ok(w.finish()?)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp_path(&path));
    }
    result
}

/// Shifts a codec error's element index from a part of a tensor to the whole tensor.
fn shift(e: CodecError, base: usize) -> CodecError {
    match e {
        CodecError::NonFinite { index, value } => CodecError::NonFinite {
            index: index + base,
            value,
        },
        CodecError::ScaleOverflow { index, absmax } => CodecError::ScaleOverflow {
            index: index + base,
            absmax,
        },
        CodecError::OutOfRange {
            index,
            value,
            dtype,
        } => CodecError::OutOfRange {
            index: index + base,
            value,
            dtype,
        },
        other => other,
    }
}

/// Converts one tensor in chunks of whole rows (bounded memory): each chunk
/// is decoded to f32 (and derived, see [`Derive`]) and encoded in parallel
/// groups of rows, written in order, and its source pages are then released.
/// A tensor split from a fused one reads only its own rows of the source.
fn convert_tensor(
    w: &mut impl TensorSink,
    stage: &Stage,
    pt: &PlannedTensor,
    shard: &Shard,
    info: &TensorInfo,
    rep: &Reporter,
) -> Result<()> {
    let dtype = info.source_dtype().ok_or_else(|| PrepError::Tensor {
        path: shard.path().to_path_buf(),
        tensor: info.name.clone(),
        reason: format!("dtype {} is not supported", info.dtype),
    })?;
    let spec = &pt.spec;
    let (rows, cols) = codec::rows_cols(&spec.shape).unwrap_or((1, 1));
    let derive = |f: &mut [f32]| match pt.derive {
        Derive::PlusOne => f.iter_mut().for_each(|v| *v += 1.0),
        // As `F.normalize(w, dim=-1)`: w / max(‖w‖₂, 1e-12), per row.
        Derive::UnitRows => {
            for row in f.chunks_mut(cols.max(1)) {
                let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
                let scale = (1.0 / norm.max(1e-12)) as f32;
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Derive::Whole | Derive::Rows { .. } | Derive::PairsToHalves { .. } => {}
    };
    let data = shard.data(info);
    // A GGUF's block encoding kept as it is: rows are copied (gathered, for
    // the derivations that reorder rows), each decoded once to refuse
    // non-finite values (SPEC.md §4.6).
    let keep = matches!(dtype, SourceDType::Ggml(_)) && spec.dtype == dtype.kept();
    let check_finite = |bytes: &[u8], base: usize| {
        let mut f = vec![0f32; dtype.elements(bytes.len())];
        convert_slice(dtype, bytes, &mut f);
        codec::check_finite(&f).map_err(|e| shift(e, base))
    };
    // A vector split from a fused one (a fused projection's bias) is small:
    // read whole, its elements picked as the rows of `Derive::Rows`.
    let split_vector = spec.shape.len() == 1 && pt.derive.source_rows().is_some();
    if keep && (split_vector || spec.shape.len() < 2 || pt.derive == Derive::PlusOne) {
        return Err(PrepError::Tensor {
            path: shard.path().to_path_buf(),
            tensor: info.name.clone(),
            reason: format!(
                "a {} tensor cannot be kept as it is for {} `{}`; convert with --quant",
                info.dtype,
                stage.label(),
                spec.name
            ),
        });
    }
    if rows == 0 || cols == 0 || spec.shape.is_empty() || split_vector {
        let mut f = vec![0f32; dtype.elements(data.len())];
        convert_slice(dtype, data, &mut f);
        derive(&mut f);
        if split_vector {
            f = (0..spec.shape[0])
                .map(|r| f[pt.source_rows_at(r).0 as usize])
                .collect();
        }
        let bytes = crate::quant::encode(spec.dtype, &f, &spec.shape, spec.block_size)
            .map_err(|e| encode_error(stage, pt, shard, info, e))?;
        w.put(&spec.name, &bytes)?;
        rep.advance(data.len() as u64);
        return Ok(());
    }
    let row_src = dtype.row_bytes(cols).ok_or_else(|| PrepError::Tensor {
        path: shard.path().to_path_buf(),
        tensor: info.name.clone(),
        reason: format!("rows of {cols} values are not whole {} blocks", info.dtype),
    })?;
    let group_rows = (GROUP_F32_BYTES / (cols * 4)).max(1);
    let chunk_rows = ((CHUNK_F32_BYTES / (cols * 4)) / group_rows).max(1) * group_rows;
    let single_row = spec.shape.len() == 1;
    let mut r0 = 0;
    while r0 < rows {
        let (first, run) = pt.source_rows_at(r0 as u64);
        let n = chunk_rows.min(rows - r0).min(run as usize);
        let at = first as usize * row_src;
        let src = &data[at..at + n * row_src];
        let parts: Vec<Vec<u8>> = src
            .par_chunks(group_rows * row_src)
            .enumerate()
            .map(|(g, bytes)| {
                let g_rows = bytes.len() / row_src;
                if keep {
                    check_finite(bytes, (r0 + g * group_rows) * cols)?;
                    return Ok(bytes.to_vec());
                }
                let mut f = vec![0f32; g_rows * cols];
                convert_slice(dtype, bytes, &mut f);
                derive(&mut f);
                let shape = if single_row {
                    spec.shape.clone()
                } else {
                    vec![g_rows as u64, cols as u64]
                };
                crate::quant::encode(spec.dtype, &f, &shape, spec.block_size)
                    .map_err(|e| shift(e, (r0 + g * group_rows) * cols))
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| encode_error(stage, pt, shard, info, e))?;
        for p in &parts {
            w.put(&spec.name, p)?;
        }
        shard.release(info.start + at as u64, src.len() as u64);
        rep.advance(src.len() as u64);
        r0 += n;
    }
    Ok(())
}

fn encode_error(
    stage: &Stage,
    pt: &PlannedTensor,
    shard: &Shard,
    info: &TensorInfo,
    e: CodecError,
) -> PrepError {
    PrepError::Tensor {
        path: shard.path().to_path_buf(),
        tensor: info.name.clone(),
        reason: format!(
            "cannot encode as {} for {} `{}`: {e}",
            pt.spec.dtype,
            stage.label(),
            pt.spec.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_errors() {
        let e = shift(
            CodecError::NonFinite {
                index: 3,
                value: f32::INFINITY,
            },
            100,
        );
        assert_eq!(
            e,
            CodecError::NonFinite {
                index: 103,
                value: f32::INFINITY
            }
        );
        let e = shift(CodecError::BlockSize(7), 100);
        assert_eq!(e, CodecError::BlockSize(7));
    }

    #[test]
    fn space_need_counts_frees_after_the_last_stage_fed() {
        use crate::plan::tests::tiny_arch;
        let d = tempfile::tempdir().unwrap();
        let src_dir = d.path().join("src");
        let out = d.path().join("out");
        std::fs::create_dir_all(&src_dir).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let shard_a = src_dir.join("a.safetensors");
        let shard_b = src_dir.join("b.safetensors");
        std::fs::write(&shard_a, vec![0u8; 100_000]).unwrap();
        std::fs::write(&shard_b, vec![0u8; 7_000]).unwrap();
        std::fs::write(src_dir.join("tokenizer.json"), vec![0u8; 500]).unwrap();
        let (source, _) =
            Source::resolve(src_dir.to_str().unwrap(), None, || unreachable!()).unwrap();
        let quant = QuantPolicy {
            weights: strata_format::DType::Nf4,
            block_size: 64,
            compress: None,
            keep_source: false,
        };
        let stages = plan(&tiny_arch(), &quant);
        let work: Vec<Work> = stages.iter().map(|_| Work::Write(Vec::new())).collect();
        let sizes: Vec<u64> = stages.iter().map(|s| s.file_size().unwrap()).collect();
        let tokenizer_paths = [("tokenizer.json", src_dir.join("tokenizer.json"))];
        let shard_paths = [Some(shard_a), Some(shard_b)];
        let mut check = SpaceCheck {
            dir: &out,
            stages: &stages,
            work: &work,
            tokenizer_paths: &tokenizer_paths,
            generated_bytes: 0,
            shard_paths: &shard_paths,
            last_use: &[1, 3],
            source: &source,
            delete: false,
        };
        let total: u64 = sizes.iter().sum();
        let tail = METADATA_RESERVE + 500;
        assert_eq!(
            check.need().unwrap(),
            Need {
                peak: total + tail,
                stage_bytes: total,
                freed: 0,
                other_fs: false
            }
        );
        check.delete = true;
        let want = disk::peak_need(&sizes, &[0, 100_000, 0, 7_000], tail);
        assert_eq!(
            check.need().unwrap(),
            Need {
                peak: want,
                stage_bytes: total,
                freed: 107_000,
                other_fs: false
            }
        );
        assert!(want < total + tail);
        let mut resumed: Vec<Work> = stages.iter().map(|_| Work::Write(Vec::new())).collect();
        resumed[0] = Work::Reuse(StageRecord {
            bytes: sizes[0],
            sha256: String::new(),
        });
        check.work = &resumed;
        assert_eq!(check.need().unwrap().stage_bytes, total - sizes[0]);
        check.run().unwrap();
        let e = PrepError::DiskSpace {
            dir: out.clone(),
            need: 3 << 30,
            available: 1 << 30,
            detail: " (x)".into(),
        }
        .to_string();
        assert!(
            e.contains("3.00 GiB") && e.contains("1073741824 bytes"),
            "{e}"
        );
    }

    #[test]
    fn summary_text() {
        let s = Summary {
            out: "/o".into(),
            source: "/m".into(),
            revision: None,
            quant: "nf4".into(),
            block_size: Some(64),
            already_complete: false,
            stages_written: 3,
            stages_reused: 1,
            bytes_in: 4 << 20,
            bytes_out: 1 << 20,
            container_bytes: 2 << 20,
            ratio: 0.25,
            seconds: 2.0,
            mb_per_s: 2.1,
            deleted: vec!["a".into()],
            bytes_freed: 4 << 20,
        };
        let h = s.human();
        assert!(
            h.contains("ratio 0.250") && h.contains("freeing 4.00 MiB"),
            "{h}"
        );
        let done = Summary {
            already_complete: true,
            ..s
        };
        assert!(done.human().contains("already holds"));
    }
}
