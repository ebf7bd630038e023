//! deploy/: the Kubernetes manifests validate against the API's schemas
//! (kubernetes-validate --strict), the least-privilege DaemonSet differs from
//! the privileged one only in its security context, the Grafana dashboard
//! queries only metrics the agent exports, and the alert rules load and fire
//! as their unit tests say (promtool). Tools from `cargo xtask setup`; no
//! cluster, no root.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// Every metric `leaktrace agent` exports (docs/agent.md).
const METRICS: &[&str] = &[
    "leaktrace_outstanding_bytes",
    "leaktrace_open_descriptors",
    "leaktrace_goroutines",
    "leaktrace_threads",
    "leaktrace_sites",
    "leaktrace_leaking_bytes",
    "leaktrace_growth_bytes_per_second",
    "leaktrace_allocated_bytes_total",
    "leaktrace_memory_limit_bytes",
    "leaktrace_time_to_memory_limit_seconds",
    "leaktrace_processes",
    "leaktrace_agent_targets",
    "leaktrace_agent_events_total",
    "leaktrace_agent_lost_events_total",
    "leaktrace_agent_push_requests_total",
    "leaktrace_agent_push_queue_length",
    "leaktrace_agent_cpu_seconds_total",
    "leaktrace_agent_resident_memory_bytes",
    "leaktrace_agent_info",
    "leaktrace_agent_sites_left_out_total",
];

/// What the least-privilege DaemonSet adds to an empty capability set.
const CAPABILITIES: &[&str] = &[
    "BPF",
    "PERFMON",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
    "CHECKPOINT_RESTORE",
    "KILL",
];

/// Files in deploy/ that are not Kubernetes objects.
const NOT_MANIFESTS: &[&str] = &["kustomization.yaml", "alerts.yaml", "alerts_test.yaml"];

/// The oldest Kubernetes the manifests are for: `appArmorProfile` is a
/// securityContext field from 1.30 on.
const OLDEST_KUBERNETES: &str = "1.30.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy() -> PathBuf {
    root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A tool `cargo xtask setup` installs under target/toolchains: missing is a
/// failure, not a skip.
fn tool(relative: &str) -> Command {
    let path = root().join("target/toolchains").join(relative);
    assert!(
        path.exists(),
        "{} missing: run cargo xtask setup",
        path.display()
    );
    Command::new(path)
}

fn kubernetes_validate() -> Command {
    tool("pyvenv/bin/kubernetes-validate")
}

fn promtool() -> Command {
    tool("prometheus/usr/bin/promtool")
}

fn run(mut cmd: Command) -> (bool, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.success(), text)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("deploy")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// deploy/'s Kubernetes manifests, by name.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| !NOT_MANIFESTS.iter().any(|n| p.ends_with(n)))
        .collect();
    files.sort();
    files
}

/// Objects in a YAML file: one top-level `kind:` each.
fn objects(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("kind:")).count()
}

/// Validates `file` strictly against Kubernetes `version`: every object
/// must pass, none unknown (kubernetes-validate only warns of a kind it has no
/// schema for, and exits 0).
fn validate(file: &Path, version: Option<&str>) -> Result<(), String> {
    let mut cmd = kubernetes_validate();
    cmd.arg("--strict");
    if let Some(v) = version {
        cmd.args(["--kubernetes-version", v]);
    }
    let (ok, out) = run({
        cmd.arg(file);
        cmd
    });
    let passed = out.matches("passed for resource").count();
    let expected = objects(&read(file));
    if !ok || out.contains("ERROR") || out.contains("WARN") || passed != expected || expected == 0 {
        return Err(format!(
            "{} ({expected} objects, {passed} passed): {out}",
            file.display()
        ));
    }
    Ok(())
}

#[test]
fn manifests_validate_strictly() {
    let files = manifests();
    for name in [
        "namespace.yaml",
        "rbac.yaml",
        "configmap.yaml",
        "networkpolicy.yaml",
        "daemonset.yaml",
        "daemonset-least-privilege.yaml",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(name)),
            "deploy/{name} missing"
        );
    }
    let mut failures = Vec::new();
    for file in &files {
        for version in [None, Some(OLDEST_KUBERNETES)] {
            if let Err(e) = validate(file, version) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The validator really validates: a DaemonSet with a misspelt field, and one
/// with a string where a boolean goes, fail.
#[test]
fn validator_rejects_invalid_manifests() {
    let dir = scratch("invalid");
    let good = read(&deploy().join("daemonset.yaml"));
    assert!(good.contains("      hostPID: true\n"));
    let misspelt = dir.join("misspelt.yaml");
    std::fs::write(
        &misspelt,
        good.replace("      hostPID: true\n", "      hostPid: true\n"),
    )
    .unwrap();
    let mistyped = dir.join("mistyped.yaml");
    std::fs::write(
        &mistyped,
        good.replace("      hostPID: true\n", "      hostPID: \"yes\"\n"),
    )
    .unwrap();
    for file in [&misspelt, &mistyped] {
        let (ok, out) = run({
            let mut cmd = kubernetes_validate();
            cmd.arg("--strict").arg(file);
            cmd
        });
        assert!(
            !ok && out.contains("ERROR"),
            "{} passed: {out}",
            file.display()
        );
        assert!(validate(file, None).is_err());
    }
    // And the unchanged copy passes: the failures above are the edits'.
    let copy = dir.join("daemonset.yaml");
    std::fs::write(&copy, &good).unwrap();
    validate(&copy, None).unwrap();
}

#[test]
fn kustomization_lists_every_manifest() {
    let text = read(&deploy().join("kustomization.yaml"));
    let mut listed = Vec::new();
    let mut in_resources = false;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('-') {
            in_resources = line.starts_with("resources:");
            continue;
        }
        if in_resources && let Some(item) = line.trim().strip_prefix("- ") {
            listed.push(item.trim().to_string());
        }
    }
    assert!(!listed.is_empty(), "no resources in kustomization.yaml");
    for name in &listed {
        assert!(
            deploy().join(name).exists(),
            "kustomization.yaml lists missing {name}"
        );
    }
    // Every manifest is applied, but the least-privilege variant, which
    // replaces daemonset.yaml when chosen.
    for file in manifests() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name == "daemonset-least-privilege.yaml" {
            assert!(!listed.contains(&name), "both DaemonSets listed");
            continue;
        }
        assert!(
            listed.contains(&name),
            "kustomization.yaml does not list {name}"
        );
    }
}

/// The `add:` list of the container named `leaktrace` (none: empty), each
/// entry with the comment lines just above it.
fn added_capabilities(text: &str) -> Vec<(String, Vec<String>)> {
    let lines: Vec<&str> = text.lines().collect();
    let container = lines
        .iter()
        .position(|l| l.trim() == "- name: leaktrace")
        .expect("no container named leaktrace");
    let Some(add) = (container..lines.len()).find(|&i| lines[i].trim() == "add:") else {
        return Vec::new();
    };
    let indent = |l: &str| l.len() - l.trim_start().len();
    let depth = indent(lines[add]);
    let mut out = Vec::new();
    let mut comments = Vec::new();
    for line in &lines[add + 1..] {
        if line.trim().is_empty() || indent(line) <= depth {
            break;
        }
        let item = line.trim();
        if let Some(c) = item.strip_prefix('#') {
            comments.push(c.trim().to_string());
        } else if let Some(cap) = item.strip_prefix("- ") {
            out.push((cap.trim().to_string(), std::mem::take(&mut comments)));
        }
    }
    out
}

#[test]
fn least_privilege_adds_exactly_the_capabilities_it_explains() {
    let text = read(&deploy().join("daemonset-least-privilege.yaml"));
    let added = added_capabilities(&text);
    let names: Vec<&str> = added.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(names, CAPABILITIES);
    for (cap, why) in &added {
        assert!(!why.is_empty(), "{cap} has no comment saying why");
    }
    assert!(text.contains("drop: [ALL]"));
    assert!(text.contains("privileged: false"));
    assert!(text.contains("type: RuntimeDefault"));
    assert!(text.contains("hostPID: true"));
    let privileged = read(&deploy().join("daemonset.yaml"));
    assert!(privileged.contains("privileged: true"));
    assert!(added_capabilities(&privileged).is_empty());
}

/// The two DaemonSets, less their opening comment and their container's
/// securityContext, are the same: a change to one is made to both.
#[test]
fn the_two_daemonsets_differ_only_in_privileges() {
    let body = |name: &str| -> String {
        let text = read(&deploy().join(name));
        let indent = |l: &str| l.len() - l.trim_start().len();
        let mut out = Vec::new();
        let mut skipping = false;
        for line in text.lines().skip_while(|l| l.starts_with('#')) {
            if line == "          securityContext:" {
                skipping = true;
            } else if skipping && indent(line) <= 10 && !line.trim_start().starts_with('#') {
                skipping = false;
            }
            if !skipping {
                out.push(line);
            }
        }
        out.join("\n")
    };
    let privileged = body("daemonset.yaml");
    let least = body("daemonset-least-privilege.yaml");
    assert!(privileged.contains("volumeMounts:"), "{privileged}");
    assert_eq!(privileged, least);
}

/// Metric names in a PromQL expression: identifiers that are not functions
/// (followed by `(`), keywords, label names in matchers or grouping clauses,
/// durations, or inside strings.
fn metric_names(expr: &str) -> Vec<String> {
    // Binary operators, modifiers, and the aggregations, which may be
    // followed by `by (…)` rather than `(`.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let skip_to = |from: usize, close: char| -> usize {
        let mut i = from;
        while i < chars.len() {
            if chars[i] == '"' || chars[i] == '\'' || chars[i] == '`' {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            } else if chars[i] == close {
                return i + 1;
            }
            i += 1;
        }
        panic!("unclosed `{close}` in {expr}");
    };
    let next_non_space = |from: usize| (from..chars.len()).find(|&j| !chars[j].is_whitespace());
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // A string: skip it whole.
            let mut j = i + 1;
            while j < chars.len() && chars[j] != c {
                if chars[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            i = j + 1;
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations (6, 3600, 1.5e3, 5m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let paren = next_non_space(i).filter(|&j| chars[j] == '(');
            if GROUPING.contains(&word.as_str()) {
                if let Some(j) = paren {
                    i = skip_to(j + 1, ')');
                }
            } else if paren.is_none() && !KEYWORDS.contains(&word.as_str()) {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_found_and_only_metric_names() {
    assert_eq!(
        metric_names(
            r#"topk(10, sum by (namespace, pod) (rate(a_total{verdict="leak", pod=~"$pod"}[$__rate_interval]))) / on (pod) group_left (x) b and c offset 5m > 6 * 3600"#
        ),
        ["a_total", "b", "c"]
    );
    assert_eq!(metric_names(r#"count(x{y="{}"})"#), ["x"]);
    assert!(metric_names("sum(rate(({a=\"b\"}[1m])))").is_empty());
}

/// Every query of the dashboard, with what asks it.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn panels(list: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p.clone());
            panels(&p["panels"], out);
        }
    }
    let mut all = Vec::new();
    panels(&dashboard["panels"], &mut all);
    let mut queries = Vec::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {title} does not use the datasource variable"
        );
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title}: a target without expr"));
            queries.push((format!("panel {title}"), expr.to_string()));
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .expect("a query variable without a query");
        // label_values(SELECTOR, LABEL): the selector is PromQL, LABEL is not.
        let selector = q
            .strip_prefix("label_values(")
            .and_then(|s| s.rsplit_once(','))
            .map(|(s, _)| s)
            .unwrap_or_else(|| panic!("variable {}: {q}", v["name"]));
        queries.push((format!("variable {}", v["name"]), selector.to_string()));
    }
    queries
}

fn dashboard() -> serde_json::Value {
    let path = deploy().join("grafana-dashboard.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for name in ["node", "namespace", "pod"] {
        assert_eq!(var(name)["type"], "query");
    }
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let mut used = Vec::new();
    for (what, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{what} names no metric: {expr}");
        for name in names {
            assert!(
                METRICS.contains(&name.as_str()),
                "{what} queries {name}, which the agent does not export: {expr}"
            );
            used.push(name);
        }
    }
    for wanted in [
        "leaktrace_leaking_bytes",
        "leaktrace_time_to_memory_limit_seconds",
        "leaktrace_growth_bytes_per_second",
        "leaktrace_agent_events_total",
        "leaktrace_agent_push_requests_total",
    ] {
        assert!(used.iter().any(|u| u == wanted), "no panel shows {wanted}");
    }
}

/// Each dashboard query, its variables filled in, parses as PromQL: promtool
/// checks them as recording rules.
#[test]
fn dashboard_queries_parse() {
    let dir = scratch("dashboard");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_queries(&dashboard()).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$node", ".*")
            .replace("$namespace", ".*")
            .replace("$pod", ".*");
        assert!(!expr.contains('$'), "an unknown variable in {expr}");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: |\n          {expr}\n"
        ));
    }
    let file = dir.join("dashboard-rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    let (ok, out) = run({
        let mut cmd = promtool();
        cmd.args(["check", "rules"]).arg(&file);
        cmd
    });
    assert!(ok, "{out}\n{rules}");
}

#[test]
fn alert_rules_check() {
    let (ok, out) = run({
        let mut cmd = promtool();
        cmd.args(["check", "rules"])
            .arg(deploy().join("alerts.yaml"));
        cmd
    });
    assert!(ok && out.contains("SUCCESS"), "{out}");
    // The rules name only exported metrics.
    let text = read(&deploy().join("alerts.yaml"));
    for line in text.lines() {
        for word in line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("leaktrace_") {
                assert!(METRICS.contains(&word), "alerts.yaml queries {word}");
            }
        }
    }
}

/// The leak alert fires for a pod with a leak site and under 6 h to its
/// limit, after 15 minutes, and not for growth that is not a leak or a
/// distant limit (deploy/alerts_test.yaml); the agent alerts fire per node.
#[test]
fn alert_rules_fire_as_tested() {
    let (ok, out) = run({
        let mut cmd = promtool();
        cmd.args(["test", "rules"])
            .arg(deploy().join("alerts_test.yaml"));
        cmd
    });
    assert!(ok && out.contains("SUCCESS"), "{out}");
}
