//! The agent's configuration: its flags and the equivalent YAML file, merged
//! into one [`Config`] with the selection rules compiled.
use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use regex::Regex;
use serde::Deserialize;

use super::push::{Auth, PushConfig, Wire};
use crate::cli::parse_duration;

/// Where the agent listens unless told otherwise: loopback only (see docs/agent.md).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9847";

/// The agent's settings, flags over file.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// This node's name (the `node` label, and the pods watched).
    pub node: String,
    pub discover_every: Duration,
    pub min_age: Duration,
    pub max_targets: usize,
    pub rules: Vec<Rule>,
    pub push: Option<PushConfig>,
    /// Parca, beside or instead of Pyroscope (same interval).
    pub parca: Option<PushConfig>,
    pub push_interval: Duration,
    pub kubernetes: Kubernetes,
    /// Stop after this long (tests, trials); default: until SIGTERM.
    pub duration: Option<Duration>,
}

/// Where the pods of this node are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kubernetes {
    /// No Kubernetes: process rules only.
    None,
    /// The service account's token and CA in a pod (`KUBERNETES_SERVICE_HOST`).
    InCluster,
    Kubeconfig(PathBuf),
}

/// One selection rule: the first whose every condition holds decides.
#[derive(Debug)]
pub struct Rule {
    pub include: bool,
    pub when: Match,
}

/// Conditions of a rule, all of which must hold. Kubernetes conditions never
/// hold for a process outside a known pod.
#[derive(Debug, Default)]
pub struct Match {
    pub namespace: Option<String>,
    pub pod_labels: BTreeMap<String, String>,
    /// The pod has `leaktrace.io/trace: "true"`.
    pub annotation: bool,
    pub container: Option<String>,
    pub comm: Option<Regex>,
    pub exe: Option<Regex>,
}

impl Match {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = &self.namespace {
            parts.push(format!("namespace={n}"));
        }
        for (k, v) in &self.pod_labels {
            parts.push(format!("label {k}={v}"));
        }
        if self.annotation {
            parts.push("annotation leaktrace.io/trace".to_string());
        }
        if let Some(c) = &self.container {
            parts.push(format!("container={c}"));
        }
        if let Some(r) = &self.comm {
            parts.push(format!("comm~{}", r.as_str()));
        }
        if let Some(r) = &self.exe {
            parts.push(format!("exe~{}", r.as_str()));
        }
        parts.join(", ")
    }
}

/// The command line's share (see cli.rs `AgentArgs`).
#[derive(Debug, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub node: Option<String>,
    pub match_comm: Vec<String>,
    pub exclude_comm: Vec<String>,
    pub match_exe: Vec<String>,
    pub namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub opt_in: bool,
    pub min_age: Option<Duration>,
    pub max_targets: Option<usize>,
    pub discover_every: Option<Duration>,
    pub push_url: Option<String>,
    pub push_interval: Option<Duration>,
    pub push_tenant: Option<String>,
    pub push_bearer_token_file: Option<PathBuf>,
    pub parca_url: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub no_kubernetes: bool,
    pub duration: Option<Duration>,
}

/// The YAML file: the same settings as the flags (docs/agent.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<SocketAddr>,
    node: Option<String>,
    discover_every: Option<String>,
    min_age: Option<String>,
    max_targets: Option<usize>,
    /// `- include: {…}`: YAML maps, not tags.
    #[serde(default, with = "serde_norway::with::singleton_map_recursive")]
    rules: Vec<FileRule>,
    push: Option<FilePush>,
    parca: Option<FileParca>,
    kubeconfig: Option<PathBuf>,
    kubernetes: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum FileRule {
    Include(FileMatch),
    Exclude(FileMatch),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMatch {
    namespace: Option<String>,
    #[serde(default)]
    pod_labels: BTreeMap<String, String>,
    #[serde(default)]
    annotation: bool,
    container: Option<String>,
    comm: Option<String>,
    exe: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePush {
    url: String,
    interval: Option<String>,
    tenant: Option<String>,
    bearer_token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileParca {
    url: String,
}

/// A config file is small; a bigger one is a mistake.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl Config {
    /// The settings of `flags` over those of the file it names; every error is
    /// one line that says what to change.
    pub fn new(flags: Flags) -> Result<Config, String> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => File::default(),
        };
        let duration = |what: &str, s: Option<String>| {
            s.map(|s| parse_duration(&s).map_err(|e| format!("{what}: {e}")))
                .transpose()
        };
        let discover_every = flags
            .discover_every
            .or(duration("discover_every", file.discover_every)?)
            .unwrap_or(Duration::from_secs(5));
        let min_age = flags
            .min_age
            .or(duration("min_age", file.min_age)?)
            .unwrap_or(Duration::from_secs(30));
        let max_targets = flags.max_targets.or(file.max_targets).unwrap_or(32);
        if discover_every.is_zero() {
            return Err("--discover-every must be longer than zero".into());
        }
        if max_targets == 0 {
            return Err("--max-targets must be at least 1".into());
        }
        let mut rules = Vec::new();
        // The flags' excludes first, then the file's ordered rules, then the flags' includes.
        for n in flags.exclude_namespaces {
            rules.push(rule(false, FileMatch::namespace(n))?);
        }
        for r in flags.exclude_comm {
            rules.push(rule(false, FileMatch::comm(r))?);
        }
        for r in file.rules {
            rules.push(match r {
                FileRule::Include(m) => rule(true, m)?,
                FileRule::Exclude(m) => rule(false, m)?,
            });
        }
        for n in flags.namespaces {
            rules.push(rule(true, FileMatch::namespace(n))?);
        }
        for r in flags.match_comm {
            rules.push(rule(true, FileMatch::comm(r))?);
        }
        for r in flags.match_exe {
            rules.push(rule(true, FileMatch::exe(r))?);
        }
        if flags.opt_in {
            rules.push(rule(
                true,
                FileMatch {
                    annotation: true,
                    ..FileMatch::default()
                },
            )?);
        }
        if !rules.iter().any(|r| r.include) {
            return Err("no rule selects anything to trace: give --match-comm REGEX, --namespace NS, --opt-in, or include rules in --config".into());
        }
        let file_push = file.push.unwrap_or_default();
        let push_url = flags
            .push_url
            .or((!file_push.url.is_empty()).then_some(file_push.url));
        let push_interval = flags
            .push_interval
            .or(duration("push.interval", file_push.interval)?)
            .unwrap_or(Duration::from_secs(15));
        if push_interval < Duration::from_secs(1) {
            return Err("--push-interval must be at least 1s".into());
        }
        let push = match push_url {
            None => None,
            Some(url) => {
                let auth = auth(flags.push_bearer_token_file.or(file_push.bearer_token_file))?;
                let mut config = PushConfig::new(url);
                config.tenant = flags.push_tenant.or(file_push.tenant);
                config.auth = auth;
                config.check().map_err(|e| format!("--push-url: {e}"))?;
                Some(config)
            }
        };
        let parca = match flags.parca_url.or(file.parca.map(|p| p.url)) {
            None => None,
            Some(url) => {
                let mut config = PushConfig::new(url);
                config.wire = Wire::Parca;
                config.check().map_err(|e| format!("--parca-url: {e}"))?;
                Some(config)
            }
        };
        let kubernetes = if flags.no_kubernetes || file.kubernetes == Some(false) {
            Kubernetes::None
        } else if let Some(path) = flags.kubeconfig.or(file.kubeconfig) {
            Kubernetes::Kubeconfig(path)
        } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            Kubernetes::InCluster
        } else {
            Kubernetes::None
        };
        let node = flags
            .node
            .or(file.node)
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|n| !n.is_empty())
            .or_else(hostname)
            .unwrap_or_default();
        if kubernetes != Kubernetes::None && node.is_empty() {
            return Err("the node's name is unknown: give --node NAME or set NODE_NAME (the DaemonSet sets it from spec.nodeName)".into());
        }
        Ok(Config {
            listen: flags
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a valid address")),
            node,
            discover_every,
            min_age,
            max_targets,
            rules,
            push,
            parca,
            push_interval,
            kubernetes,
            duration: flags.duration,
        })
    }
}

fn read_file(path: &std::path::Path) -> Result<File, String> {
    use std::io::Read;
    let shown = path.display();
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES).read_to_string(&mut text))
        .map_err(|e| format!("--config {shown}: {e}"))?;
    serde_norway::from_str(&text).map_err(|e| {
        let msg = e.to_string().replace('\n', " ");
        format!("--config {shown}: {msg}")
    })
}

/// Basic auth from `LEAKTRACE_PUSH_USER`/`LEAKTRACE_PUSH_PASSWORD` (not a
/// flag: it would show in `ps`), or a bearer token read from a file.
fn auth(token_file: Option<PathBuf>) -> Result<Option<Auth>, String> {
    if let Some(path) = token_file {
        let token = std::fs::read_to_string(&path)
            .map_err(|e| format!("--push-bearer-token-file {}: {e}", path.display()))?;
        return Ok(Some(Auth::Bearer(token.trim().to_string())));
    }
    Ok(std::env::var("LEAKTRACE_PUSH_USER")
        .ok()
        .map(|user| Auth::Basic {
            user,
            password: std::env::var("LEAKTRACE_PUSH_PASSWORD").unwrap_or_default(),
        }))
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
}

impl FileMatch {
    fn namespace(n: String) -> Self {
        FileMatch {
            namespace: Some(n),
            ..FileMatch::default()
        }
    }

    fn comm(r: String) -> Self {
        FileMatch {
            comm: Some(r),
            ..FileMatch::default()
        }
    }

    fn exe(r: String) -> Self {
        FileMatch {
            exe: Some(r),
            ..FileMatch::default()
        }
    }
}

fn rule(include: bool, m: FileMatch) -> Result<Rule, String> {
    let regex = |what: &str, r: Option<String>| {
        r.map(|r| {
            // Bounded: a pattern is the user's, but a huge one is a mistake.
            regex::RegexBuilder::new(&r)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    let msg = e.to_string().replace('\n', " ");
                    format!("{what} `{r}` is not a valid regular expression: {msg}")
                })
        })
        .transpose()
    };
    let when = Match {
        namespace: m.namespace,
        pod_labels: m.pod_labels,
        annotation: m.annotation,
        container: m.container,
        comm: regex("comm", m.comm)?,
        exe: regex("exe", m.exe)?,
    };
    let empty = when.namespace.is_none()
        && when.pod_labels.is_empty()
        && !when.annotation
        && when.container.is_none()
        && when.comm.is_none()
        && when.exe.is_none();
    if empty {
        return Err("a rule without conditions: give at least one of namespace, pod_labels, annotation, container, comm, exe".into());
    }
    Ok(Rule { include, when })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(yaml: &str) -> Result<Config, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("leaktrace-config-{}-{n}.yaml", std::process::id()));
        std::fs::write(&path, yaml).unwrap();
        let config = Config::new(Flags {
            config: Some(path.clone()),
            no_kubernetes: true,
            ..Flags::default()
        });
        std::fs::remove_file(&path).unwrap();
        config
    }

    #[test]
    fn the_file_gives_ordered_rules_and_settings() {
        let config = with_file(
            "listen: 0.0.0.0:9999\nmin_age: 10s\nmax_targets: 4\nrules:\n  - exclude: { namespace: kube-system }\n  - include: { namespace: shop, pod_labels: { app: api } }\n  - include: { comm: \"^redis\" }\npush:\n  url: http://pyroscope:4040/\n  tenant: team-a\n",
        )
        .unwrap();
        assert_eq!(config.listen.port(), 9999);
        assert_eq!(config.min_age, Duration::from_secs(10));
        assert_eq!(config.max_targets, 4);
        let rules: Vec<(bool, String)> = config
            .rules
            .iter()
            .map(|r| (r.include, r.when.describe()))
            .collect();
        assert_eq!(
            rules,
            [
                (false, "namespace=kube-system".to_string()),
                (true, "namespace=shop, label app=api".to_string()),
                (true, "comm~^redis".to_string()),
            ]
        );
        let push = config.push.unwrap();
        assert_eq!(push.tenant.as_deref(), Some("team-a"));
    }

    /// The rules shipped in deploy/configmap.yaml are what the parser takes.
    #[test]
    fn the_shipped_config_parses() {
        let manifest = include_str!("../../../deploy/configmap.yaml");
        let (_, body) = manifest
            .split_once("config.yaml: |")
            .expect("a config.yaml key");
        let yaml: String = body
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let config = with_file(&yaml).unwrap();
        assert!(config.rules.iter().any(|r| r.include), "{:?}", config.rules);
    }

    #[test]
    fn mistakes_are_one_line_that_say_what_to_change() {
        let err = with_file("rules:\n  - include: { comm: \"(\" }\n").unwrap_err();
        assert!(err.contains("not a valid regular expression"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = with_file("rules:\n  - include: { colour: red }\n").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = with_file("rules:\n  - exclude: { comm: x }\n").unwrap_err();
        assert!(err.contains("no rule selects"), "{err}");
        let err = with_file("rules:\n  - include: {}\n").unwrap_err();
        assert!(err.contains("without conditions"), "{err}");
        let err =
            with_file("rules:\n  - include: { comm: x }\npush:\n  url: ftp://x\n").unwrap_err();
        assert!(err.contains("--push-url"), "{err}");
    }
}
