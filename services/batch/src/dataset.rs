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

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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

/// The master dataset on a local directory.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
}

impl Dataset {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, DatasetError> {
        let root = root.into();
        fs::create_dir_all(root.join("_manifests")).map_err(io_err("create", &root))?;
        Ok(Dataset { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn manifest_path(&self, topic: &str, partition: i32) -> PathBuf {
        self.root
            .join("_manifests")
            .join(format!("{topic}+{partition}.json"))
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
        let path = self.manifest_path(topic, partition);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| DatasetError::Manifest { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Every manifest, ordered by topic and partition.
    pub fn manifests(&self) -> Result<Vec<Manifest>, DatasetError> {
        let dir = self.root.join("_manifests");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
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

    /// Write `bytes` to `rel` atomically: a temporary file in the same directory, synced, then
    /// renamed over the name, and the directory synced.
    pub fn put(
        &self,
        rel: &str,
        write: impl FnOnce(&mut fs::File) -> io::Result<()>,
    ) -> Result<u64, DatasetError> {
        let path = self.root.join(rel);
        put_atomic(&path, write)
    }

    /// Commit a partition's manifest (after its files).
    pub fn put_manifest(&self, m: &Manifest) -> Result<(), DatasetError> {
        let path = self.manifest_path(&m.topic, m.partition);
        let json = serde_json::to_vec(m).map_err(|source| DatasetError::Manifest {
            path: path.clone(),
            source,
        })?;
        put_atomic(&path, |f| io::Write::write_all(f, &json)).map(|_| ())
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
        let mut removed = 0;
        for dir in self.date_dirs()? {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", &dir)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err("list", &dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let ours = name.starts_with(&prefix) || name.starts_with(&tmp_prefix);
                if !ours {
                    continue;
                }
                let rel = entry
                    .path()
                    .strip_prefix(&self.root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if !listed.contains(rel.as_str()) {
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
    /// manifests they came from (one consistent snapshot for a recompute).
    pub fn snapshot(&self) -> Result<Snapshot, DatasetError> {
        let manifests = self.manifests()?;
        let mut files: BTreeMap<Kind, Vec<PathBuf>> = BTreeMap::new();
        for m in &manifests {
            let mut fs: Vec<&FileEntry> = m.files.iter().collect();
            fs.sort_by_key(|f| (f.kind, f.first));
            for f in fs {
                files
                    .entry(f.kind)
                    .or_default()
                    .push(self.root.join(&f.path));
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
