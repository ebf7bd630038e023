//! Outstanding bytes by stack as folded stacks (`a;b;c 123`, root first: the
//! input of flamegraph.pl, inferno, speedscope) and as an interactive SVG.
use std::collections::BTreeMap;

use inferno::flamegraph::{self, Options};

use crate::{escape::shown, report::Report, symbolize::Frame};

/// One line per distinct stack, root first, headed by `comm (pid)` and the kind;
/// the values sum to the report's outstanding bytes.
pub fn folded(report: &Report) -> String {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for site in report.sites.iter().filter(|s| s.outstanding_bytes > 0) {
        let comm = report
            .targets
            .iter()
            .find(|t| t.pid == site.pid)
            .map_or("?", |t| t.comm.as_str());
        let mut names = vec![
            format!("{} ({})", shown(comm).replace(';', ":"), site.pid),
            site.kind.name().into(),
        ];
        if site.frames.is_empty() {
            names.push("[stack not recorded]".into());
        }
        names.extend(site.frames.iter().rev().map(|f| frame_name(f)));
        *stacks.entry(names.join(";")).or_default() += site.outstanding_bytes;
    }
    stacks
        .iter()
        .map(|(stack, bytes)| format!("{stack} {bytes}\n"))
        .collect()
}

/// `function` (folded stacks split on ';', lines on newlines, and the SVG
/// cannot hold control characters: all shown escaped).
fn frame_name(f: &Frame) -> String {
    shown(&f.function.clone().unwrap_or_else(|| f.location())).replace(';', ":")
}

/// An interactive flamegraph (SVG with search and zoom) of outstanding bytes.
pub fn svg(report: &Report) -> std::io::Result<Vec<u8>> {
    let folded = folded(report);
    let mut options = Options::default();
    options.title = format!(
        "leaktrace: outstanding memory by call site after {:.0}s",
        report.duration_s
    );
    options.count_name = "bytes".into();
    options.name_type = "Function:".into();
    if folded.is_empty() {
        // inferno refuses a graph without samples; the file still says why.
        return Ok(format!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" \
             width=\"600\" height=\"60\"><text x=\"10\" y=\"30\">{}: nothing outstanding</text></svg>\n",
            options.title
        )
        .into_bytes());
    }
    let mut out = Vec::new();
    flamegraph::from_lines(&mut options, folded.lines(), &mut out)
        .map_err(std::io::Error::other)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    #[test]
    fn an_empty_report_still_draws() {
        let r = Report::build(&Model::default(), Vec::new(), Vec::new(), 0, 0);
        assert_eq!(folded(&r), "");
        let svg = String::from_utf8(svg(&r).unwrap()).unwrap();
        assert!(svg.contains("nothing outstanding"));
    }
}
