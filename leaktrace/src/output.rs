//! Writing reports to files: JSON, pprof, SVG flamegraph or folded stacks, picked
//! by extension (or --format); always through a temporary file and a rename, so
//! a reader or a kill never leaves half a file.
use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use clap::ValueEnum;

use crate::{flamegraph, pprof, report::Report};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The JSON report (docs/json.md).
    Json,
    /// Gzipped pprof profile.proto (docs/pprof.md).
    Pprof,
    /// Interactive flamegraph of outstanding bytes.
    Svg,
    /// Folded stacks of outstanding bytes (flamegraph.pl, inferno, speedscope).
    Folded,
}

/// Suffixes that name a format, longest first.
const SUFFIXES: [(&str, Format); 6] = [
    (".pb.gz", Format::Pprof),
    (".pprof", Format::Pprof),
    (".json", Format::Json),
    (".svg", Format::Svg),
    (".folded", Format::Folded),
    (".txt", Format::Folded),
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub path: PathBuf,
    pub format: Format,
}

impl Output {
    /// The output for `path`: its format from `forced` or else its extension.
    pub fn new(path: PathBuf, forced: Option<Format>) -> Result<Self, String> {
        let format = match forced {
            Some(f) => f,
            None => suffix(&path).map(|(_, f)| f).ok_or_else(|| {
                format!(
                    "cannot tell the format of {} from its name: end it in .json, .pb.gz, \
                     .svg or .folded, or give --format",
                    path.display()
                )
            })?,
        };
        Ok(Self { path, format })
    }

    /// Whether the output can be written where it is asked for: checked before
    /// attaching, so a bad path does not throw a trace away at the end.
    pub fn check(&self) -> Result<(), String> {
        let (dir, _) = split(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let meta = std::fs::metadata(dir).map_err(|e| {
            format!(
                "cannot write {}: {}: {e}",
                self.path.display(),
                dir.display()
            )
        })?;
        if !meta.is_dir() {
            return Err(format!(
                "cannot write {}: {} is not a directory",
                self.path.display(),
                dir.display()
            ));
        }
        if self.path.is_dir() {
            return Err(format!(
                "cannot write {}: it is a directory",
                self.path.display()
            ));
        }
        let c_dir = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        // SAFETY: access(2) on a valid C string.
        if unsafe { libc::access(c_dir.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            return Err(format!(
                "cannot write {}: {}: {}",
                self.path.display(),
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    pub fn write(&self, report: &Report) -> Result<()> {
        self.write_to(&self.path, report)
    }

    /// Writes snapshot number `n` next to the output: `leaks.pb.gz` becomes
    /// `leaks.0001.pb.gz`; returns its path.
    pub fn write_snapshot(&self, report: &Report, n: u32) -> Result<PathBuf> {
        let path = numbered(&self.path, n);
        self.write_to(&path, report)?;
        Ok(path)
    }

    fn write_to(&self, path: &Path, report: &Report) -> Result<()> {
        let bytes = match self.format {
            // Streamed to the file: a report of 100k sites is tens of MB of JSON.
            Format::Json => None,
            Format::Pprof => Some(pprof::encode(report, wall_clock_ns())?),
            Format::Svg => Some(flamegraph::svg(report)?),
            Format::Folded => Some(flamegraph::folded(report).into_bytes()),
        };
        write_atomically(path, |file| match &bytes {
            Some(bytes) => file.write_all(bytes),
            None => {
                let mut out = std::io::BufWriter::new(file);
                report.write_json(&mut out)?;
                out.flush()
            }
        })
        .with_context(|| format!("writing {}", path.display()))
    }
}

fn suffix(path: &Path) -> Option<(&'static str, Format)> {
    let name = path.file_name()?.to_str()?;
    SUFFIXES.into_iter().find(|(s, _)| name.ends_with(s))
}

/// `dir/leaks.pb.gz` → `dir/leaks.0007.pb.gz`; a name without a known suffix
/// gets the number at its end.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = suffix(path).map_or("", |(s, _)| s);
    let stem = &name[..name.len() - ext.len()];
    path.with_file_name(format!("{stem}.{n:04}{ext}"))
}

fn wall_clock_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Writes through a temporary file and a rename: a reader never sees half a file.
///
/// leaktrace runs as root and the output directory may be writable by others:
/// the temporary file is created exclusively (`O_EXCL`, `O_NOFOLLOW`) under an
/// unpredictable name, so no link planted in advance is written through, and
/// the rename replaces whatever sits at `path` (a link included) instead of
/// following it.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let (dir, name) = split(path)?;
    for _ in 0..16 {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{:016x}.tmp", random_u64()));
        let tmp = dir.join(tmp_name);
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let written = write(&mut file)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        return written;
    }
    Err(std::io::Error::other("no free temporary file name"))
}

/// The directory and the file name of an output path.
fn split(path: &Path) -> std::io::Result<(&Path, &std::ffi::OsStr)> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((dir, name))
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `len` bytes into our buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 8 {
        // Unpredictable enough for a name that is also created exclusively.
        return wall_clock_ns() as u64 ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_ne_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_extension_unless_forced() {
        let of = |p: &str| Output::new(PathBuf::from(p), None).map(|o| o.format);
        assert_eq!(of("leaks.pb.gz"), Ok(Format::Pprof));
        assert_eq!(of("/tmp/x.json"), Ok(Format::Json));
        assert_eq!(of("flame.svg"), Ok(Format::Svg));
        assert_eq!(of("stacks.folded"), Ok(Format::Folded));
        assert!(of("leaks.bin").is_err());
        let forced = Output::new(PathBuf::from("leaks.bin"), Some(Format::Pprof));
        assert_eq!(forced.unwrap().format, Format::Pprof);
    }

    #[test]
    fn snapshots_are_numbered_before_the_extension() {
        let p = |s: &str, n| numbered(Path::new(s), n);
        assert_eq!(
            p("out/leaks.pb.gz", 1),
            PathBuf::from("out/leaks.0001.pb.gz")
        );
        assert_eq!(p("a.b.json", 12), PathBuf::from("a.b.0012.json"));
        assert_eq!(p("profile", 3), PathBuf::from("profile.0003"));
    }
}
