//! A report's sites, found by the function that made them.

use serde_json::Value;

/// The site of `kind` whose stack holds `function` (the caller of the allocator).
pub fn site<'a>(report: &'a Value, pid: u64, kind: &str, function: &str) -> Option<&'a Value> {
    report["sites"].as_array().unwrap().iter().find(|s| {
        s["kind"] == kind
            && s["pid"] == pid
            && s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["function"] == function)
    })
}

/// (outstanding bytes, outstanding count) of the site of `kind` at `function`.
pub fn outstanding(report: &Value, pid: u64, kind: &str, function: &str) -> (u64, u64) {
    let s =
        site(report, pid, kind, function).unwrap_or_else(|| panic!("no {kind} site at {function}"));
    (
        s["outstanding_bytes"].as_u64().unwrap(),
        s["outstanding_count"].as_u64().unwrap(),
    )
}

/// The site of `kind` at `function`, which must be there.
pub fn verdict_of<'a>(report: &'a Value, pid: u64, kind: &str, function: &str) -> &'a Value {
    site(report, pid, kind, function).unwrap_or_else(|| panic!("no {kind} site at {function}"))
}

/// A site's details: (kind, detail, count) each.
pub fn details(site: &Value) -> Vec<(String, String, u64)> {
    site["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| {
                    (
                        d["kind"].as_str().unwrap().to_string(),
                        d["detail"].as_str().unwrap().to_string(),
                        d["count"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
