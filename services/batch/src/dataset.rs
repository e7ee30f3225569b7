//! The master dataset: every archived event, unchanged, in immutable Parquet files.
//!
//! ```text
//! {root}/kind={kind}/date={YYYY-MM-DD}/{topic}+{partition}+{first:020}+{last:020}.parquet
//! {root}/_manifests/{topic}+{partition}.json
//! ```
//!
//! Files are partitioned by kind and event date (UTC); a file holds one Kafka partition's records
//! of that kind and date within the offset range in its name (`+` cannot occur in a topic name).
//! One **manifest** per Kafka partition lists the partition's files and the next offset to
//! archive. A flush writes its files first, each to a temporary name then renamed, then the
//! manifest the same way: the manifest is the commit. A file the manifest does not list is an
//! orphan of a crash between the two and is deleted when the partition is next assigned; readers
//! (the recompute) only read files the manifests list, so an orphan is never counted.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult, UpdateVersion,
};

use serde::{Deserialize, Serialize};

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    SensorReading,
    Payment,
    FraudLabel,
    /// Records that did not decode as their topic's event (kept with the reason, dated by their
    /// Kafka timestamp).
    Invalid,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::SensorReading,
        Kind::Payment,
        Kind::FraudLabel,
        Kind::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SensorReading => "sensor_reading",
            Kind::Payment => "payment",
            Kind::FraudLabel => "fraud_label",
            Kind::Invalid => "invalid",
        }
    }
}

/// One file of a partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the dataset root.
    pub path: String,
    pub kind: Kind,
    /// Event date, `YYYY-MM-DD` (UTC).
    pub date: String,
    /// First and last offset of the records in the file (inclusive).
    pub first: i64,
    pub last: i64,
    pub rows: u64,
    pub bytes: u64,
    /// Smallest and largest event time of the file's valid events, epoch ms.
    pub min_ts: Option<i64>,
    pub max_ts: Option<i64>,
}

/// The committed state of one Kafka partition's archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub topic: String,
    pub partition: i32,
    /// The next offset to archive: every record before it is in exactly one listed file.
    pub next_offset: i64,
    /// Largest event time archived from this partition (valid events).
    pub max_ts: Option<i64>,
    /// In offset order per kind and date.
    pub files: Vec<FileEntry>,
    /// Files replaced by a compaction and when (epoch ms): kept until no recompute can still be
    /// reading a snapshot that lists them, then deleted.
    #[serde(default)]
    pub retired: Vec<(String, i64)>,
}

impl Manifest {
    pub fn new(topic: &str, partition: i32) -> Self {
        Manifest {
            topic: topic.to_owned(),
            partition,
            next_offset: 0,
            max_ts: None,
            files: Vec::new(),
            retired: Vec::new(),
        }
    }

    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// Why a dataset operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the manifest of {topic}/{partition} was replaced by another writer")]
    Fenced { topic: String, partition: i32 },
    #[error("unreadable manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("parquet {path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: polars::error::PolarsError,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DatasetError + use<> {
    let path = path.to_owned();
    move |source| DatasetError::Io { what, path, source }
}

/// Where the dataset lives: a local directory, or an S3-compatible bucket (`s3://bucket/prefix`)
/// through `object_store`, with the files a recompute reads copied to a local cache.
#[derive(Clone)]
enum Store {
    Local,
    Object(Arc<ObjectBackend>),
}

struct ObjectBackend {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// object_store is async and the dataset's callers are threads: its futures run here
    /// (always `Some` until dropped).
    runtime: Option<tokio::runtime::Runtime>,
    /// The version of each manifest this process last read or wrote (`None`: absent), so a
    /// manifest is replaced only if nobody else replaced it since (conditional put).
    versions: Mutex<HashMap<String, Option<UpdateVersion>>>,
}

impl Drop for ObjectBackend {
    fn drop(&mut self) {
        // a runtime dropped normally blocks, which panics inside another runtime
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl ObjectBackend {
    fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let handle = self
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the backend")
            .spawn(f);
        futures::executor::block_on(handle).expect("object store task panicked")
    }

    fn key(&self, rel: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{rel}", self.prefix.as_ref()).trim_start_matches('/'))
    }

    fn rel(&self, key: &ObjectPath) -> String {
        let k = key.as_ref();
        let p = self.prefix.as_ref();
        if p.is_empty() {
            k.to_owned()
        } else {
            k.strip_prefix(p)
                .map(|r| r.trim_start_matches('/').to_owned())
                .unwrap_or_else(|| k.to_owned())
        }
    }

    fn err(&self, what: &'static str, rel: &str, e: object_store::Error) -> DatasetError {
        DatasetError::Io {
            what,
            path: PathBuf::from(format!("{}/{rel}", self.url.trim_end_matches('/'))),
            source: io::Error::other(e),
        }
    }

    fn get(&self, rel: &str) -> Result<Option<(Vec<u8>, UpdateVersion)>, DatasetError> {
        let store = self.store.clone();
        let key = self.key(rel);
        let got = self.run(async move {
            let r = store.get(&key).await?;
            let version = UpdateVersion {
                e_tag: r.meta.e_tag.clone(),
                version: r.meta.version.clone(),
            };
            let bytes = r.bytes().await?;
            Ok::<_, object_store::Error>((bytes.to_vec(), version))
        });
        match got {
            Ok(v) => Ok(Some(v)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("read", rel, e)),
        }
    }

    fn put(
        &self,
        rel: &str,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> Result<PutResult, object_store::Error> {
        let store = self.store.clone();
        let key = self.key(rel);
        self.run(async move {
            store
                .put_opts(&key, PutPayload::from(bytes), PutOptions::from(mode))
                .await
        })
    }

    /// Every object under `rel_prefix` (relative names).
    fn list(&self, rel_prefix: &str) -> Result<Vec<String>, DatasetError> {
        let store = self.store.clone();
        let key = self.key(rel_prefix);
        let listed = self.run(async move {
            use futures::TryStreamExt;
            store
                .list(Some(&key))
                .map_ok(|m| m.location)
                .try_collect::<Vec<_>>()
                .await
        });
        let keys = listed.map_err(|e| self.err("list", rel_prefix, e))?;
        Ok(keys.iter().map(|k| self.rel(k)).collect())
    }

    fn delete(&self, rel: &str) -> Result<(), DatasetError> {
        let store = self.store.clone();
        let key = self.key(rel);
        match self.run(async move { store.delete(&key).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", rel, e)),
        }
    }
}

/// The master dataset.
#[derive(Clone)]
pub struct Dataset {
    /// The directory (local), or the local cache of the files a recompute reads (object store).
    root: PathBuf,
    store: Store,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dataset({})", self.location())
    }
}

/// Is `location` an object-store URL rather than a directory?
pub fn is_object_url(location: &Path) -> bool {
    location.to_str().is_some_and(|s| s.starts_with("s3://"))
}

impl Dataset {
    /// Open the dataset at `location`: a directory (created if missing) or `s3://bucket/prefix`
    /// (credentials, region and endpoint from the standard `AWS_*` variables, e.g.
    /// `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP=true` for a local S3-compatible store); the files a
    /// recompute reads are then cached under `{tmp}/lambdalake-dataset-cache/`.
    pub fn open(location: impl Into<PathBuf>) -> Result<Self, DatasetError> {
        let location = location.into();
        if is_object_url(&location) {
            let url = location.to_string_lossy().into_owned();
            let cache = std::env::temp_dir()
                .join("lambdalake-dataset-cache")
                .join(url.trim_start_matches("s3://").replace('/', "_"));
            return Self::open_object(&url, cache);
        }
        fs::create_dir_all(location.join("_manifests")).map_err(io_err("create", &location))?;
        Ok(Dataset {
            root: location,
            store: Store::Local,
        })
    }

    /// Open `s3://bucket/prefix`, caching read files under `cache`.
    pub fn open_object(url: &str, cache: PathBuf) -> Result<Self, DatasetError> {
        let bad = |e: String| DatasetError::Io {
            what: "open",
            path: PathBuf::from(url),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3:// URL".to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket in the URL".to_owned()));
        }
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("object-store")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the object store runtime: {e}")))?;
        fs::create_dir_all(&cache).map_err(io_err("create", &cache))?;
        Ok(Dataset {
            root: cache,
            store: Store::Object(Arc::new(ObjectBackend {
                url: url.trim_end_matches('/').to_owned(),
                store: Arc::new(store),
                prefix: ObjectPath::from(prefix.trim_matches('/')),
                runtime: Some(runtime),
                versions: Mutex::new(HashMap::new()),
            })),
        })
    }

    /// Where the dataset is, for people: the directory or the URL.
    pub fn location(&self) -> String {
        match &self.store {
            Store::Local => self.root.display().to_string(),
            Store::Object(o) => o.url.clone(),
        }
    }

    /// The local directory (object store: the cache of read files).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The local path of `rel` (object store: its place in the cache, present once read).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn manifest_rel(topic: &str, partition: i32) -> String {
        format!("_manifests/{topic}+{partition}.json")
    }

    /// The file name of a partition's records of one kind and date.
    pub fn file_path(
        kind: Kind,
        date: &str,
        topic: &str,
        partition: i32,
        first: i64,
        last: i64,
    ) -> String {
        format!(
            "kind={}/date={date}/{topic}+{partition}+{first:020}+{last:020}.parquet",
            kind.as_str()
        )
    }

    /// A partition's manifest; `None` when it was never archived. An unreadable manifest is an
    /// error: starting over would archive everything twice.
    pub fn manifest(&self, topic: &str, partition: i32) -> Result<Option<Manifest>, DatasetError> {
        let rel = Self::manifest_rel(topic, partition);
        let path = self.root.join(&rel);
        let bytes = match &self.store {
            Store::Local => match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err("read", &path)(e)),
            },
            Store::Object(o) => {
                let got = o.get(&rel)?;
                let mut versions = o.versions.lock().unwrap_or_else(|e| e.into_inner());
                match got {
                    Some((bytes, version)) => {
                        versions.insert(rel.clone(), Some(version));
                        bytes
                    }
                    None => {
                        versions.insert(rel.clone(), None);
                        return Ok(None);
                    }
                }
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| DatasetError::Manifest { path, source })
    }

    /// Every manifest, ordered by topic and partition.
    pub fn manifests(&self) -> Result<Vec<Manifest>, DatasetError> {
        let names: Vec<String> = match &self.store {
            Store::Local => {
                let dir = self.root.join("_manifests");
                let mut names = Vec::new();
                for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
                    let entry = entry.map_err(io_err("list", &dir))?;
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
                names
            }
            Store::Object(o) => o
                .list("_manifests")?
                .into_iter()
                .filter_map(|r| r.strip_prefix("_manifests/").map(str::to_owned))
                .collect(),
        };
        let mut out = Vec::new();
        for name in names {
            let Some(stem) = name.strip_suffix(".json") else {
                continue; // a temporary file
            };
            let Some((topic, p)) = stem.rsplit_once('+') else {
                continue;
            };
            let Ok(p) = p.parse::<i32>() else { continue };
            if let Some(m) = self.manifest(topic, p)? {
                out.push(m);
            }
        }
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(out)
    }

    /// Write a data file at `rel` atomically. Local: a temporary file in the same directory,
    /// synced, then renamed over the name, and the directory synced. Object store: one PUT (an
    /// object appears whole or not at all). Returns its size.
    pub fn put(
        &self,
        rel: &str,
        write: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
    ) -> Result<u64, DatasetError> {
        match &self.store {
            Store::Local => put_atomic(&self.root.join(rel), |f| write(f)),
            Store::Object(o) => {
                let mut buf = Vec::new();
                write(&mut buf).map_err(io_err("write", &self.root.join(rel)))?;
                let n = buf.len() as u64;
                o.put(rel, buf, PutMode::Overwrite)
                    .map_err(|e| o.err("write", rel, e))?;
                Ok(n)
            }
        }
    }

    /// Commit a partition's manifest (after its files). On an object store the put is
    /// conditional on the version this process last saw: [`DatasetError::Fenced`] when another
    /// writer committed in between.
    pub fn put_manifest(&self, m: &Manifest) -> Result<(), DatasetError> {
        let rel = Self::manifest_rel(&m.topic, m.partition);
        let path = self.root.join(&rel);
        let json = serde_json::to_vec(m).map_err(|source| DatasetError::Manifest {
            path: path.clone(),
            source,
        })?;
        match &self.store {
            Store::Local => put_atomic(&path, |f| io::Write::write_all(f, &json)).map(|_| ()),
            Store::Object(o) => {
                let known = o
                    .versions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&rel)
                    .cloned();
                let mode = match known {
                    Some(Some(v)) => PutMode::Update(v),
                    Some(None) => PutMode::Create,
                    None => PutMode::Overwrite,
                };
                match o.put(&rel, json, mode) {
                    Ok(r) => {
                        o.versions.lock().unwrap_or_else(|e| e.into_inner()).insert(
                            rel,
                            Some(UpdateVersion {
                                e_tag: r.e_tag,
                                version: r.version,
                            }),
                        );
                        Ok(())
                    }
                    Err(
                        object_store::Error::Precondition { .. }
                        | object_store::Error::AlreadyExists { .. },
                    ) => Err(DatasetError::Fenced {
                        topic: m.topic.clone(),
                        partition: m.partition,
                    }),
                    Err(e) => Err(o.err("write", &rel, e)),
                }
            }
        }
    }

    /// Delete a data file (missing is fine).
    pub fn remove(&self, rel: &str) -> Result<(), DatasetError> {
        match &self.store {
            Store::Local => {
                let path = self.root.join(rel);
                match fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(io_err("remove", &path)(e)),
                }
            }
            Store::Object(o) => {
                let _ = fs::remove_file(self.root.join(rel));
                o.delete(rel)
            }
        }
    }

    /// The bytes of the file `rel` (object store: fetched, not cached — the cache belongs to
    /// recomputes).
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, DatasetError> {
        match &self.store {
            Store::Local => {
                let path = self.root.join(rel);
                fs::read(&path).map_err(io_err("read", &path))
            }
            Store::Object(o) => o.get(rel)?.map(|(b, _)| b).ok_or_else(|| DatasetError::Io {
                what: "read",
                path: self.root.join(rel),
                source: io::Error::new(io::ErrorKind::NotFound, "listed file missing"),
            }),
        }
    }

    /// A local path holding the file `rel` (object store: downloaded to the cache unless there;
    /// files never change once written, so a cached copy is the file).
    pub fn local(&self, rel: &str) -> Result<PathBuf, DatasetError> {
        let path = self.root.join(rel);
        if let Store::Object(o) = &self.store
            && !path.exists()
        {
            let (bytes, _) = o.get(rel)?.ok_or_else(|| DatasetError::Io {
                what: "read",
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "listed file missing"),
            })?;
            put_atomic(&path, |f| io::Write::write_all(f, &bytes))?;
        }
        Ok(path)
    }

    /// Delete the files of `topic`/`partition` that `m` does not list (orphans of a crash between
    /// a file and its manifest, or of a compaction) and leftover temporary files. Returns how
    /// many were deleted.
    pub fn remove_orphans(
        &self,
        topic: &str,
        partition: i32,
        m: Option<&Manifest>,
    ) -> Result<usize, DatasetError> {
        let listed: std::collections::HashSet<&str> = m
            .map(|m| {
                m.files
                    .iter()
                    .map(|f| f.path.as_str())
                    .chain(m.retired.iter().map(|(p, _)| p.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let prefix = format!("{topic}+{partition}+");
        let tmp_prefix = format!(".{prefix}");
        let ours = |rel: &str| {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            name.starts_with(&prefix) || name.starts_with(&tmp_prefix)
        };
        let mut removed = 0;
        if let Store::Object(o) = &self.store {
            for kind in Kind::ALL {
                for rel in o.list(&format!("kind={}", kind.as_str()))? {
                    if ours(&rel) && !listed.contains(rel.as_str()) {
                        o.delete(&rel)?;
                        removed += 1;
                    }
                }
            }
            return Ok(removed);
        }
        for dir in self.date_dirs()? {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", &dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err("list", &dir))?;
                let rel = entry
                    .path()
                    .strip_prefix(&self.root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if ours(&rel) && !listed.contains(rel.as_str()) {
                    let path = entry.path();
                    match fs::remove_file(&path) {
                        Ok(()) => removed += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err("remove", &path)(e)),
                    }
                }
            }
        }
        Ok(removed)
    }

    fn date_dirs(&self) -> Result<Vec<PathBuf>, DatasetError> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let dir = self.root.join(format!("kind={}", kind.as_str()));
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", &dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err("list", &dir))?;
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(entry.path());
                }
            }
        }
        Ok(out)
    }

    /// The files every manifest lists, by kind, in (topic, partition, offset) order, and the
    /// manifests they came from (one consistent snapshot for a recompute). On an object store
    /// the listed files are downloaded to the cache (those already there are kept; cached files
    /// no manifest lists any more are deleted).
    pub fn snapshot(&self) -> Result<Snapshot, DatasetError> {
        let manifests = self.manifests()?;
        let mut files: BTreeMap<Kind, Vec<PathBuf>> = BTreeMap::new();
        let mut wanted = std::collections::HashSet::new();
        for m in &manifests {
            let mut fs: Vec<&FileEntry> = m.files.iter().collect();
            fs.sort_by_key(|f| (f.kind, f.first));
            for f in fs {
                files.entry(f.kind).or_default().push(self.local(&f.path)?);
                wanted.insert(self.root.join(&f.path));
            }
        }
        if matches!(self.store, Store::Object(_)) {
            for dir in self.date_dirs()? {
                for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))?.flatten() {
                    if !wanted.contains(&entry.path()) {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
        }
        Ok(Snapshot { manifests, files })
    }
}

/// What a recompute reads.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub manifests: Vec<Manifest>,
    pub files: BTreeMap<Kind, Vec<PathBuf>>,
}

impl Snapshot {
    pub fn files(&self, kind: Kind) -> &[PathBuf] {
        self.files.get(&kind).map_or(&[], Vec::as_slice)
    }
}

fn put_atomic(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> Result<u64, DatasetError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        let bytes = f.metadata()?.len();
        fs::rename(&tmp, path)?;
        // the rename is durable once the directory is
        fs::File::open(dir)?.sync_all()?;
        Ok(bytes)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("write", path)(e)
    })
}
