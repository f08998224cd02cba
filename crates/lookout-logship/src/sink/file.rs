//! The `file:DIR` sink: JSON lines in `DIR/lookout-YYYY-MM-DD.N.jsonl`.
//!
//! - One file at a time is written: today's (UTC) with the highest `N`. A new day starts
//!   `N = 0`; a file that would grow past `max_file_bytes` is closed and `N + 1` started.
//! - A closed file is compressed to `….jsonl.gz` (written to `….gz.tmp`, synced, renamed, then
//!   the original removed, so a crash leaves either file complete).
//! - Retention: closed files older than `retain_days` days, and beyond the newest
//!   `retain_files`, are deleted.
//! - Every batch is appended with one write and `fdatasync`ed before it is acknowledged; a write
//!   that fails is cut back off the file, so the retry does not follow half a line. The file is
//!   opened for each batch, so a directory that was moved or recreated is written anew.
//! - On start, the writer continues today's newest uncompressed file and compresses any other
//!   uncompressed file it finds (left by a crash).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
};

use flate2::{Compression, write::GzEncoder};
use time::{Date, OffsetDateTime, macros::format_description};
use tracing::{info, warn};

use crate::{
    SinkError, metrics as m,
    record::{Entry, json_line},
};

const PREFIX: &str = "lookout-";
const PLAIN: &str = ".jsonl";
const COMPRESSED: &str = ".jsonl.gz";
const TMP: &str = ".tmp";

/// Where and how a file sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// The directory, created if missing.
    pub dir: PathBuf,
    /// Size at which a file is closed and the next one started (a single longer line still
    /// gets a file of its own).
    pub max_file_bytes: u64,
    /// Closed files kept, newest first; `None` for no count limit.
    pub retain_files: Option<usize>,
    /// Days of closed files kept (by the date in their name); `None` for no age limit.
    pub retain_days: Option<u32>,
}

/// The file sink.
#[derive(Debug)]
pub struct FileSink {
    name: String,
    config: FileSinkConfig,
    /// `None` only while a write is in progress on the blocking pool, or after it panicked.
    writer: Option<FileWriter>,
}

impl FileSink {
    /// Creates the directory and opens the writer.
    pub async fn open(config: FileSinkConfig) -> Result<Self, SinkError> {
        let name = format!("file:{}", config.dir.display());
        let c = config.clone();
        let writer = tokio::task::spawn_blocking(move || FileWriter::open(c))
            .await
            .map_err(|e| SinkError::Task(e.to_string()))??;
        Ok(Self { name, config, writer: Some(writer) })
    }

    /// `file:DIR`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Appends a batch (today's date in UTC decides the file), on the blocking pool.
    pub async fn write(&mut self, entries: &[&Entry]) -> Result<(), SinkError> {
        let lines: Vec<String> = entries.iter().map(|e| json_line(e)).collect();
        let writer = self.writer.take();
        let config = self.config.clone();
        let today = OffsetDateTime::now_utc().date();
        let (writer, result) = tokio::task::spawn_blocking(move || {
            let mut writer = match writer {
                Some(w) => w,
                None => match FileWriter::open(config) {
                    Ok(w) => w,
                    Err(e) => return (None, Err(e)),
                },
            };
            let result = writer.write(&lines, today);
            (Some(writer), result)
        })
        .await
        .map_err(|e| SinkError::Task(e.to_string()))?;
        self.writer = writer;
        result
    }
}

/// A log file's place in the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    date: Date,
    n: u32,
}

#[derive(Debug)]
struct LogFile {
    key: Key,
    compressed: bool,
    path: PathBuf,
}

/// The synchronous part of the file sink.
#[derive(Debug)]
pub struct FileWriter {
    config: FileSinkConfig,
    /// The file being written.
    current: Option<Key>,
}

impl FileWriter {
    /// Creates the directory and removes temporary files of an interrupted compression.
    pub fn open(config: FileSinkConfig) -> Result<Self, SinkError> {
        fs::create_dir_all(&config.dir).map_err(io_err("create directory", &config.dir))?;
        let entries = fs::read_dir(&config.dir).map_err(io_err("list", &config.dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(PREFIX) && name.ends_with(TMP) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self { config, current: None })
    }

    /// Appends `lines` (without their newlines) to the files of `today`.
    pub fn write(&mut self, lines: &[String], today: Date) -> Result<(), SinkError> {
        let mut current = match self.current {
            Some(key) if key.date == today => key,
            _ => self.start(today)?,
        };
        let max = self.config.max_file_bytes.max(1);
        let mut path = self.path_of(current, false);
        let mut size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut chunk = Vec::new();
        for line in lines {
            let len = line.len() as u64 + 1;
            if size > 0 && size + len > max {
                if !chunk.is_empty() {
                    append(&path, &chunk)?;
                    chunk.clear();
                }
                current = Key { date: today, n: current.n + 1 };
                self.current = Some(current);
                self.close_others(today)?;
                path = self.path_of(current, false);
                size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            }
            chunk.extend_from_slice(line.as_bytes());
            chunk.push(b'\n');
            size += len;
        }
        if !chunk.is_empty() {
            append(&path, &chunk)?;
        }
        Ok(())
    }

    /// Picks today's file: the newest uncompressed one, or the next number.
    fn start(&mut self, today: Date) -> Result<Key, SinkError> {
        let files = self.list()?;
        let last =
            files.iter().filter(|f| f.key.date == today).max_by_key(|f| (f.key, !f.compressed));
        let key = match last {
            Some(f) if !f.compressed => f.key,
            Some(f) => Key { date: today, n: f.key.n + 1 },
            None => Key { date: today, n: 0 },
        };
        self.current = Some(key);
        self.close_others(today)?;
        Ok(key)
    }

    /// Compresses every uncompressed file but the current one, then applies retention.
    fn close_others(&mut self, today: Date) -> Result<(), SinkError> {
        for f in self.list()? {
            if f.compressed || Some(f.key) == self.current {
                continue;
            }
            match compress(&f.path) {
                Ok(gz) => {
                    metrics::counter!(m::FILES_ROTATED).increment(1);
                    info!(file = %gz.display(), "log file closed and compressed");
                }
                // The records are safe in the plain file; compression is tried again later.
                Err(e) => warn!(file = %f.path.display(), error = %e, "cannot compress log file"),
            }
        }
        self.retain(today)
    }

    /// Deletes closed files beyond the age and count limits.
    fn retain(&mut self, today: Date) -> Result<(), SinkError> {
        let mut closed: Vec<LogFile> =
            self.list()?.into_iter().filter(|f| Some(f.key) != self.current).collect();
        closed.sort_by_key(|f| f.key);
        let oldest_kept = self
            .config
            .retain_days
            .and_then(|d| today.checked_sub(time::Duration::days(i64::from(d))));
        let mut doomed: Vec<LogFile> = Vec::new();
        if let Some(oldest) = oldest_kept {
            let young = closed.partition_point(|f| f.key.date < oldest);
            doomed.extend(closed.drain(..young));
        }
        if let Some(keep) = self.config.retain_files {
            let excess = closed.len().saturating_sub(keep);
            doomed.extend(closed.drain(..excess));
        }
        for f in doomed {
            match fs::remove_file(&f.path) {
                Ok(()) => {
                    metrics::counter!(m::FILES_DELETED).increment(1);
                    info!(file = %f.path.display(), "old log file deleted");
                }
                Err(e) => warn!(file = %f.path.display(), error = %e, "cannot delete old log file"),
            }
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<LogFile>, SinkError> {
        let dir = &self.config.dir;
        let entries = fs::read_dir(dir).map_err(io_err("list", dir))?;
        Ok(entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let (key, compressed) = parse_name(&name.to_string_lossy())?;
                Some(LogFile { key, compressed, path: e.path() })
            })
            .collect())
    }

    fn path_of(&self, key: Key, compressed: bool) -> PathBuf {
        self.config.dir.join(file_name(key, compressed))
    }
}

fn file_name(key: Key, compressed: bool) -> String {
    let d = key.date;
    let ext = if compressed { COMPRESSED } else { PLAIN };
    format!("{PREFIX}{:04}-{:02}-{:02}.{}{ext}", d.year(), u8::from(d.month()), d.day(), key.n)
}

/// `lookout-2026-05-01.3.jsonl[.gz]` → (2026-05-01, 3), compressed.
fn parse_name(name: &str) -> Option<(Key, bool)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (stem, compressed) = match rest.strip_suffix(COMPRESSED) {
        Some(stem) => (stem, true),
        None => (rest.strip_suffix(PLAIN)?, false),
    };
    let (date, n) = stem.rsplit_once('.')?;
    let date = Date::parse(date, format_description!("[year]-[month]-[day]")).ok()?;
    Some((Key { date, n: n.parse().ok()? }, compressed))
}

/// Appends and syncs; on failure, cuts the file back to its length before.
fn append(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let mut file =
        OpenOptions::new().create(true).append(true).open(path).map_err(io_err("open", path))?;
    let before = file.metadata().map_err(io_err("stat", path))?.len();
    if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_data()) {
        let _ = file.set_len(before);
        return Err(io_err("write", path)(e));
    }
    if before == 0
        && let Some(dir) = path.parent()
    {
        // Make the new file's directory entry durable too.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Gzips `path` to `path.gz` and removes `path`.
fn compress(path: &Path) -> io::Result<PathBuf> {
    let mut gz = path.as_os_str().to_owned();
    gz.push(".gz");
    let gz = PathBuf::from(gz);
    let mut tmp = gz.as_os_str().to_owned();
    tmp.push(TMP);
    let tmp = PathBuf::from(tmp);
    let mut input = File::open(path)?;
    let mut encoder = GzEncoder::new(BufWriter::new(File::create(&tmp)?), Compression::default());
    io::copy(&mut input, &mut encoder)?;
    let out = encoder.finish()?.into_inner().map_err(io::IntoInnerError::into_error)?;
    out.sync_all()?;
    fs::rename(&tmp, &gz)?;
    fs::remove_file(path)?;
    Ok(gz)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SinkError {
    let path = path.to_owned();
    move |source| SinkError::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use flate2::read::GzDecoder;
    use time::macros::date;

    use super::*;

    fn config(dir: &Path, max: u64) -> FileSinkConfig {
        FileSinkConfig {
            dir: dir.to_owned(),
            max_file_bytes: max,
            retain_files: None,
            retain_days: None,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn read(path: &Path) -> String {
        let mut text = String::new();
        if path.to_string_lossy().ends_with(".gz") {
            GzDecoder::new(File::open(path).unwrap()).read_to_string(&mut text).unwrap();
        } else {
            File::open(path).unwrap().read_to_string(&mut text).unwrap();
        }
        text
    }

    /// Every line of every file, in file order.
    fn all_lines(dir: &Path) -> Vec<String> {
        let mut files: Vec<(Key, PathBuf)> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                let (key, _) = parse_name(&e.file_name().to_string_lossy())?;
                Some((key, e.path()))
            })
            .collect();
        files.sort();
        files
            .iter()
            .flat_map(|(_, p)| read(p).lines().map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    fn lines(from: usize, to: usize) -> Vec<String> {
        (from..to)
            .map(|i| format!("{{\"n\":{i:04},\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}"))
            .collect()
    }

    #[test]
    fn files_rotate_by_size_and_closed_files_are_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FileWriter::open(config(dir.path(), 200)).unwrap();
        let day = date!(2026 - 05 - 01);
        // Each line is 54 bytes with its newline: three fit in 200 bytes.
        for batch in 0..4 {
            w.write(&lines(batch * 5, batch * 5 + 5), day).unwrap();
        }
        assert_eq!(
            names(dir.path()),
            [
                "lookout-2026-05-01.0.jsonl.gz",
                "lookout-2026-05-01.1.jsonl.gz",
                "lookout-2026-05-01.2.jsonl.gz",
                "lookout-2026-05-01.3.jsonl.gz",
                "lookout-2026-05-01.4.jsonl.gz",
                "lookout-2026-05-01.5.jsonl.gz",
                "lookout-2026-05-01.6.jsonl",
            ]
        );
        for name in &names(dir.path()) {
            let size = read(&dir.path().join(name)).len();
            assert!(size <= 200, "{name} holds {size} bytes");
        }
        assert_eq!(all_lines(dir.path()), lines(0, 20), "nothing lost, nothing reordered");
    }

    #[test]
    fn a_new_day_starts_a_new_file_and_a_restart_continues_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FileWriter::open(config(dir.path(), 1 << 20)).unwrap();
        w.write(&lines(0, 2), date!(2026 - 05 - 01)).unwrap();
        w.write(&lines(2, 4), date!(2026 - 05 - 02)).unwrap();
        assert_eq!(
            names(dir.path()),
            ["lookout-2026-05-01.0.jsonl.gz", "lookout-2026-05-02.0.jsonl"]
        );
        drop(w);

        // A restart the same day appends to the same file.
        let mut w = FileWriter::open(config(dir.path(), 1 << 20)).unwrap();
        w.write(&lines(4, 6), date!(2026 - 05 - 02)).unwrap();
        assert_eq!(
            names(dir.path()),
            ["lookout-2026-05-01.0.jsonl.gz", "lookout-2026-05-02.0.jsonl"]
        );
        drop(w);

        // A crash left a plain file of an earlier day and a temporary file: the restart
        // compresses the one and removes the other.
        fs::write(dir.path().join("lookout-2026-04-30.0.jsonl"), "{\"old\":1}\n").unwrap();
        fs::write(dir.path().join("lookout-2026-04-30.1.jsonl.gz.tmp"), "half").unwrap();
        let mut w = FileWriter::open(config(dir.path(), 1 << 20)).unwrap();
        w.write(&lines(6, 7), date!(2026 - 05 - 03)).unwrap();
        assert_eq!(
            names(dir.path()),
            [
                "lookout-2026-04-30.0.jsonl.gz",
                "lookout-2026-05-01.0.jsonl.gz",
                "lookout-2026-05-02.0.jsonl.gz",
                "lookout-2026-05-03.0.jsonl",
            ]
        );
        let mut expected = vec!["{\"old\":1}".to_owned()];
        expected.extend(lines(0, 7));
        assert_eq!(all_lines(dir.path()), expected);
    }

    #[test]
    fn retention_keeps_the_newest_files_and_recent_days() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 100);
        cfg.retain_files = Some(3);
        let mut w = FileWriter::open(cfg.clone()).unwrap();
        let day = date!(2026 - 05 - 10);
        for i in 0..10 {
            w.write(&lines(i, i + 1), day).unwrap();
        }
        // One line per file (two do not fit in 100 bytes): files 0..=9, of which 6..=8 closed
        // ones are kept besides the current one.
        assert_eq!(
            names(dir.path()),
            [
                "lookout-2026-05-10.6.jsonl.gz",
                "lookout-2026-05-10.7.jsonl.gz",
                "lookout-2026-05-10.8.jsonl.gz",
                "lookout-2026-05-10.9.jsonl",
            ]
        );
        assert_eq!(all_lines(dir.path()), lines(6, 10));

        cfg.retain_files = None;
        cfg.retain_days = Some(2);
        fs::write(dir.path().join("lookout-2026-05-07.0.jsonl.gz"), "").unwrap();
        fs::write(dir.path().join("lookout-2026-05-08.0.jsonl.gz"), "").unwrap();
        fs::write(dir.path().join("lookout-2026-05-09.0.jsonl.gz"), "").unwrap();
        fs::write(dir.path().join("notes.txt"), "not ours").unwrap();
        let mut w = FileWriter::open(cfg).unwrap();
        w.write(&lines(10, 11), date!(2026 - 05 - 10)).unwrap();
        assert_eq!(
            names(dir.path()),
            [
                "lookout-2026-05-08.0.jsonl.gz",
                "lookout-2026-05-09.0.jsonl.gz",
                "lookout-2026-05-10.10.jsonl",
                "lookout-2026-05-10.6.jsonl.gz",
                "lookout-2026-05-10.7.jsonl.gz",
                "lookout-2026-05-10.8.jsonl.gz",
                "lookout-2026-05-10.9.jsonl.gz",
                "notes.txt",
            ],
            "files dated more than two days back are gone, other files are left alone"
        );
    }

    #[test]
    fn a_failed_write_is_reported_and_the_retry_writes_everything() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("logs");
        let mut w = FileWriter::open(config(&dir, 1 << 20)).unwrap();
        let day = date!(2026 - 05 - 01);
        w.write(&lines(0, 2), day).unwrap();
        // The directory is replaced by a plain file: nothing can be written, not even by root.
        let aside = root.path().join("aside");
        fs::rename(&dir, &aside).unwrap();
        fs::write(&dir, "in the way").unwrap();
        assert!(matches!(w.write(&lines(2, 4), day), Err(SinkError::Io { .. })));
        fs::remove_file(&dir).unwrap();
        fs::rename(&aside, &dir).unwrap();
        w.write(&lines(2, 4), day).unwrap();
        assert_eq!(all_lines(&dir), lines(0, 4));
    }

    #[test]
    fn names_parse() {
        let (key, compressed) = parse_name("lookout-2026-05-01.12.jsonl.gz").unwrap();
        assert_eq!((key.date, key.n, compressed), (date!(2026 - 05 - 01), 12, true));
        assert_eq!(file_name(key, false), "lookout-2026-05-01.12.jsonl");
        for bad in [
            "lookout-2026-05-01.jsonl",
            "lookout-x.1.jsonl",
            "other-2026-05-01.1.jsonl",
            "lookout-2026-05-01.1.jsonl.gz.tmp",
        ] {
            assert!(parse_name(bad).is_none(), "{bad}");
        }
    }
}
