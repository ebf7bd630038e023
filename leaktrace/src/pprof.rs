//! The report as a pprof profile (gzipped `profile.proto`), shaped like Go's heap
//! profile so `go tool pprof`, Pyroscope, Parca and Speedscope show it as one:
//! sample types `alloc_objects`, `alloc_space`, `inuse_objects`, `inuse_space`
//! (the default, with the Go heap beside the C heap, told apart by the `kind`
//! label); open descriptors as `open_fds` and `open_sockets`; live goroutines as
//! `goroutine`, like Go's goroutine profile; live threads as `thread`. Format
//! notes: docs/pprof.md.
pub mod proto;

use std::{collections::HashMap, io::Write};

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use crate::{
    model::Kind,
    report::{ModuleMap, Report, SiteReport},
    symbolize::Frame,
};

use proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};

/// (type, unit) of each value of a sample: Go's heap profile, then handles.
pub const SAMPLE_TYPES: [(&str, &str); 8] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
    ("open_fds", "count"),
    ("open_sockets", "count"),
    ("goroutine", "count"),
    ("thread", "count"),
];
const DEFAULT_SAMPLE_TYPE: &str = "inuse_space";

/// A sample's values, one per [`SAMPLE_TYPES`]: the heap profile's four,
/// then at most one handle count at its index.
fn values(memory: [i64; 4], handle: Option<(usize, i64)>) -> Vec<i64> {
    let mut v = vec![0; SAMPLE_TYPES.len()];
    v[..4].copy_from_slice(&memory);
    if let Some((at, n)) = handle {
        v[at] = n;
    }
    v
}

/// Which sample types a profile carries: all of them (a file), or one family
/// of them (a Pyroscope series holds one family: it tells the profile's type
/// from its sample types, and a mix would all land under `memory`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    #[default]
    All,
    /// `alloc_*` and `inuse_*` of the heap, mappings and the Go heap.
    Memory,
    Goroutines,
    /// Open descriptors and sockets.
    Descriptors,
    Threads,
}

impl Family {
    /// The indices of its sample types in [`SAMPLE_TYPES`].
    fn types(self) -> std::ops::Range<usize> {
        match self {
            Family::All => 0..SAMPLE_TYPES.len(),
            Family::Memory => 0..4,
            Family::Descriptors => 4..6,
            Family::Goroutines => 6..7,
            Family::Threads => 7..8,
        }
    }

    pub fn holds(self, kind: Kind) -> bool {
        match self {
            Family::All => true,
            Family::Memory => matches!(kind, Kind::Heap | Kind::Mmap | Kind::GoHeap),
            Family::Descriptors => matches!(kind, Kind::Fd | Kind::Socket),
            Family::Goroutines => kind == Kind::Goroutine,
            Family::Threads => kind == Kind::Thread,
        }
    }
}

/// How a profile is built: its family, and whether its samples carry only
/// labels of few values (`kind`, `verdict`, `reachability`): a profile store
/// makes a series of each distinct label set, so no pid, name, path or wait.
#[derive(Clone, Copy, Debug, Default)]
pub struct Shape {
    pub family: Family,
    pub few_labels: bool,
}

impl Shape {
    /// What `--output x.pb.gz` writes.
    pub const FILE: Shape = Shape {
        family: Family::All,
        few_labels: false,
    };
}

/// The gzipped profile of `report`.
pub fn encode(report: &Report, wall_time_ns: i64) -> std::io::Result<Vec<u8>> {
    gzip(&build(report, wall_time_ns, Shape::FILE).encode_to_vec())
}

pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(bytes)?;
    gz.finish()
}

pub fn build(report: &Report, wall_time_ns: i64, shape: Shape) -> Profile {
    let mut b = Builder {
        shape,
        ..Builder::default()
    };
    b.string(""); // index 0 is always the empty string
    let types = shape.family.types();
    b.profile.sample_type = SAMPLE_TYPES[types.clone()]
        .iter()
        .map(|(t, u)| b.value_type(t, u))
        .collect();
    let (period_type, period_unit) = match shape.family {
        Family::All | Family::Memory => ("space", "bytes"),
        _ => SAMPLE_TYPES[types.start],
    };
    b.profile.period_type = Some(b.value_type(period_type, period_unit));
    // Go puts its sampling rate here; leaktrace counts every allocation.
    b.profile.period = 1;
    let default = match shape.family {
        Family::All | Family::Memory => DEFAULT_SAMPLE_TYPE,
        _ => SAMPLE_TYPES[types.start].0,
    };
    b.profile.default_sample_type = b.string(default);
    b.profile.time_nanos = wall_time_ns;
    b.profile.duration_nanos = (report.duration_s * 1e9) as i64;
    let comments = comments(report);
    b.profile.comment = comments.iter().map(|c| b.string(c)).collect();
    // Tools take the first mapping for the main binary: the targets' executables.
    for t in &report.targets {
        let exe = t.exe.to_string_lossy();
        if let Some(i) = report
            .modules
            .iter()
            .position(|m| m.pid == t.pid && m.path == exe)
        {
            b.mapping(&report.modules[i], i);
        }
    }
    for site in report.sites.iter().filter(|s| shape.family.holds(s.kind)) {
        b.sample(report, site);
    }
    b.profile
}

fn comments(report: &Report) -> Vec<String> {
    let mut out = vec![format!(
        "leaktrace {}: outstanding allocations per call site after {:.1}s",
        env!("CARGO_PKG_VERSION"),
        report.duration_s
    )];
    let lost = report.lost.total();
    if lost > 0 {
        out.push(format!(
            "{lost} events were lost: totals are low bounds (see the text report)"
        ));
    }
    out
}

#[derive(Default)]
struct Builder {
    shape: Shape,
    profile: Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(String, String), u64>,
    /// (pid, module, file offset) → location id.
    locations: HashMap<(u32, Option<String>, u64), u64>,
    /// Index in `Report::modules` → mapping id.
    mappings: HashMap<usize, u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.string(ty),
            unit: self.string(unit),
        }
    }

    fn label(&mut self, key: &str, value: &str) -> Label {
        Label {
            key: self.string(key),
            str: self.string(value),
            ..Label::default()
        }
    }

    fn sample(&mut self, report: &Report, site: &SiteReport) {
        let mut location_id = Vec::new();
        // A location is one address: inlined frames (innermost first) and the
        // frame they were inlined into share it, and become its lines.
        let mut pending: Vec<&Frame> = Vec::new();
        for frame in site.frames.iter() {
            pending.push(frame);
            if !frame.inlined {
                location_id.push(self.location(report, site.pid, &pending));
                pending.clear();
            }
        }
        if !pending.is_empty() {
            location_id.push(self.location(report, site.pid, &pending));
        }
        if site.frames.is_empty() {
            location_id.push(self.unknown_location());
        }
        let comm = report
            .targets
            .iter()
            .find(|t| t.pid == site.pid)
            .map_or(String::new(), |t| t.comm.clone());
        let mut label = vec![
            self.label("kind", site.kind.name()),
            self.label("verdict", site.verdict.name()),
        ];
        if !self.shape.few_labels {
            label.push(self.label("pid", &site.pid.to_string()));
            label.push(self.label("comm", &comm));
        }
        let open = site.outstanding_count as i64;
        // Memory in the first four values; a handle's count in its own.
        let value = match site.kind {
            Kind::Fd => values([0; 4], Some((4, open))),
            Kind::Socket => values([0; 4], Some((5, open))),
            Kind::Goroutine => values([0; 4], Some((6, open))),
            Kind::Thread => values([0; 4], Some((7, open))),
            Kind::Heap | Kind::Mmap | Kind::GoHeap => values(
                [
                    site.total_count as i64,
                    site.total_bytes as i64,
                    open,
                    site.outstanding_bytes as i64,
                ],
                None,
            ),
        };
        if !self.shape.few_labels {
            if let Some(d) = site.details.first() {
                label.push(self.label("detail", &d.describe()));
            }
            // Where most of a goroutine site's goroutines wait: `-tagfocus
            // waiting=chan.send`.
            if let Some(w) = site.waiting.first() {
                label.push(self.label("waiting", &crate::report::waiting_line(w)));
            }
        }
        let Some(r) = site.reachability else {
            let value = self.project(value);
            self.profile.sample.push(Sample {
                location_id,
                value,
                label,
            });
            return;
        };
        // A scanned site: one sample per class of its blocks (`-tagfocus
        // reachability=unreachable`), its totals on the first.
        let scanned = r.unreachable_count + r.indirect_count + r.reachable_count;
        let scanned_bytes = r.unreachable_bytes + r.indirect_bytes + r.reachable_bytes;
        let classes = [
            ("unreachable", r.unreachable_count, r.unreachable_bytes),
            ("indirect", r.indirect_count, r.indirect_bytes),
            ("reachable", r.reachable_count, r.reachable_bytes),
            // Allocated since the scan.
            (
                "unscanned",
                site.outstanding_count.saturating_sub(scanned),
                site.outstanding_bytes.saturating_sub(scanned_bytes),
            ),
        ];
        let mut totals = Some((value[0], value[1]));
        for (class, count, bytes) in classes {
            if count == 0 && bytes == 0 {
                continue;
            }
            let (total_count, total_bytes) = totals.take().unwrap_or((0, 0));
            let mut label = label.clone();
            label.push(self.label("reachability", class));
            let value = values([total_count, total_bytes, count as i64, bytes as i64], None);
            self.profile.sample.push(Sample {
                location_id: location_id.clone(),
                value: self.project(value),
                label,
            });
        }
    }

    /// A sample's values of the profile's family.
    fn project(&self, mut all: Vec<i64>) -> Vec<i64> {
        let types = self.shape.family.types();
        all.truncate(types.end);
        all.drain(..types.start);
        all
    }

    fn location(&mut self, report: &Report, pid: u32, frames: &[&Frame]) -> u64 {
        let last = frames[frames.len() - 1];
        let key = (pid, last.module.clone(), last.address);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let (mapping_id, address) = self.place(report, pid, last);
        let line = frames
            .iter()
            .map(|f| Line {
                function_id: self.function(f),
                line: f.line.map_or(0, i64::from),
                column: 0,
            })
            .collect();
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            mapping_id,
            address,
            line,
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }

    /// The mapping and process address of a frame; its file offset when the
    /// module is not in the target's maps any more.
    fn place(&mut self, report: &Report, pid: u32, frame: &Frame) -> (u64, u64) {
        let Some(module) = &frame.module else {
            return (0, frame.address);
        };
        let found = report.modules.iter().enumerate().find_map(|(i, m)| {
            (m.pid == pid && &m.path == module)
                .then(|| m.address_of(frame.address).map(|a| (i, a)))
                .flatten()
        });
        match found {
            Some((i, address)) => (self.mapping(&report.modules[i], i), address),
            None => (0, frame.address),
        }
    }

    fn mapping(&mut self, m: &ModuleMap, index: usize) -> u64 {
        if let Some(&id) = self.mappings.get(&index) {
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        let mapping = Mapping {
            id,
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.offset,
            filename: self.string(&m.path),
            build_id: self.string(m.build_id.as_deref().unwrap_or("")),
            // Symbolized here: tools must not try to symbolize again.
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        };
        self.profile.mapping.push(mapping);
        self.mappings.insert(index, id);
        id
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let name = frame.function.clone().unwrap_or_else(|| frame.location());
        let file = frame.file.clone().unwrap_or_default();
        let key = (name, file);
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let name = self.string(&key.0);
        let function = Function {
            id,
            name,
            system_name: name,
            filename: self.string(&key.1),
            start_line: 0,
        };
        self.profile.function.push(function);
        self.functions.insert(key, id);
        id
    }

    /// One shared location for samples whose stack was not recorded.
    fn unknown_location(&mut self) -> u64 {
        let frame = Frame::note("[stack not recorded]");
        let key = (0, None, 0);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let line = vec![Line {
            function_id: self.function(&frame),
            line: 0,
            column: 0,
        }];
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(Location {
            id,
            line,
            ..Location::default()
        });
        self.locations.insert(key, id);
        id
    }
}

/// Dangling references in a profile, as messages (empty when consistent): what
/// the pprof tools would reject or misread.
pub fn check(p: &Profile) -> Vec<String> {
    let mut errors = Vec::new();
    let strings = p.string_table.len() as i64;
    if p.string_table.first().map(String::as_str) != Some("") {
        errors.push("string 0 is not empty".to_string());
    }
    let mut string_ok = |what: &str, i: i64| {
        if !(0..strings).contains(&i) {
            errors.push(format!("{what}: string {i} out of range"));
        }
    };
    for vt in p.sample_type.iter().chain(&p.period_type) {
        string_ok("value type", vt.r#type);
        string_ok("value type unit", vt.unit);
    }
    for m in &p.mapping {
        string_ok("mapping filename", m.filename);
        string_ok("mapping build id", m.build_id);
    }
    for f in &p.function {
        string_ok("function name", f.name);
        string_ok("function system name", f.system_name);
        string_ok("function filename", f.filename);
    }
    for s in &p.sample {
        for l in &s.label {
            string_ok("label key", l.key);
            string_ok("label value", l.str);
        }
    }
    string_ok("default sample type", p.default_sample_type);
    let ids_ok = |ids: Vec<u64>| ids.iter().enumerate().all(|(i, &id)| id == i as u64 + 1);
    if !ids_ok(p.mapping.iter().map(|m| m.id).collect()) {
        errors.push("mapping ids are not 1..n".into());
    }
    if !ids_ok(p.location.iter().map(|l| l.id).collect()) {
        errors.push("location ids are not 1..n".into());
    }
    if !ids_ok(p.function.iter().map(|f| f.id).collect()) {
        errors.push("function ids are not 1..n".into());
    }
    for l in &p.location {
        if l.mapping_id > p.mapping.len() as u64 {
            errors.push(format!("location {}: no mapping {}", l.id, l.mapping_id));
        }
        for line in &l.line {
            if line.function_id == 0 || line.function_id > p.function.len() as u64 {
                errors.push(format!(
                    "location {}: no function {}",
                    l.id, line.function_id
                ));
            }
        }
    }
    for s in &p.sample {
        if s.value.len() != p.sample_type.len() {
            errors.push("a sample's values do not match the sample types".into());
        }
        for &id in &s.location_id {
            if id == 0 || id > p.location.len() as u64 {
                errors.push(format!("sample: no location {id}"));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{report::Totals, verdict::Verdict};

    fn frame(function: &str, address: u64, inlined: bool) -> Frame {
        Frame {
            function: Some(function.into()),
            file: Some("/src/app.c".into()),
            line: Some(7),
            module: Some("/bin/app".into()),
            address,
            inlined,
        }
    }

    fn report(frames: Vec<Frame>) -> Report {
        let site = SiteReport {
            kind: Kind::Heap,
            pid: 42,
            outstanding_bytes: 100,
            outstanding_count: 2,
            total_bytes: 300,
            total_count: 5,
            oldest_age_s: Some(1.0),
            verdict: Verdict::Leak,
            confidence: 0.9,
            growth_bytes_per_s: 10.0,
            growth_count_per_s: 0.1,
            time_to_limit_s: None,
            details: Vec::new(),
            reachability: None,
            waiting: Vec::new(),
            before_attach: 0,
            survival: None,
            history: Vec::new(),
            growth_last_minute: 0.0,
            frames: frames.into_iter().map(std::sync::Arc::new).collect(),
        };
        Report {
            version: 2,
            targets: Vec::new(),
            targets_unlisted: 0,
            events: 0,
            duration_s: 1.0,
            lost: Default::default(),
            stacks: Default::default(),
            scans: Default::default(),
            totals: Totals::default(),
            sites: vec![site.clone(), SiteReport { pid: 43, ..site }],
            modules: vec![ModuleMap {
                pid: 42,
                start: 0x5000_0000,
                limit: 0x5000_2000,
                offset: 0x1000,
                path: "/bin/app".into(),
                build_id: Some("abcd".into()),
            }],
        }
    }

    #[test]
    fn inlined_frames_share_one_location_innermost_first() {
        let r = report(vec![
            frame("inner", 0x1234, true),
            frame("outer", 0x1234, false),
            frame("main", 0x1300, false),
        ]);
        let p = build(&r, 0, Shape::FILE);
        assert_eq!(check(&p), Vec::<String>::new());
        let sample = &p.sample[0];
        assert_eq!(sample.value, vec![5, 300, 2, 100, 0, 0, 0, 0]);
        assert_eq!(sample.location_id.len(), 2);
        let loc = &p.location[sample.location_id[0] as usize - 1];
        let names: Vec<&str> = loc
            .line
            .iter()
            .map(|l| {
                let f = &p.function[l.function_id as usize - 1];
                p.string_table[f.name as usize].as_str()
            })
            .collect();
        assert_eq!(names, ["inner", "outer"]);
        // Placed in the process: start + (file offset - mapping offset).
        assert_eq!(loc.address, 0x5000_0234);
        assert_eq!(loc.mapping_id, 1);
        // pid 43 has no mapping: the file offset stands, without a mapping.
        let other = &p.location[p.sample[1].location_id[0] as usize - 1];
        assert_eq!((other.mapping_id, other.address), (0, 0x1234));
    }

    #[test]
    fn a_scanned_site_has_a_sample_per_class_its_totals_once() {
        let mut r = report(vec![frame("main", 0x1300, false)]);
        r.sites[0].reachability = Some(crate::reach::Reach {
            unreachable_count: 1,
            unreachable_bytes: 40,
            reachable_count: 1,
            reachable_bytes: 50,
            at_exit: false,
            ..Default::default()
        });
        let p = build(&r, 0, Shape::FILE);
        assert_eq!(check(&p), Vec::<String>::new());
        let of_42: Vec<(&str, &Vec<i64>)> = p
            .sample
            .iter()
            .filter_map(|s| {
                let class = s
                    .label
                    .iter()
                    .find(|l| p.string_table[l.key as usize] == "reachability")?;
                Some((p.string_table[class.str as usize].as_str(), &s.value))
            })
            .collect();
        assert_eq!(
            of_42,
            [
                ("unreachable", &vec![5, 300, 1, 40, 0, 0, 0, 0]),
                ("reachable", &vec![0, 0, 1, 50, 0, 0, 0, 0]),
                ("unscanned", &vec![0, 0, 0, 10, 0, 0, 0, 0]),
            ]
        );
    }

    #[test]
    fn a_lost_stack_still_gets_a_location() {
        let p = build(&report(Vec::new()), 0, Shape::FILE);
        assert_eq!(check(&p), Vec::<String>::new());
        assert_eq!(p.sample[0].location_id, p.sample[1].location_id);
        assert_eq!(p.location.len(), 1);
    }

    #[test]
    fn a_family_profile_has_its_types_and_few_labels() {
        let mut r = report(vec![frame("main", 0x1300, false)]);
        r.sites[1].kind = Kind::Socket;
        r.sites[1].outstanding_count = 3;
        let few = |family| Shape {
            family,
            few_labels: true,
        };
        let p = build(&r, 0, few(Family::Memory));
        assert_eq!(check(&p), Vec::<String>::new());
        let types: Vec<&str> = p
            .sample_type
            .iter()
            .map(|t| p.string_table[t.r#type as usize].as_str())
            .collect();
        assert_eq!(
            types,
            [
                "alloc_objects",
                "alloc_space",
                "inuse_objects",
                "inuse_space"
            ]
        );
        assert_eq!(p.sample.len(), 1, "the socket site is not memory");
        assert_eq!(p.sample[0].value, vec![5, 300, 2, 100]);
        let keys: Vec<&str> = p.sample[0]
            .label
            .iter()
            .map(|l| p.string_table[l.key as usize].as_str())
            .collect();
        assert_eq!(keys, ["kind", "verdict"]);
        let p = build(&r, 0, few(Family::Descriptors));
        assert_eq!(p.sample.len(), 1);
        assert_eq!(p.sample[0].value, vec![0, 3]);
        assert_eq!(p.string_table[p.default_sample_type as usize], "open_fds");
    }
}
