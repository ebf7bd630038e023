//! Which container a process runs in, and which Kubernetes pod that container belongs to.
//!
//! Part 1 reads `/proc/PID/cgroup` (cgroup v1, v2 and hybrid) into a [`ContainerRef`]. Part 2
//! keeps a [`PodIndex`] of this node's pods, fed by a pod list and watch of the Kubernetes API
//! (`fieldSelector=spec.nodeName=…`), mapping container ids to names, labels and annotations.
//! Nothing here does HTTP: callers fetch [`list_path`] and [`watch_path`] and hand the bodies in.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read};

use serde::{Deserialize, Deserializer};

// ---------------------------------------------------------------------------------------------
// Part 1: PID → container
// ---------------------------------------------------------------------------------------------

/// At most this much of `/proc/PID/cgroup` is read or parsed: a real file is a few KiB even with
/// every v1 controller, and the path text comes from cgroup names that a delegated user can pick.
const MAX_CGROUP_FILE_BYTES: usize = 64 * 1024;
/// Longer lines are ignored rather than cut: a cut path could end in a different, valid id.
const MAX_CGROUP_LINE_BYTES: usize = 4096;

/// The container a process is in, as its cgroup path tells.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    /// 64 lowercase hex digits: the id the runtime reports to Kubernetes (without `containerd://`).
    pub id: String,
    /// The pod's uid with dashes (`0b6ba8c5-2d48-…`), when the path names the pod. Static pods
    /// show kubelet's 32-hex hash here, which is not their mirror pod's API uid.
    pub pod_uid: Option<String>,
    /// `"containerd"`, `"cri-o"` or `"docker"` when the path says so (the cgroupfs driver's bare
    /// `<pod>/<id>` does not).
    pub runtime: Option<&'static str>,
}

/// The container named by the contents of a `/proc/PID/cgroup` file, if any.
///
/// Each line is `hierarchy:controllers:path` (v2: `0::path`). The first line whose path yields
/// an id wins: a runtime puts a process into every hierarchy it manages at once, so their paths
/// agree; where lines disagree on a hybrid host, the odd one out is a hierarchy the runtime left
/// alone (`0::/reserved.slice/containerd.service` beside v1 `kubepods` paths), which yields no
/// id. A per-controller preference would add nothing.
///
/// Within a path the innermost container segment counts: with nested runtimes (kind, k3d,
/// docker-in-docker) the outer ones are the node's container, not the process's. Paths relative
/// to another cgroup namespace (`/../../pod…/<id>`) work the same way.
pub fn container_of_cgroup(text: &str) -> Option<ContainerRef> {
    whole_lines_within(text, MAX_CGROUP_FILE_BYTES)
        .lines()
        .filter(|line| {
            let fits = line.len() <= MAX_CGROUP_LINE_BYTES;
            if !fits {
                log::debug!("ignoring a cgroup line of {} bytes", line.len());
            }
            fits
        })
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find_map(container_of_path)
}

/// Reads `/proc/PID/cgroup` (at most 64 KiB) and parses it with [`container_of_cgroup`].
///
/// A process that has exited gives an error (`NotFound`, or `ESRCH` while reading).
pub fn container_of_pid(pid: u32) -> io::Result<Option<ContainerRef>> {
    let file = File::open(format!("/proc/{pid}/cgroup"))?;
    let mut buf = Vec::with_capacity(4096);
    // One byte over the limit tells the parser the file was cut, so it drops the partial line.
    file.take(MAX_CGROUP_FILE_BYTES as u64 + 1)
        .read_to_end(&mut buf)?;
    Ok(container_of_cgroup(&String::from_utf8_lossy(&buf)))
}

/// Whether a process is a pod's infrastructure (`pause`) container, which holds the pod's
/// namespaces and nothing worth tracing.
pub fn is_pause(comm: &str, exe: &str) -> bool {
    comm == "pause" && exe.ends_with("/pause")
}

/// The longest prefix of `text` within `max` bytes that ends at a line end.
fn whole_lines_within(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    match text.as_bytes()[..max].iter().rposition(|&b| b == b'\n') {
        Some(end) => &text[..end],
        None => "",
    }
}

/// Runtimes by the prefix the systemd cgroup driver gives their scopes (`<prefix>-<id>.scope`),
/// which runc also writes as `<slice>:<prefix>:<id>` when it is handed a systemd cgroupsPath but
/// uses cgroupfs (kubelet and containerd on different drivers, seen on k3s).
const RUNTIME_PREFIXES: [(&str, &str); 3] = [
    ("cri-containerd", "containerd"),
    ("crio", "cri-o"),
    ("docker", "docker"),
];

/// What one segment of a cgroup path says.
enum Segment<'a> {
    Container {
        id: &'a str,
        runtime: Option<&'static str>,
        pod_uid: Option<String>,
    },
    /// A pod's own cgroup: a process here (not in one of its containers) has no container, and
    /// segments above it belong to whatever runs the node.
    Pod(String),
    Other,
}

fn container_of_path(path: &str) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').collect();
    for (i, segment) in segments.iter().enumerate().rev() {
        match classify(segment) {
            Segment::Other => continue,
            Segment::Pod(_) => return None,
            Segment::Container {
                id,
                runtime,
                pod_uid,
            } => {
                let outer = &segments[..i];
                // cgroupfs docker names its containers `/docker/<id>`.
                let runtime = runtime.or((outer.last() == Some(&"docker")).then_some("docker"));
                // The enclosing pod, not one around an outer container.
                let pod_uid = pod_uid.or_else(|| {
                    outer
                        .iter()
                        .rev()
                        .map(|s| classify(s))
                        .take_while(|s| !matches!(s, Segment::Container { .. }))
                        .find_map(|s| match s {
                            Segment::Pod(uid) => Some(uid),
                            _ => None,
                        })
                });
                return Some(ContainerRef {
                    id: id.to_owned(),
                    pod_uid,
                    runtime,
                });
            }
        }
    }
    None
}

fn classify(segment: &str) -> Segment<'_> {
    if let Some((slice, rest)) = segment.split_once(':') {
        if let Some((prefix, id)) = rest.split_once(':')
            && let Some(runtime) = runtime_of_prefix(prefix)
            && is_container_id(id)
        {
            return Segment::Container {
                id,
                runtime: Some(runtime),
                pod_uid: pod_uid_of(slice),
            };
        }
        return Segment::Other;
    }
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    // CRI-O's `crio-conmon-<id>` (the container's monitor, a host process) is no match: what
    // follows `crio-` must be the id itself.
    for (prefix, runtime) in RUNTIME_PREFIXES {
        if let Some(id) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-'))
            && is_container_id(id)
        {
            return Segment::Container {
                id,
                runtime: Some(runtime),
                pod_uid: None,
            };
        }
    }
    if is_container_id(name) {
        return Segment::Container {
            id: name,
            runtime: None,
            pod_uid: None,
        };
    }
    match pod_uid_of(segment) {
        Some(uid) => Segment::Pod(uid),
        None => Segment::Other,
    }
}

fn runtime_of_prefix(prefix: &str) -> Option<&'static str> {
    RUNTIME_PREFIXES
        .iter()
        .find(|(p, _)| *p == prefix)
        .map(|&(_, runtime)| runtime)
}

/// The pod uid in a pod's cgroup segment: `pod<uid>` (cgroupfs driver) or
/// `kubepods-<qos>-pod<uid>.slice` (systemd driver, which turns the uid's dashes into `_`).
fn pod_uid_of(segment: &str) -> Option<String> {
    let raw = match segment.strip_suffix(".slice") {
        Some(slice) => &slice[slice.rfind("-pod")? + "-pod".len()..],
        None => segment.strip_prefix("pod")?,
    };
    let uid = raw.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// A UUID (API pods) or the 32-hex hash kubelet gives static pods, lowercase.
fn is_pod_uid(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        32 => b.iter().all(|&c| is_lower_hex(c)),
        36 => b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => is_lower_hex(c),
        }),
        _ => false,
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

fn is_lower_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
}

// ---------------------------------------------------------------------------------------------
// Part 2: this node's pods → labels
// ---------------------------------------------------------------------------------------------

/// The annotation Grafana Alloy and Pyroscope read a pod's service name from.
pub const SERVICE_NAME_ANNOTATION: &str = "pyroscope.io/service_name";
/// The opt-in annotation for tracing a pod.
pub const TRACE_ANNOTATION: &str = "leaktrace.io/trace";
/// A watch line (one event, one whole pod) longer than this is refused.
pub const MAX_WATCH_LINE_BYTES: usize = 1024 * 1024;
/// Label and annotation values are cut to this many bytes (at a character boundary); label keys
/// longer than this, which Kubernetes never accepts, are dropped.
pub const MAX_VALUE_BYTES: usize = 1024;
/// The server ends each watch after this long; the HTTP client's read timeout must exceed it.
pub const WATCH_TIMEOUT_SECONDS: u32 = 300;

/// `metadata` of a Kubernetes object: only what the index uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub namespace: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub uid: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
    pub resource_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, deserialize_with = "null_as_default")]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerStatus {
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`; absent until the container is created.
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pod {
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: PodSpec,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    pub resource_version: Option<String>,
}

/// The body of `GET /api/v1/pods?fieldSelector=…`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PodList {
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: ListMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub items: Vec<Pod>,
}

/// The `object` of an `ERROR` watch event (a `metav1.Status`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Status {
    pub code: Option<i32>,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// One line of a watch stream: `{"type":"ADDED","object":{…}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", content = "object", rename_all = "UPPERCASE")]
pub enum WatchEvent {
    Added(Pod),
    Modified(Pod),
    Deleted(Pod),
    /// Only `metadata.resourceVersion` is meaningful: where to resume the watch.
    Bookmark(Pod),
    Error(Status),
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watch line of {len} bytes is over the {max}-byte limit")]
    LineTooLong { len: usize, max: usize },
    #[error("malformed watch line: {0}")]
    Json(#[from] serde_json::Error),
    /// The resource version is older than the server keeps (410 Gone): list again, then watch
    /// from the list's resource version.
    #[error("watch resource version expired (410 Gone), relist: {message}")]
    Expired { message: String },
    #[error("watch failed with status {code} ({reason}): {message}")]
    Status {
        code: i32,
        reason: String,
        message: String,
    },
}

impl From<&Status> for WatchError {
    fn from(status: &Status) -> Self {
        let message = status.message.clone().unwrap_or_default();
        let reason = status.reason.clone().unwrap_or_default();
        if status.code == Some(410) || reason == "Expired" || reason == "Gone" {
            WatchError::Expired { message }
        } else {
            WatchError::Status {
                code: status.code.unwrap_or(0),
                reason,
                message,
            }
        }
    }
}

/// Parses one line of a watch stream, refusing lines over [`MAX_WATCH_LINE_BYTES`] before
/// parsing. An `ERROR` event parses fine; [`PodIndex::apply_event`] turns it into an error.
pub fn parse_watch_line(line: &str) -> Result<WatchEvent, WatchError> {
    if line.len() > MAX_WATCH_LINE_BYTES {
        return Err(WatchError::LineTooLong {
            len: line.len(),
            max: MAX_WATCH_LINE_BYTES,
        });
    }
    Ok(serde_json::from_str(line.trim_end())?)
}

/// What the index knows of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub labels: BTreeMap<String, String>,
    /// Only the annotations named in [`PodIndexConfig::annotation_keys`].
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct PodIndexConfig {
    /// Pods beyond this many are not indexed (their processes get no pod labels); one left out
    /// gets in on its next event after others are deleted, or at the next list.
    pub max_pods: usize,
    /// Labels kept per pod, in key order.
    pub max_labels: usize,
    /// Annotations kept; all others are dropped on arrival.
    pub annotation_keys: Vec<String>,
    /// When set, pods bound to another node are ignored: the field selector should see to that,
    /// but a server or proxy ignoring it would otherwise fill the index with the cluster's pods.
    pub node_name: Option<String>,
}

impl Default for PodIndexConfig {
    fn default() -> Self {
        PodIndexConfig {
            max_pods: 1000,
            max_labels: 64,
            annotation_keys: vec![
                SERVICE_NAME_ANNOTATION.to_owned(),
                TRACE_ANNOTATION.to_owned(),
            ],
            node_name: None,
        }
    }
}

/// This node's containers by id, kept current by a list and then watch events.
#[derive(Debug, Default)]
pub struct PodIndex {
    config: PodIndexConfig,
    /// Pod uid → the ids of its containers (only pods with at least one).
    pods: HashMap<String, Vec<String>>,
    containers: HashMap<String, ContainerInfo>,
    resource_version: Option<String>,
    /// Warn once per list, not on every event of a pod left out.
    over_cap: bool,
}

impl PodIndex {
    pub fn new(config: PodIndexConfig) -> Self {
        PodIndex {
            config,
            ..PodIndex::default()
        }
    }

    /// Replaces everything with the list's pods; returns the list's resource version, from which
    /// to watch.
    pub fn apply_list(&mut self, list: &PodList) -> Option<String> {
        self.pods.clear();
        self.containers.clear();
        self.over_cap = false;
        for pod in &list.items {
            self.upsert(pod);
        }
        self.resource_version = list.metadata.resource_version.clone();
        self.resource_version.clone()
    }

    /// Applies one watch event. `ERROR` events come back as errors; after
    /// [`WatchError::Expired`] the resource version is forgotten, as only a relist gives a new one.
    pub fn apply_event(&mut self, event: &WatchEvent) -> Result<(), WatchError> {
        let pod = match event {
            WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                self.upsert(pod);
                pod
            }
            WatchEvent::Deleted(pod) => {
                self.remove(&pod.metadata.uid);
                pod
            }
            WatchEvent::Bookmark(pod) => pod,
            WatchEvent::Error(status) => {
                let err = WatchError::from(status);
                if matches!(err, WatchError::Expired { .. }) {
                    self.resource_version = None;
                }
                return Err(err);
            }
        };
        if let Some(rv) = &pod.metadata.resource_version {
            self.resource_version = Some(rv.clone());
        }
        Ok(())
    }

    /// The container's pod, by container id only: a pod uid alone does not say which container.
    pub fn lookup(&self, container: &ContainerRef) -> Option<&ContainerInfo> {
        self.containers.get(&container.id)
    }

    /// Where to resume the watch; `None` before a list or after the server expired it.
    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// Indexes all containers of `pod` that have an id, replacing the pod's old ones (a
    /// restarted container has a new id).
    fn upsert(&mut self, pod: &Pod) {
        let meta = &pod.metadata;
        if meta.uid.is_empty() {
            log::debug!(
                "pod {}/{} has no uid; not indexed",
                meta.namespace,
                meta.name
            );
            return;
        }
        self.remove(&meta.uid);
        if let (Some(node), Some(bound)) = (&self.config.node_name, &pod.spec.node_name)
            && node != bound
        {
            log::debug!(
                "pod {}/{} is on node {bound}, not {node}; not indexed",
                meta.namespace,
                meta.name
            );
            return;
        }
        let status = &pod.status;
        let containers: Vec<(String, &str)> = status
            .init_container_statuses
            .iter()
            .chain(&status.container_statuses)
            .chain(&status.ephemeral_container_statuses)
            .filter_map(|c| Some((runtime_container_id(c.container_id.as_deref()?)?, &*c.name)))
            .collect();
        if containers.is_empty() {
            return;
        }
        if self.pods.len() >= self.config.max_pods {
            if !self.over_cap {
                log::warn!(
                    "more than {} pods on this node: pod {}/{} and later ones get no pod labels",
                    self.config.max_pods,
                    meta.namespace,
                    meta.name
                );
                self.over_cap = true;
            }
            return;
        }
        let labels: BTreeMap<String, String> = meta
            .labels
            .iter()
            .filter(|(key, _)| key.len() <= MAX_VALUE_BYTES)
            .take(self.config.max_labels)
            .map(|(key, value)| (key.clone(), truncated(value)))
            .collect();
        let annotations: BTreeMap<String, String> = self
            .config
            .annotation_keys
            .iter()
            .filter_map(|key| Some((key.clone(), truncated(meta.annotations.get(key)?))))
            .collect();
        let mut ids = Vec::with_capacity(containers.len());
        for (id, name) in containers {
            let info = ContainerInfo {
                namespace: truncated(&meta.namespace),
                pod: truncated(&meta.name),
                // Server-generated, and the key `remove` compares with.
                pod_uid: meta.uid.clone(),
                container: truncated(name),
                labels: labels.clone(),
                annotations: annotations.clone(),
            };
            self.containers.insert(id.clone(), info);
            ids.push(id);
        }
        self.pods.insert(meta.uid.clone(), ids);
    }

    fn remove(&mut self, pod_uid: &str) {
        for id in self.pods.remove(pod_uid).unwrap_or_default() {
            // Only if still this pod's: a (buggy) later pod may have claimed the same id.
            if self
                .containers
                .get(&id)
                .is_some_and(|info| info.pod_uid == pod_uid)
            {
                self.containers.remove(&id);
            }
        }
    }
}

/// `containerd://<id>` → `<id>`, for any runtime scheme; `None` unless the id is one a cgroup
/// path can carry (64 lowercase hex), as nothing else could ever be looked up.
fn runtime_container_id(status_id: &str) -> Option<String> {
    let (_, id) = status_id.split_once("://")?;
    is_container_id(id).then(|| id.to_owned())
}

fn truncated(s: &str) -> String {
    s[..s.floor_char_boundary(MAX_VALUE_BYTES)].to_owned()
}

/// Kubernetes writes `null` for some empty fields (`"containers":null` in bookmarks).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// The `service_name` label: the pod's `pyroscope.io/service_name` annotation, else
/// `<namespace>/<container>` (as Grafana Alloy does), else the process's comm.
pub fn service_name(info: Option<&ContainerInfo>, comm: &str) -> String {
    let Some(info) = info else {
        return comm.to_owned();
    };
    if let Some(name) = info.annotations.get(SERVICE_NAME_ANNOTATION)
        && !name.trim().is_empty()
    {
        return name.clone();
    }
    if !info.namespace.is_empty() && !info.container.is_empty() {
        return format!("{}/{}", info.namespace, info.container);
    }
    comm.to_owned()
}

/// `GET` path listing the pods bound to `node`.
pub fn list_path(node: &str) -> String {
    let mut path = String::from("/api/v1/pods?fieldSelector=spec.nodeName%3D");
    percent_encode_into(&mut path, &escape_selector_value(node));
    path
}

/// `GET` path watching the pods bound to `node`, from `resource_version` (the list's, or the
/// last event's) or, without one, from now with the existing pods sent as `ADDED`.
pub fn watch_path(node: &str, resource_version: Option<&str>) -> String {
    let mut path = list_path(node);
    path.push_str("&watch=true");
    if let Some(rv) = resource_version.filter(|rv| !rv.is_empty()) {
        path.push_str("&resourceVersion=");
        percent_encode_into(&mut path, rv);
    }
    path.push_str("&allowWatchBookmarks=true&timeoutSeconds=");
    path.push_str(&WATCH_TIMEOUT_SECONDS.to_string());
    path
}

/// A field selector value escaped as apimachinery's `fields.EscapeValue` does: `\`, `,` and `=`
/// are selector syntax.
fn escape_selector_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn percent_encode_into(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Cgroup fixtures are shaped after public ones: DataDog agent, coroot-node-agent,
    // opentelemetry-ebpf-profiler, grafana/beyla, SPIRE, CRI-O and runc tests.

    fn container(text: &str) -> (String, Option<String>, Option<&'static str>) {
        let c = container_of_cgroup(text).unwrap_or_else(|| panic!("no container in {text:?}"));
        (c.id, c.pod_uid, c.runtime)
    }

    fn id_only(text: &str) -> Option<String> {
        container_of_cgroup(text).map(|c| c.id)
    }

    fn expect(text: &str, id: &str, pod_uid: Option<&str>, runtime: Option<&'static str>) {
        assert_eq!(
            container(text),
            (id.to_owned(), pod_uid.map(str::to_owned), runtime),
            "{text}"
        );
    }

    const E8AC: &str = "e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3";

    #[test]
    fn v1_kubelet_node_with_systemd_driver() {
        let text = "\
13:blkio:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod98005c3b_b650_4efe_8b91_2164d784397f.slice/cri-containerd-e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3.scope
12:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod98005c3b_b650_4efe_8b91_2164d784397f.slice/cri-containerd-e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3.scope
11:misc:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod98005c3b_b650_4efe_8b91_2164d784397f.slice/cri-containerd-e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3.scope
10:pids:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod98005c3b_b650_4efe_8b91_2164d784397f.slice/cri-containerd-e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3.scope
9:hugetlb:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod98005c3b_b650_4efe_8b91_2164d784397f.slice/cri-containerd-e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3.scope
8:rdma:/
7:perf_event:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod98005c3b_b650_4efe_8b91_2164d784397f.slice/cri-containerd-e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3.scope
6:cpuset:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod98005c3b_b650_4efe_8b91_2164d784397f.slice/cri-containerd-e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3.scope
5:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod98005c3b_b650_4efe_8b91_2164d784397f.slice/cri-containerd-e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3.scope
4:net_cls,net_prio:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod98005c3b_b650_4efe_8b91_2164d784397f.slice/cri-containerd-e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3.scope
3:freezer:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod98005c3b_b650_4efe_8b91_2164d784397f.slice/cri-containerd-e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3.scope
2:devices:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod98005c3b_b650_4efe_8b91_2164d784397f.slice/cri-containerd-e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3.scope
1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod98005c3b_b650_4efe_8b91_2164d784397f.slice/cri-containerd-e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3.scope
0::/
";
        expect(
            text,
            E8AC,
            Some("98005c3b-b650-4efe-8b91-2164d784397f"),
            Some("containerd"),
        );
    }

    #[test]
    fn v1_cgroupfs_driver() {
        // Hybrid host: the unified line is systemd's view of containerd's service, the v1
        // controllers hold the container.
        let hybrid = "\
13:cpuset:/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8
12:memory:/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8
11:devices:/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8
10:pids:/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8
9:misc:/
8:perf_event:/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8
7:rdma:/
6:blkio:/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8
5:net_cls,net_prio:/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8
4:hugetlb:/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8
3:freezer:/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8
2:cpu,cpuacct:/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8
1:name=systemd:/kubepods/burstable/pod8833712d-6e69-4f5c-95f3-aebd020ce2e7/95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8
0::/reserved.slice/containerd.service
";
        expect(
            hybrid,
            "95cbe853416f52d927dec41f1406dd75015ea131244a1ca875a7cd4ebe927ac8",
            Some("8833712d-6e69-4f5c-95f3-aebd020ce2e7"),
            None,
        );
        // Besteffort with a version-1 UUID, and guaranteed pods (no QoS level in the path).
        expect(
            "3:cpu,cpuacct:/kubepods/besteffort/pod3d274242-8ee0-11e9-a8a6-1e68d864ef1a/3e74d3fd9db4c9dd921ae05c2502fb984d0cde1b36e581b13f79c639da4518a1\n",
            "3e74d3fd9db4c9dd921ae05c2502fb984d0cde1b36e581b13f79c639da4518a1",
            Some("3d274242-8ee0-11e9-a8a6-1e68d864ef1a"),
            None,
        );
        expect(
            "0::/kubepods/pod05e102bf-8744-4942-a241-9b6f07983a53/f52a212505a606972cf8614c3cb856539e71b77ecae33436c5ac442232fbacf8",
            "f52a212505a606972cf8614c3cb856539e71b77ecae33436c5ac442232fbacf8",
            Some("05e102bf-8744-4942-a241-9b6f07983a53"),
            None,
        );
        // A static pod (GKE): kubelet's 32-hex hash stands for the uid.
        expect(
            "0::/kubepods/burstable/podb53dfa9e2dc9b890f7fadb2770857b03/40c03570b6f4c30bc8d69923d37ee698f5cfcced92c7b7df1c47f6f7887378a9",
            "40c03570b6f4c30bc8d69923d37ee698f5cfcced92c7b7df1c47f6f7887378a9",
            Some("b53dfa9e2dc9b890f7fadb2770857b03"),
            None,
        );
    }

    #[test]
    fn v2_systemd_driver_containerd() {
        expect(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b6ba8c5_2d48_4f8a_9b6e_1a2b3c4d5e6f.slice/cri-containerd-bacb920470900725e0aa7d914fee5eb0854315448b024b6b8420ad8429c607ba.scope\n",
            "bacb920470900725e0aa7d914fee5eb0854315448b024b6b8420ad8429c607ba",
            Some("0b6ba8c5-2d48-4f8a-9b6e-1a2b3c4d5e6f"),
            Some("containerd"),
        );
        // Mixed separators in the slice name, as in the OpenTelemetry profiler's fixture.
        expect(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podf6f2d169_f2ae_4afa-95ed_06ff2ed6b288.slice/cri-containerd-b4d6d161c62525d726fa394b27df30e14f8ea5646313ada576b390de70cfc8cc.scope",
            "b4d6d161c62525d726fa394b27df30e14f8ea5646313ada576b390de70cfc8cc",
            Some("f6f2d169-f2ae-4afa-95ed-06ff2ed6b288"),
            Some("containerd"),
        );
        // Guaranteed QoS: the pod slice sits right under kubepods.slice.
        expect(
            "0::/kubepods.slice/kubepods-pod5bd00f86_afbb_48be_8c28_870231f0c8e8.slice/cri-containerd-66ab041f4941037ff8067b739df85fa85a31ef383f9efccb6890b98847cfceda.scope",
            "66ab041f4941037ff8067b739df85fa85a31ef383f9efccb6890b98847cfceda",
            Some("5bd00f86-afbb-48be-8c28-870231f0c8e8"),
            Some("containerd"),
        );
    }

    const CRIO_POD: &str = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c9f8a79_5391_454b_88cb_86190881cb96.slice";
    const A093: &str = "a09343ca97901516c25036e2b954421254f8c68b384b536064e8999f0c4ed18d";

    #[test]
    fn cri_o_container_and_its_conmon_sibling() {
        let uid = Some("2c9f8a79-5391-454b-88cb-86190881cb96");
        expect(
            &format!("{CRIO_POD}/crio-{A093}.scope"),
            A093,
            uid,
            Some("cri-o"),
        );
        // crun's nested cgroup inside the scope.
        expect(
            &format!("{CRIO_POD}/crio-{A093}.scope/container"),
            A093,
            uid,
            Some("cri-o"),
        );
        // conmon, the monitor beside the container, in the pod or (conmon_cgroup = "system.slice")
        // under system.slice: not the container.
        assert_eq!(
            id_only(&format!("{CRIO_POD}/crio-conmon-{A093}.scope")),
            None
        );
        assert_eq!(
            id_only(&format!("0::/system.slice/crio-conmon-{A093}.scope")),
            None
        );
        let v1_conmon = format!(
            "11:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c9f8a79_5391_454b_88cb_86190881cb96.slice/crio-conmon-{A093}.scope\n\
             10:pids:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c9f8a79_5391_454b_88cb_86190881cb96.slice/crio-conmon-{A093}.scope\n\
             1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2c9f8a79_5391_454b_88cb_86190881cb96.slice/crio-conmon-{A093}.scope\n\
             0::/\n"
        );
        assert_eq!(id_only(&v1_conmon), None);
        // cgroupfs driver.
        expect(
            "0::/kubepods/besteffort/pod897277d4-5e6f-4999-a976-b8340e8d075e/crio-a4d6b686848a610472a2eed3ae20d4d64b6b4819feb9fdfc7fd7854deaf59ef3",
            "a4d6b686848a610472a2eed3ae20d4d64b6b4819feb9fdfc7fd7854deaf59ef3",
            Some("897277d4-5e6f-4999-a976-b8340e8d075e"),
            Some("cri-o"),
        );
        assert_eq!(
            id_only(&format!(
                "0::/kubepods/besteffort/pod897277d4-5e6f-4999-a976-b8340e8d075e/crio-conmon-{A093}"
            )),
            None
        );
    }

    #[test]
    fn docker() {
        let v1_cgroupfs = "\
11:perf_event:/docker/b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f
10:devices:/docker/b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f
9:freezer:/docker/b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f
8:cpuset:/docker/b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f
7:cpu,cpuacct:/docker/b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f
6:blkio:/docker/b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f
5:memory:/docker/b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f
4:hugetlb:/docker/b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f
3:net_cls,net_prio:/docker/b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f
2:pids:/docker/b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f
1:name=systemd:/docker/b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f";
        expect(
            v1_cgroupfs,
            "b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f",
            None,
            Some("docker"),
        );
        let v1_systemd = "\
10:devices:/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope
9:blkio:/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope
8:memory:/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope
2:cpuacct,cpu:/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope
1:name=systemd:/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d.scope
";
        expect(
            v1_systemd,
            "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d",
            None,
            Some("docker"),
        );
        // v2 with a stale name=systemd line first.
        expect(
            "1:name=systemd:/\n0::/system.slice/docker-cf87ba651579c9231db817909e7865e5747bd7abcac0c57ce23cf4abbaee046b.scope\n",
            "cf87ba651579c9231db817909e7865e5747bd7abcac0c57ce23cf4abbaee046b",
            None,
            Some("docker"),
        );
        // A container running systemd, which moved its init into a child cgroup.
        expect(
            "0::/system.slice/docker-b1eba9dfaeba29d8b80532a574a03ea3cac29384327f339c26da13649e2120df.scope/init",
            "b1eba9dfaeba29d8b80532a574a03ea3cac29384327f339c26da13649e2120df",
            None,
            Some("docker"),
        );
        // Kubernetes on Docker (cri-dockerd), systemd driver.
        expect(
            "1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod482f0a01_7b3e_48cd_adb6_61c9097b43a4.slice/docker-b3079dba7a1cf909631c2f9e8ad38cc7f193e6ba8fe649d4d6f590a7d11b0509.scope",
            "b3079dba7a1cf909631c2f9e8ad38cc7f193e6ba8fe649d4d6f590a7d11b0509",
            Some("482f0a01-7b3e-48cd-adb6-61c9097b43a4"),
            Some("docker"),
        );
    }

    #[test]
    fn paths_relative_to_another_cgroup_namespace() {
        expect(
            "0::/../../pod2c48913c-b29f-11e7-9350-020968147796/9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961",
            "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961",
            Some("2c48913c-b29f-11e7-9350-020968147796"),
            None,
        );
        expect(
            "0::/../crio-45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814.scope",
            "45490e76e0878aaa4d9808f7d2eefba37f093c3efbba9838b6d8ab804d9bd814",
            None,
            Some("cri-o"),
        );
        expect(
            &format!("0::/../cri-containerd-{E8AC}.scope"),
            E8AC,
            None,
            Some("containerd"),
        );
        expect(
            "0::/../../kubepods-besteffort-pod0b6ba8c5_2d48_4f8a_9b6e_1a2b3c4d5e6f.slice/cri-containerd-bacb920470900725e0aa7d914fee5eb0854315448b024b6b8420ad8429c607ba.scope",
            "bacb920470900725e0aa7d914fee5eb0854315448b024b6b8420ad8429c607ba",
            Some("0b6ba8c5-2d48-4f8a-9b6e-1a2b3c4d5e6f"),
            Some("containerd"),
        );
        expect(
            "0::/../../../../system.slice/docker-ba7b10d15d16e10e3de7a2dcd408a3d971169ae303f46cfad4c5453c6326fee2.scope",
            "ba7b10d15d16e10e3de7a2dcd408a3d971169ae303f46cfad4c5453c6326fee2",
            None,
            Some("docker"),
        );
        assert_eq!(
            id_only("0::/../../user.slice/user-501.slice/session-3.scope"),
            None
        );
    }

    #[test]
    fn nested_runtimes_take_the_innermost_container() {
        // kind's node container (docker) runs kubelet with cgroup root /kubelet.
        expect(
            "0::/docker/8afe480d66074930353da456a1344caca810fe31c1e31f6e08c95a66887235d6/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod44c76ce5_f953_4bd3_bc89_12621681af49.slice/cri-containerd-40c03570b6f4c30bc8d69923d37ee698f5cfcced92c7b7df1c47f6f7887378a9.scope\n",
            "40c03570b6f4c30bc8d69923d37ee698f5cfcced92c7b7df1c47f6f7887378a9",
            Some("44c76ce5-f953-4bd3-bc89-12621681af49"),
            Some("containerd"),
        );
        // k3d: k3s (cgroupfs driver) inside a docker container.
        expect(
            "4:memory:/docker/8d461fa5765781bcf5f7eb192f101bc3103d4b932e26236f43feecfa20664f96/kubepods/besteffort/poddaa5c7ee-3484-4533-af39-3591564fd03e/aff34703e5e1f89443e9a1bffcc80f43f74d4808a2dd22c8f88c08547b323934",
            "aff34703e5e1f89443e9a1bffcc80f43f74d4808a2dd22c8f88c08547b323934",
            Some("daa5c7ee-3484-4533-af39-3591564fd03e"),
            None,
        );
        // runc given a systemd cgroupsPath while using cgroupfs (k3s, driver mismatch).
        expect(
            "12:cpu,cpuacct:/system.slice/containerd.service/kubepods-besteffort-podb41662f7_b03a_4c65_8ef9_6e4e55c3cf27.slice:cri-containerd:1753b7cbbf62734d812936961224d5bc0cf8f45214e0d5cdd1a781a053e7c48f",
            "1753b7cbbf62734d812936961224d5bc0cf8f45214e0d5cdd1a781a053e7c48f",
            Some("b41662f7-b03a-4c65-8ef9-6e4e55c3cf27"),
            Some("containerd"),
        );
        // The node's own services are in the node container...
        expect(
            "0::/system.slice/docker-8afe480d66074930353da456a1344caca810fe31c1e31f6e08c95a66887235d6.scope/system.slice/containerd.service",
            "8afe480d66074930353da456a1344caca810fe31c1e31f6e08c95a66887235d6",
            None,
            Some("docker"),
        );
        // ...but a process in a pod's cgroup and no container of it is in no container.
        assert_eq!(
            id_only(
                "0::/docker/8d461fa5765781bcf5f7eb192f101bc3103d4b932e26236f43feecfa20664f96/kubepods/besteffort/poddaa5c7ee-3484-4533-af39-3591564fd03e"
            ),
            None
        );
        // ...and neither is CRI-O's conmon in the pod.
        assert_eq!(
            id_only(&format!(
                "0::/docker/8d461fa5765781bcf5f7eb192f101bc3103d4b932e26236f43feecfa20664f96/kubepods/besteffort/poddaa5c7ee-3484-4533-af39-3591564fd03e/crio-conmon-{A093}"
            )),
            None
        );
        // Docker-in-docker inside a pod: the inner container is in no pod the path names.
        expect(
            &format!(
                "0::/kubepods/besteffort/poddaa5c7ee-3484-4533-af39-3591564fd03e/{E8AC}/docker/{A093}"
            ),
            A093,
            None,
            Some("docker"),
        );
    }

    #[test]
    fn the_first_line_with_a_container_wins() {
        let text = format!(
            "4:pids:/kubepods/besteffort/pod3d274242-8ee0-11e9-a8a6-1e68d864ef1a/{E8AC}\n\
             0::/system.slice/docker-{A093}.scope\n"
        );
        assert_eq!(id_only(&text).as_deref(), Some(E8AC));
    }

    #[test]
    fn no_container() {
        for text in [
            "",
            "0::/",
            "0::/init.scope",
            "0::/system.slice/ssh.service",
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/vte-spawn-868f9513-eee8-457d-8e36-1b37ae8ae622.scope",
            "0::/lxc.payload.first/system.slice/systemd-logind.service",
            "0::/podruntime/runtime",
            "0::/kubepods.slice/kubepods-besteffort.slice",
            "0::/system.slice/containerd.service/kubepods-besteffort-podb41662f7_b03a_4c65_8ef9_6e4e55c3cf27.slice:cri-containerd:short",
            // docker's daemon itself, v1.
            "11:perf_event:/\n10:devices:/system.slice/docker.service\n7:cpu,cpuacct:/system.slice/docker.service\n5:memory:/system.slice/docker.service\n2:pids:/system.slice/docker.service\n1:name=systemd:/system.slice/docker.service\n",
            "12:perf_event:/\n11:devices:/system.slice/ssh.service\n6:memory:/system.slice/ssh.service\n5:pids:/system.slice/ssh.service\n1:name=systemd:/system.slice/ssh.service\n0::/system.slice/ssh.service\n",
            "11:freezer:/\n10:blkio:/init.scope\n8:memory:/init.scope\n7:pids:/init.scope\n1:name=systemd:/system.slice/springboot.service\n",
            // Not 64 lowercase hex digits.
            "0::/docker/3726184226f5d3147c25fdeab5b60097e378e8a720503a5e19ecfdf29f86986",
            "0::/docker/3726184226f5d3147g25fdeab5b60097e378e8a720503a5e19ecfdf29f869860",
            "0::/docker/3726184226F5D3147C25FDEAB5B60097E378E8A720503A5E19ECFDF29F869860",
            "no colons at all",
        ] {
            assert_eq!(container_of_cgroup(text), None, "{text:?}");
        }
    }

    #[test]
    fn oversized_lines_are_ignored() {
        let long = format!(
            "5:memory:/{}/docker-{A093}.scope\n",
            "x".repeat(MAX_CGROUP_LINE_BYTES)
        );
        assert_eq!(id_only(&long), None);
        let then_short = format!("{long}4:pids:/docker/{E8AC}\n");
        assert_eq!(id_only(&then_short).as_deref(), Some(E8AC));
    }

    #[test]
    fn only_the_first_64_kib_count() {
        let filler = "1:name=systemd:/user.slice\n".repeat(MAX_CGROUP_FILE_BYTES / 27 + 1);
        assert!(filler.len() > MAX_CGROUP_FILE_BYTES);
        assert_eq!(id_only(&format!("{filler}0::/docker/{E8AC}\n")), None);
        // A line cut at the limit is dropped, not read as the shorter path it would become.
        let pad = MAX_CGROUP_FILE_BYTES - "0::/docker/".len() - 64 - 1;
        let head = format!("0::/{}\n", "p".repeat(pad - 5));
        let cut = format!("{head}0::/docker/{E8AC}/docker/{A093}\n");
        assert_eq!(
            head.len() + "0::/docker/".len() + 64 + 1,
            MAX_CGROUP_FILE_BYTES
        );
        assert_eq!(id_only(&cut), None);
        assert_eq!(id_only(&cut[head.len()..]).as_deref(), Some(A093));
    }

    #[test]
    fn reading_proc() {
        // Whatever this process's cgroup is, it reads; a PID above pid_max does not exist.
        assert!(container_of_pid(std::process::id()).is_ok());
        let err = container_of_pid(u32::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn pause_containers() {
        assert!(is_pause("pause", "/pause"));
        assert!(is_pause("pause", "/usr/bin/pause"));
        assert!(!is_pause("pause", "/usr/bin/pause-ui"));
        assert!(!is_pause("java", "/pause"));
        assert!(!is_pause("pause", "/usr/bin/java"));
    }

    // A pod list as the API server returns it (trimmed): an init container that ran, a running
    // container, one still being created (no containerID), a CRI-O pod, a pending pod.
    const POD_LIST: &str = r#"{
  "kind": "PodList",
  "apiVersion": "v1",
  "metadata": {"resourceVersion": "48213765"},
  "items": [
    {
      "metadata": {
        "name": "checkout-7d9f8c6b5-qx2lm",
        "generateName": "checkout-7d9f8c6b5-",
        "namespace": "shop",
        "uid": "0b6ba8c5-2d48-4f8a-9b6e-1a2b3c4d5e6f",
        "resourceVersion": "48213001",
        "creationTimestamp": "2025-03-02T09:14:27Z",
        "labels": {"app.kubernetes.io/name": "checkout", "pod-template-hash": "7d9f8c6b5"},
        "annotations": {
          "kubectl.kubernetes.io/restartedAt": "2025-03-02T09:14:00Z",
          "pyroscope.io/service_name": "shop-checkout",
          "leaktrace.io/trace": "true"
        },
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-7d9f8c6b5", "uid": "5f0c3c52-8d35-4b8e-a1f4-2b1de3b0c9aa", "controller": true, "blockOwnerDeletion": true}],
        "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": "2025-03-02T09:14:27Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]
      },
      "spec": {
        "volumes": [{"name": "kube-api-access-7x2zq", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}], "defaultMode": 420}}],
        "initContainers": [{"name": "migrate", "image": "registry.example.com/shop/checkout:1.42.0", "command": ["/app/migrate"], "resources": {}}],
        "containers": [
          {"name": "checkout", "image": "registry.example.com/shop/checkout:1.42.0", "ports": [{"containerPort": 8080, "protocol": "TCP"}], "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
          {"name": "envoy", "image": "envoyproxy/envoy:v1.29.1", "resources": {}}
        ],
        "restartPolicy": "Always",
        "serviceAccountName": "default",
        "nodeName": "ip-10-0-1-23.ec2.internal",
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
      },
      "status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "False", "lastProbeTime": null, "lastTransitionTime": "2025-03-02T09:14:31Z", "reason": "ContainersNotReady"}],
        "hostIP": "10.0.1.23",
        "podIP": "10.0.1.77",
        "podIPs": [{"ip": "10.0.1.77"}],
        "startTime": "2025-03-02T09:14:27Z",
        "initContainerStatuses": [{
          "name": "migrate",
          "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "2025-03-02T09:14:28Z", "finishedAt": "2025-03-02T09:14:30Z", "containerID": "containerd://5d7f0c6e1b2a39480d6c3b7e9f1a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"}},
          "lastState": {},
          "ready": true,
          "restartCount": 0,
          "image": "registry.example.com/shop/checkout:1.42.0",
          "imageID": "registry.example.com/shop/checkout@sha256:1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988",
          "containerID": "containerd://5d7f0c6e1b2a39480d6c3b7e9f1a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d",
          "started": false
        }],
        "containerStatuses": [
          {
            "name": "checkout",
            "state": {"running": {"startedAt": "2025-03-02T09:14:31Z"}},
            "lastState": {},
            "ready": true,
            "restartCount": 0,
            "image": "registry.example.com/shop/checkout:1.42.0",
            "imageID": "registry.example.com/shop/checkout@sha256:1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c5b6a7988",
            "containerID": "containerd://bacb920470900725e0aa7d914fee5eb0854315448b024b6b8420ad8429c607ba",
            "started": true
          },
          {
            "name": "envoy",
            "state": {"waiting": {"reason": "ContainerCreating"}},
            "lastState": {},
            "ready": false,
            "restartCount": 0,
            "image": "envoyproxy/envoy:v1.29.1",
            "imageID": "",
            "started": false
          }
        ],
        "qosClass": "Burstable"
      }
    },
    {
      "metadata": {
        "name": "node-exporter-9xk2p",
        "namespace": "monitoring",
        "uid": "2c9f8a79-5391-454b-88cb-86190881cb96",
        "resourceVersion": "48100234",
        "labels": {"app": "node-exporter"}
      },
      "spec": {"containers": [{"name": "node-exporter", "image": "quay.io/prometheus/node-exporter:v1.8.2"}], "nodeName": "ip-10-0-1-23.ec2.internal", "hostPID": true},
      "status": {
        "phase": "Running",
        "containerStatuses": [{"name": "node-exporter", "state": {"running": {"startedAt": "2025-03-01T07:00:02Z"}}, "lastState": {}, "ready": true, "restartCount": 1, "image": "quay.io/prometheus/node-exporter:v1.8.2", "imageID": "quay.io/prometheus/node-exporter@sha256:4032c6d5bfd752342c3e631c2f1de93ba6b86c41db6b167b9a35372c139e7706", "containerID": "cri-o://a09343ca97901516c25036e2b954421254f8c68b384b536064e8999f0c4ed18d", "started": true}],
        "qosClass": "BestEffort"
      }
    },
    {
      "metadata": {"name": "batch-28391-abcde", "namespace": "jobs", "uid": "7a1c2e3f-4b5d-4c6e-8f90-a1b2c3d4e5f6", "resourceVersion": "48213700"},
      "spec": {"containers": [{"name": "job", "image": "busybox"}], "nodeName": "ip-10-0-1-23.ec2.internal"},
      "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2025-03-02T09:20:00Z"}], "qosClass": "BestEffort"}
    }
  ]
}"#;

    const CHECKOUT: &str = "bacb920470900725e0aa7d914fee5eb0854315448b024b6b8420ad8429c607ba";
    const MIGRATE: &str = "5d7f0c6e1b2a39480d6c3b7e9f1a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";

    fn by_id(id: &str) -> ContainerRef {
        ContainerRef {
            id: id.to_owned(),
            pod_uid: None,
            runtime: None,
        }
    }

    fn listed() -> PodIndex {
        let mut index = PodIndex::new(PodIndexConfig::default());
        let list: PodList = serde_json::from_str(POD_LIST).unwrap();
        assert_eq!(index.apply_list(&list).as_deref(), Some("48213765"));
        index
    }

    fn event(json: &str) -> WatchEvent {
        parse_watch_line(json).unwrap()
    }

    #[test]
    fn a_pod_list_indexes_containers_with_ids() {
        let index = listed();
        assert_eq!(index.resource_version(), Some("48213765"));
        // The containers that have ids; the pending pod and the container being created have none.
        assert_eq!(index.containers.len(), 3);
        assert_eq!(index.pods.len(), 2);

        let checkout = index.lookup(&by_id(CHECKOUT)).unwrap();
        assert_eq!(
            checkout,
            &ContainerInfo {
                namespace: "shop".into(),
                pod: "checkout-7d9f8c6b5-qx2lm".into(),
                pod_uid: "0b6ba8c5-2d48-4f8a-9b6e-1a2b3c4d5e6f".into(),
                container: "checkout".into(),
                labels: BTreeMap::from([
                    ("app.kubernetes.io/name".into(), "checkout".into()),
                    ("pod-template-hash".into(), "7d9f8c6b5".into()),
                ]),
                // The restartedAt annotation is not in the allowlist.
                annotations: BTreeMap::from([
                    ("leaktrace.io/trace".into(), "true".into()),
                    ("pyroscope.io/service_name".into(), "shop-checkout".into()),
                ]),
            }
        );
        assert_eq!(index.lookup(&by_id(MIGRATE)).unwrap().container, "migrate");
        let exporter = index.lookup(&by_id(A093)).unwrap();
        assert_eq!(
            (exporter.namespace.as_str(), exporter.container.as_str()),
            ("monitoring", "node-exporter")
        );
        assert!(exporter.annotations.is_empty());
        assert_eq!(index.lookup(&by_id(E8AC)), None);
    }

    #[test]
    fn from_cgroup_to_service_name() {
        let index = listed();
        let text = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b6ba8c5_2d48_4f8a_9b6e_1a2b3c4d5e6f.slice/cri-containerd-bacb920470900725e0aa7d914fee5eb0854315448b024b6b8420ad8429c607ba.scope\n";
        let cref = container_of_cgroup(text).unwrap();
        let info = index.lookup(&cref);
        assert_eq!(info.map(|i| i.pod_uid.as_str()), cref.pod_uid.as_deref());
        assert_eq!(service_name(info, "checkout"), "shop-checkout");
        // Known pod, unknown container (e.g. the sandbox): no guess from the pod uid.
        let sandbox = ContainerRef {
            id: E8AC.into(),
            ..cref
        };
        assert_eq!(index.lookup(&sandbox), None);
    }

    #[test]
    fn watch_events_keep_the_index_current() {
        let mut index = listed();
        let restarted = r#"{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"checkout-7d9f8c6b5-qx2lm","namespace":"shop","uid":"0b6ba8c5-2d48-4f8a-9b6e-1a2b3c4d5e6f","resourceVersion":"48213802","labels":{"app.kubernetes.io/name":"checkout"}},"spec":{"nodeName":"ip-10-0-1-23.ec2.internal"},"status":{"phase":"Running","containerStatuses":[{"name":"checkout","state":{"running":{"startedAt":"2025-03-02T10:01:12Z"}},"lastState":{"terminated":{"exitCode":137,"reason":"OOMKilled","containerID":"containerd://bacb920470900725e0aa7d914fee5eb0854315448b024b6b8420ad8429c607ba"}},"ready":true,"restartCount":1,"containerID":"containerd://e8ac3efec3322d7f13cfa0cdee4344754d01bd4e50fea44e0753e83fdb74cab3","started":true},{"name":"envoy","state":{"running":{}},"containerID":"containerd://66ab041f4941037ff8067b739df85fa85a31ef383f9efccb6890b98847cfceda"}]}}}"#;
        index.apply_event(&event(restarted)).unwrap();
        assert_eq!(index.resource_version(), Some("48213802"));
        // The restarted container's old id and the finished init container are gone with the
        // pod's old status.
        assert_eq!(index.lookup(&by_id(CHECKOUT)), None);
        assert_eq!(index.lookup(&by_id(MIGRATE)), None);
        let checkout = index.lookup(&by_id(E8AC)).unwrap();
        assert_eq!(checkout.container, "checkout");
        assert!(checkout.annotations.is_empty());
        assert_eq!(
            index
                .lookup(&by_id(
                    "66ab041f4941037ff8067b739df85fa85a31ef383f9efccb6890b98847cfceda"
                ))
                .unwrap()
                .container,
            "envoy"
        );

        let added = r#"{"type":"ADDED","object":{"metadata":{"name":"debug","namespace":"shop","uid":"11111111-2222-4333-8444-555555555555","resourceVersion":"48213900"},"spec":{"nodeName":"ip-10-0-1-23.ec2.internal"},"status":{"containerStatuses":[{"name":"main","containerID":"docker://b43d92bf1e5c6f78bb9b7bc6f40721280299855ba692092716e3a1b6c0b86f3f"}],"ephemeralContainerStatuses":[{"name":"debugger-x7k2","containerID":"containerd://9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"}]}}}"#;
        index.apply_event(&event(added)).unwrap();
        assert_eq!(
            index
                .lookup(&by_id(
                    "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"
                ))
                .unwrap()
                .container,
            "debugger-x7k2"
        );
        assert_eq!(index.pods.len(), 3);

        let deleted = r#"{"type":"DELETED","object":{"metadata":{"name":"checkout-7d9f8c6b5-qx2lm","namespace":"shop","uid":"0b6ba8c5-2d48-4f8a-9b6e-1a2b3c4d5e6f","resourceVersion":"48214000"},"status":{"containerStatuses":[]}}}"#;
        index.apply_event(&event(deleted)).unwrap();
        assert_eq!(index.lookup(&by_id(E8AC)), None);
        assert_eq!(index.pods.len(), 2);
        assert_eq!(index.resource_version(), Some("48214000"));

        // Bookmarks as the API server writes them, nulls included.
        let bookmark = r#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"48214521","creationTimestamp":null,"annotations":{"k8s.io/initial-events-end":"true"}},"spec":{"containers":null},"status":{}}}"#;
        index.apply_event(&event(bookmark)).unwrap();
        assert_eq!(index.resource_version(), Some("48214521"));
        assert_eq!(index.pods.len(), 2);
        assert_eq!(
            watch_path("n", index.resource_version()),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dn&watch=true&resourceVersion=48214521&allowWatchBookmarks=true&timeoutSeconds=300"
        );
    }

    #[test]
    fn watch_errors() {
        let mut index = listed();
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 48213765 (48220012)","reason":"Expired","code":410}}"#;
        let err = index.apply_event(&event(gone)).unwrap_err();
        assert!(
            matches!(&err, WatchError::Expired { message } if message.contains("too old")),
            "{err}"
        );
        // Only a relist gives a resource version to watch from.
        assert_eq!(index.resource_version(), None);
        assert_eq!(index.containers.len(), 3);

        let internal = r#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcdserver: request timed out","reason":"InternalError","code":500}}"#;
        let err = index.apply_event(&event(internal)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "watch failed with status 500 (InternalError): etcdserver: request timed out"
        );
    }

    #[test]
    fn watch_lines() {
        // The stream's newline (and a proxy's \r) are fine; the field order is not fixed.
        let line =
            "{\"object\":{\"metadata\":{\"resourceVersion\":\"7\"}},\"type\":\"BOOKMARK\"}\r\n";
        assert!(matches!(
            parse_watch_line(line),
            Ok(WatchEvent::Bookmark(_))
        ));
        let err = parse_watch_line(r#"{"type":"RENAMED","object":{}}"#).unwrap_err();
        assert!(matches!(err, WatchError::Json(_)), "{err}");
        let err = parse_watch_line(r#"{"type":"ADDED","object":{"metadata":"#).unwrap_err();
        assert!(
            err.to_string().starts_with("malformed watch line: "),
            "{err}"
        );

        let huge = format!(
            r#"{{"type":"ADDED","object":{{"metadata":{{"annotations":{{"a":"{}"}}}}}}}}"#,
            "x".repeat(MAX_WATCH_LINE_BYTES)
        );
        let err = parse_watch_line(&huge).unwrap_err();
        assert!(
            matches!(err, WatchError::LineTooLong { len, max } if len == huge.len() && max == MAX_WATCH_LINE_BYTES),
            "{err}"
        );
        let at_limit = format!(
            r#"{{"type":"ADDED","object":{{"metadata":{{"annotations":{{"a":"{}"}}}}}}}}"#,
            "x".repeat(MAX_WATCH_LINE_BYTES - 100)
        );
        assert!(parse_watch_line(&at_limit).is_ok());
    }

    fn pod(uid: &str, id: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p-{uid}"), "namespace": "ns", "uid": uid},
            "spec": {"nodeName": "node-a"},
            "status": {"containerStatuses": [{"name": "c", "containerID": format!("containerd://{id}")}]}
        }))
        .unwrap()
    }

    fn hex_id(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[test]
    fn at_most_max_pods() {
        let mut index = PodIndex::new(PodIndexConfig {
            max_pods: 2,
            ..PodIndexConfig::default()
        });
        let list = PodList {
            items: (1..=3)
                .map(|n| pod(&format!("uid-{n}"), &hex_id(n)))
                .collect(),
            ..PodList::default()
        };
        // Synthetic uids are fine: the index keys on whatever the API says.
        index.apply_list(&list);
        assert_eq!(index.pods.len(), 2);
        assert!(index.lookup(&by_id(&hex_id(3))).is_none());
        // A known pod still updates at the cap; a new one waits for room.
        let modified = WatchEvent::Modified(pod("uid-1", &hex_id(11)));
        index.apply_event(&modified).unwrap();
        assert!(index.lookup(&by_id(&hex_id(11))).is_some());
        index
            .apply_event(&WatchEvent::Added(pod("uid-4", &hex_id(4))))
            .unwrap();
        assert!(index.lookup(&by_id(&hex_id(4))).is_none());
        index
            .apply_event(&WatchEvent::Deleted(pod("uid-2", &hex_id(2))))
            .unwrap();
        index
            .apply_event(&WatchEvent::Added(pod("uid-4", &hex_id(4))))
            .unwrap();
        assert!(index.lookup(&by_id(&hex_id(4))).is_some());
        assert_eq!(index.pods.len(), 2);
    }

    #[test]
    fn strings_and_label_counts_are_bounded() {
        let mut index = PodIndex::new(PodIndexConfig {
            max_labels: 3,
            ..PodIndexConfig::default()
        });
        let mut p = pod("uid-1", &hex_id(1));
        // Two-byte characters: the cut must land on a character boundary.
        let long = "é".repeat(MAX_VALUE_BYTES);
        p.metadata.labels = (0..5).map(|n| (format!("k{n}"), long.clone())).collect();
        p.metadata
            .labels
            .insert("a".repeat(MAX_VALUE_BYTES + 1), "v".into());
        p.metadata
            .annotations
            .insert(SERVICE_NAME_ANNOTATION.into(), long.clone());
        index.apply_event(&WatchEvent::Added(p)).unwrap();
        let info = index.lookup(&by_id(&hex_id(1))).unwrap();
        assert_eq!(
            info.labels.keys().collect::<Vec<_>>(),
            ["k0", "k1", "k2"],
            "the over-long key is dropped, then the first keys kept"
        );
        assert_eq!(info.labels["k0"], "é".repeat(MAX_VALUE_BYTES / 2));
        assert_eq!(
            info.annotations[SERVICE_NAME_ANNOTATION].len(),
            MAX_VALUE_BYTES
        );
    }

    #[test]
    fn pods_of_other_nodes_and_without_uid_are_skipped() {
        let mut index = PodIndex::new(PodIndexConfig {
            node_name: Some("node-b".into()),
            ..PodIndexConfig::default()
        });
        index
            .apply_event(&WatchEvent::Added(pod("uid-1", &hex_id(1))))
            .unwrap();
        index
            .apply_event(&WatchEvent::Added(pod("", &hex_id(2))))
            .unwrap();
        assert!(index.pods.is_empty() && index.containers.is_empty());
        // Statuses whose id no cgroup path could carry are not kept.
        let mut index = PodIndex::new(PodIndexConfig::default());
        let mut p = pod("uid-1", &hex_id(1));
        p.status.container_statuses[0].container_id = Some("containerd://abc".into());
        index.apply_event(&WatchEvent::Added(p)).unwrap();
        assert!(index.pods.is_empty());
    }

    #[test]
    fn service_name_precedence() {
        let mut info = ContainerInfo {
            namespace: "shop".into(),
            pod: "checkout-7d9f8c6b5-qx2lm".into(),
            pod_uid: "0b6ba8c5-2d48-4f8a-9b6e-1a2b3c4d5e6f".into(),
            container: "checkout".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::from([(SERVICE_NAME_ANNOTATION.into(), "shop-checkout".into())]),
        };
        assert_eq!(service_name(Some(&info), "java"), "shop-checkout");
        info.annotations
            .insert(SERVICE_NAME_ANNOTATION.into(), " ".into());
        assert_eq!(service_name(Some(&info), "java"), "shop/checkout");
        info.annotations.clear();
        assert_eq!(service_name(Some(&info), "java"), "shop/checkout");
        info.container.clear();
        assert_eq!(service_name(Some(&info), "java"), "java");
        assert_eq!(service_name(None, "java"), "java");
    }

    #[test]
    fn api_paths() {
        assert_eq!(
            list_path("ip-10-0-1-23.ec2.internal"),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dip-10-0-1-23.ec2.internal"
        );
        assert_eq!(
            watch_path("ip-10-0-1-23.ec2.internal", None),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dip-10-0-1-23.ec2.internal&watch=true&allowWatchBookmarks=true&timeoutSeconds=300"
        );
        assert_eq!(
            watch_path("node-a", Some("48213765")),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&watch=true&resourceVersion=48213765&allowWatchBookmarks=true&timeoutSeconds=300"
        );
        assert_eq!(watch_path("node-a", Some("")), watch_path("node-a", None));
        // Selector syntax is escaped, then everything outside RFC 3986's unreserved set encoded.
        assert_eq!(
            list_path("a b,c=d&e/f\\é"),
            "/api/v1/pods?fieldSelector=spec.nodeName%3Da%20b%5C%2Cc%5C%3Dd%26e%2Ff%5C%5C%C3%A9"
        );
    }
}
