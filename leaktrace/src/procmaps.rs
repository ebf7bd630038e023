//! Snapshots of `/proc/PID/maps`: which file backs an address, at which offset.
//! Kept per target so stacks still symbolize after the target exits.
use std::{fs, path::PathBuf};

/// A file's identity: its device and inode. Paths are not: a file replaced on
/// disk keeps its path, and containers see one file under different paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub inode: u64,
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            inode: meta.ino(),
        }
    }

    /// The file at `path` (links followed), if there is one.
    pub fn of_path(path: &std::path::Path) -> Option<Self> {
        fs::metadata(path).ok().map(|m| Self::of(&m))
    }

    /// From the `major:minor` (hex) and inode fields of a maps line.
    fn parse(dev: &str, inode: &str) -> Option<Self> {
        let (major, minor) = dev.split_once(':')?;
        let major = u32::from_str_radix(major, 16).ok()?;
        let minor = u32::from_str_radix(minor, 16).ok()?;
        let inode = inode.parse().ok().filter(|&i| i != 0)?;
        Some(FileId {
            dev: libc::makedev(major, minor),
            inode,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub executable: bool,
    /// Path as the target sees it; `None` for anonymous memory.
    pub path: Option<PathBuf>,
    /// The mapped file; `None` for anonymous memory.
    pub file: Option<FileId>,
}

#[derive(Clone, Debug, Default)]
pub struct ProcMaps {
    mappings: Vec<Mapping>,
    /// Code the previous snapshot had and this one has not (an exec, a
    /// dlclose): events read before the change still point into it.
    replaced: Vec<Mapping>,
}

impl ProcMaps {
    pub fn read(pid: u32) -> std::io::Result<Self> {
        let text = fs::read_to_string(format!("/proc/{pid}/maps"))?;
        Ok(Self::parse(&text))
    }

    pub fn parse(text: &str) -> Self {
        let mappings = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(6, ' ');
                let range = fields.next()?;
                let perms = fields.next()?;
                let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
                let dev = fields.next()?;
                let inode = fields.next()?;
                let path = fields
                    .next()
                    .map(str::trim_start)
                    .filter(|p| p.starts_with('/'));
                let (start, end) = range.split_once('-')?;
                Some(Mapping {
                    start: u64::from_str_radix(start, 16).ok()?,
                    end: u64::from_str_radix(end, 16).ok()?,
                    offset,
                    executable: perms.as_bytes().get(2) == Some(&b'x'),
                    path: path.map(|p| PathBuf::from(p.trim_end_matches(" (deleted)"))),
                    file: path.and(FileId::parse(dev, inode)),
                })
            })
            .collect();
        Self {
            mappings,
            replaced: Vec::new(),
        }
    }

    /// This snapshot, taken after `previous`: code `previous` had and this one
    /// has not is kept aside for addresses seen before the change.
    pub fn succeeding(mut self, previous: &ProcMaps) -> Self {
        let gone: Vec<Mapping> = previous
            .code()
            .filter(|m| !self.mappings.contains(m))
            .cloned()
            .collect();
        self.replaced = if gone.is_empty() {
            previous.replaced.clone()
        } else {
            gone
        };
        self
    }

    /// The mapping holding `addr`: a current one, else one the last change
    /// replaced.
    pub fn lookup(&self, addr: u64) -> Option<&Mapping> {
        let holds = |m: &&Mapping| addr >= m.start && addr < m.end;
        self.mappings
            .iter()
            .find(holds)
            .or_else(|| self.replaced.iter().find(holds))
    }

    /// A mapping of the file whose name is `name` (a `DT_NEEDED` entry).
    pub fn find_file(&self, name: &str) -> Option<&Mapping> {
        self.mappings.iter().find(|m| {
            m.path
                .as_ref()
                .and_then(|p| p.file_name())
                .is_some_and(|f| f == name)
        })
    }

    /// Executable mappings of files: where code lives.
    pub fn code(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings
            .iter()
            .filter(|m| m.executable && m.path.is_some())
    }

    pub fn mappings(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_and_anonymous_mappings() {
        let maps = ProcMaps::parse(
            "55d0c0000000-55d0c0001000 r--p 00000000 fe:01 123 /usr/bin/demo\n\
             55d0c0001000-55d0c0002000 r-xp 00001000 fe:01 123 /usr/bin/demo\n\
             7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n\
             7f1000000000-7f1000001000 r-xp 00002000 fe:01 9 /lib/libc.so.6 (deleted)\n",
        );
        let m = maps.lookup(0x55d0c0001234).unwrap();
        assert!(m.executable);
        assert_eq!(m.offset, 0x1000);
        assert_eq!(maps.lookup(0x7f0000000010).unwrap().path, None);
        assert_eq!(
            maps.find_file("libc.so.6").and_then(|m| m.path.clone()),
            Some(PathBuf::from("/lib/libc.so.6"))
        );
        assert!(maps.lookup(0x10).is_none());
        assert_eq!(
            m.file,
            Some(FileId {
                dev: libc::makedev(0xfe, 1),
                inode: 123
            })
        );
        assert_eq!(maps.lookup(0x7f0000000010).unwrap().file, None);
    }

    #[test]
    fn code_an_exec_replaced_still_resolves_addresses_seen_before() {
        let old =
            ProcMaps::parse("55d0c0001000-55d0c0002000 r-xp 00001000 fe:01 123 /usr/bin/old\n");
        let new =
            ProcMaps::parse("56000000a000-56000000b000 r-xp 00001000 fe:01 456 /usr/bin/new\n")
                .succeeding(&old);
        assert_eq!(
            new.lookup(0x55d0c0001234).unwrap().path,
            Some(PathBuf::from("/usr/bin/old"))
        );
        assert_eq!(new.code().count(), 1, "only what is mapped now is code");
        // Kept until the next change.
        let same =
            ProcMaps::parse("56000000a000-56000000b000 r-xp 00001000 fe:01 456 /usr/bin/new\n")
                .succeeding(&new);
        assert!(same.lookup(0x55d0c0001234).is_some());
    }
}
