//! `leaktrace top`: a live full-screen view of what leaks. It reads the reports
//! the pump publishes every second (a `watch` channel: the pump never waits for
//! the screen) and asks the pump to stop when the user quits.
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ratatui::{
    Frame, Terminal,
    backend::Backend,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Row, Table, TableState, Wrap},
};
use tokio::sync::watch;

use crate::{
    escape::shown,
    model::Kind,
    output::{Format, Output},
    report::{Report, SiteReport, human_bytes},
    verdict::Verdict,
};

/// How the rows are ordered (`s` cycles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    /// The report's own order: surest leak first, then growth.
    Verdict,
    Bytes,
    Count,
    Growth,
    Age,
}

impl Sort {
    fn next(self) -> Self {
        match self {
            Sort::Verdict => Sort::Bytes,
            Sort::Bytes => Sort::Count,
            Sort::Count => Sort::Growth,
            Sort::Growth => Sort::Age,
            Sort::Age => Sort::Verdict,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sort::Verdict => "verdict",
            Sort::Bytes => "bytes",
            Sort::Count => "count",
            Sort::Growth => "growth",
            Sort::Age => "age",
        }
    }
}

const KINDS: [Option<Kind>; 8] = [
    None,
    Some(Kind::Heap),
    Some(Kind::Mmap),
    Some(Kind::Fd),
    Some(Kind::Socket),
    Some(Kind::GoHeap),
    Some(Kind::Goroutine),
    Some(Kind::Thread),
];

/// Everything on screen besides the report.
pub struct App {
    report: Option<Arc<Report>>,
    pub sort: Sort,
    pub filter: String,
    editing_filter: bool,
    kind: usize,
    pub paused: bool,
    pub detail: bool,
    help: bool,
    table: TableState,
    message: Option<String>,
    pub quit: bool,
}

impl Default for App {
    fn default() -> Self {
        Self {
            report: None,
            sort: Sort::Verdict,
            filter: String::new(),
            editing_filter: false,
            kind: 0,
            paused: false,
            detail: false,
            help: false,
            table: TableState::default().with_selected(Some(0)),
            message: None,
            quit: false,
        }
    }
}

impl App {
    /// A new report from the pump; ignored while paused.
    pub fn update(&mut self, report: Arc<Report>) {
        if !self.paused || self.report.is_none() {
            self.report = Some(report);
        }
    }

    /// The rows on screen: sites holding something, filtered and sorted.
    pub fn rows(&self) -> Vec<&SiteReport> {
        let Some(report) = &self.report else {
            return Vec::new();
        };
        let needle = self.filter.to_lowercase();
        let kind = KINDS[self.kind];
        let mut rows: Vec<&SiteReport> = report
            .sites
            .iter()
            .filter(|s| s.outstanding_count > 0)
            .filter(|s| kind.is_none_or(|k| s.kind == k))
            .filter(|s| needle.is_empty() || matches(s, &needle))
            .collect();
        let by = |f: fn(&SiteReport) -> f64| {
            move |a: &&SiteReport, b: &&SiteReport| f(b).total_cmp(&f(a))
        };
        match self.sort {
            Sort::Verdict => {}
            Sort::Bytes => rows.sort_by(by(|s| s.outstanding_bytes as f64)),
            Sort::Count => rows.sort_by(by(|s| s.outstanding_count as f64)),
            Sort::Growth => rows.sort_by(by(|s| s.growth_last_minute)),
            Sort::Age => rows.sort_by(by(|s| s.oldest_age_s.unwrap_or(0.0))),
        }
        rows
    }

    /// Handles one key; `export` writes the current report and returns the paths.
    pub fn key(&mut self, key: KeyEvent, export: &mut dyn FnMut(&Report) -> String) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            self.quit = true;
            return;
        }
        if self.editing_filter {
            match key.code {
                KeyCode::Enter | KeyCode::Esc => self.editing_filter = false,
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.table.select(Some(0));
            return;
        }
        let rows = self.rows().len();
        let selected = self.table.selected().unwrap_or(0);
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Esc if self.help => self.help = false,
            KeyCode::Esc => self.detail = false,
            KeyCode::Enter => self.detail = rows > 0,
            KeyCode::Down | KeyCode::Char('j') => {
                self.table
                    .select(Some((selected + 1).min(rows.saturating_sub(1))));
            }
            KeyCode::Up | KeyCode::Char('k') => self.table.select(Some(selected.saturating_sub(1))),
            KeyCode::PageDown => self
                .table
                .select(Some((selected + 10).min(rows.saturating_sub(1)))),
            KeyCode::PageUp => self.table.select(Some(selected.saturating_sub(10))),
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('/') => {
                self.editing_filter = true;
                self.filter.clear();
            }
            KeyCode::Char('t') | KeyCode::Char('K') => {
                self.kind = (self.kind + 1) % KINDS.len();
                self.table.select(Some(0));
            }
            KeyCode::Char('p') => self.paused = !self.paused,
            KeyCode::Char('e') => {
                if let Some(report) = &self.report {
                    self.message = Some(export(report));
                }
            }
            KeyCode::Char('?') => self.help = !self.help,
            _ => {}
        }
    }

    pub fn draw(&mut self, frame: &mut Frame) {
        let [header, body, footer] = Layout::vertical([
            Constraint::Length(5),
            Constraint::Min(5),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        frame.render_widget(self.header(), header);
        let (table_area, detail_area) = if self.detail {
            let [t, d] = Layout::vertical([Constraint::Percentage(45), Constraint::Percentage(55)])
                .areas(body);
            (t, Some(d))
        } else {
            (body, None)
        };
        let rows = self.rows();
        let selected = self
            .table
            .selected()
            .unwrap_or(0)
            .min(rows.len().saturating_sub(1));
        let detail = detail_area.and_then(|area| rows.get(selected).map(|s| (area, detail(s))));
        let table = self.table(&rows);
        self.table.select(Some(selected));
        frame.render_stateful_widget(table, table_area, &mut self.table);
        if let Some((area, text)) = detail {
            frame.render_widget(text, area);
        }
        frame.render_widget(self.footer(), footer);
        if self.help {
            let area = centered(frame.area(), 60, 16);
            frame.render_widget(Clear, area);
            frame.render_widget(help(), area);
        }
    }

    fn header(&self) -> Paragraph<'static> {
        let Some(r) = &self.report else {
            return Paragraph::new("attaching…").block(Block::bordered().title(" leaktrace top "));
        };
        let targets: Vec<String> = r
            .targets
            .iter()
            .map(|t| {
                format!(
                    "{} ({}){}",
                    t.pid,
                    shown(&t.comm),
                    if t.exited { " exited" } else { "" }
                )
            })
            .collect();
        let lost = r.lost.total();
        let health = if lost == 0 {
            Span::styled("nothing lost", Style::new().fg(Color::Green))
        } else {
            Span::styled(
                format!("LOST {lost} events (see --output JSON)"),
                Style::new()
                    .fg(Color::White)
                    .bg(Color::Red)
                    .add_modifier(Modifier::BOLD),
            )
        };
        let rate = if r.duration_s > 0.0 {
            (r.totals.allocations + r.totals.frees) as f64 / r.duration_s
        } else {
            0.0
        };
        let leaks = r
            .sites
            .iter()
            .filter(|s| s.verdict == Verdict::Leak)
            .count();
        let lost = r.lost_blocks().lost_count();
        let scanned = if r.scans.at_exit + r.scans.running > 0 {
            format!("{lost} heap blocks unreachable · ")
        } else {
            String::new()
        };
        let lines = vec![
            Line::from(vec![
                Span::raw(format!("{:.0}s traced · ", r.duration_s)),
                Span::raw(targets.join(", ")),
                if self.paused {
                    Span::styled("  PAUSED", Style::new().add_modifier(Modifier::REVERSED))
                } else {
                    Span::raw("")
                },
            ]),
            Line::from(format!("{} · {:.0} allocs+frees/s", r.totals_line(), rate)),
            Line::from(vec![
                Span::styled(
                    format!(
                        "{leaks} leaking site{} · ",
                        if leaks == 1 { "" } else { "s" }
                    ),
                    if leaks > 0 {
                        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
                    } else {
                        Style::new()
                    },
                ),
                Span::raw(scanned),
                health,
            ]),
        ];
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::BOTTOM)
                .title(" leaktrace top "),
        )
    }

    fn table(&self, rows: &[&SiteReport]) -> Table<'static> {
        let header = Row::new([
            "VERDICT",
            "KIND",
            "HELD",
            "COUNT",
            "GROW/min",
            "TREND",
            "AGE",
            "TOP FRAME",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
        let body: Vec<Row> = rows
            .iter()
            .map(|s| {
                let handle = s.kind.is_handle();
                let amount = if handle {
                    "-".to_string()
                } else {
                    human_bytes(s.outstanding_bytes)
                };
                let minute = s.growth_last_minute;
                let growth = if handle {
                    format!("{minute:+.0}")
                } else if minute < 0.0 {
                    format!("-{}", human_bytes(minute.abs() as u64))
                } else {
                    format!("+{}", human_bytes(minute as u64))
                };
                Row::new(vec![
                    Span::styled(s.verdict.name(), verdict_style(s.verdict)),
                    Span::raw(s.kind.name()),
                    Span::raw(amount),
                    Span::raw(s.outstanding_count.to_string()),
                    Span::raw(growth),
                    Span::styled(sparkline(&s.history, 6), Style::new().fg(Color::Cyan)),
                    Span::raw(s.oldest_age_s.map_or("-".into(), age)),
                    Span::raw(top_frame(s)),
                ])
            })
            .collect();
        Table::new(
            body,
            [
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(6),
                Constraint::Length(9),
                Constraint::Length(6),
                Constraint::Length(5),
                Constraint::Min(20),
            ],
        )
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
    }

    fn footer(&self) -> Line<'static> {
        let kind = KINDS[self.kind].map_or("all", Kind::name);
        let filter = if self.editing_filter {
            format!("filter: {}▏", self.filter)
        } else if self.filter.is_empty() {
            String::new()
        } else {
            format!("filter: {} · ", self.filter)
        };
        let message = self.message.clone().unwrap_or_default();
        Line::from(vec![
            Span::raw(filter),
            Span::raw(format!("sort: {} · kind: {kind} · ", self.sort.name())),
            Span::styled("? help  q quit", Style::new().add_modifier(Modifier::DIM)),
            Span::raw(format!("  {message}")),
        ])
    }
}

fn matches(s: &SiteReport, needle: &str) -> bool {
    let in_frames = s.frames.iter().any(|f| {
        f.function
            .as_deref()
            .is_some_and(|n| n.to_lowercase().contains(needle))
            || f.file
                .as_deref()
                .is_some_and(|n| n.to_lowercase().contains(needle))
    });
    in_frames
        || s.details
            .iter()
            .any(|d| d.detail.to_lowercase().contains(needle))
}

fn verdict_style(v: Verdict) -> Style {
    // Named ANSI colours: they follow the terminal's palette, dark or light.
    match v {
        Verdict::Leak => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Verdict::Growing => Style::new().fg(Color::Yellow),
        Verdict::Stable => Style::new().fg(Color::Green),
        Verdict::Transient => Style::new().add_modifier(Modifier::DIM),
    }
}

/// The last `width` points of a history as block characters.
pub fn sparkline(history: &[(f64, f64)], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let tail = &history[history.len().saturating_sub(width)..];
    let (lo, hi) = tail
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    tail.iter()
        .map(|p| {
            if hi <= lo {
                BARS[0]
            } else {
                BARS[(((p.1 - lo) / (hi - lo)) * 7.0).round() as usize]
            }
        })
        .collect()
}

fn age(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0}s")
    } else if secs < 7200.0 {
        format!("{:.0}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3600.0)
    }
}

/// The first frame that is not the allocator or a libc wrapper: the caller.
fn top_frame(s: &SiteReport) -> String {
    let frame = s.frames.get(crate::symbolize::headline(&s.frames));
    let mut text = frame.map_or("[stack not recorded]".into(), |f| {
        shown(&f.short()).into_owned()
    });
    if let Some(d) = s.details.first() {
        text = format!("{text} · {}", shown(&d.describe()));
    }
    text
}

fn detail(s: &SiteReport) -> Paragraph<'static> {
    let mut lines = vec![Line::from(vec![
        Span::styled(s.verdict.name().to_uppercase(), verdict_style(s.verdict)),
        Span::raw(format!(
            " (confidence {:.2}) · {} · {} open/outstanding · {} · pid {}",
            s.confidence,
            s.kind.name(),
            s.outstanding_count,
            s.growth_per_s(),
            s.pid
        )),
    ])];
    if let Some(secs) = s.time_to_limit_s {
        lines.push(Line::from(format!(
            "limit reached in {} at this rate",
            crate::report::human_duration(secs)
        )));
    }
    for d in &s.details {
        lines.push(Line::from(format!("  {} ×{}", shown(&d.describe()), d.count)).fg(Color::Cyan));
    }
    for w in &s.waiting {
        lines.push(
            Line::from(format!("  {}", shown(&crate::report::waiting_line(w)))).fg(Color::Yellow),
        );
    }
    if let Some(v) = &s.survival {
        lines.push(Line::from(crate::report::survival_line(v)));
    }
    if let Some(r) = &s.reachability {
        let line = Line::from(crate::report::reach_line(r));
        lines.push(if r.lost_count() > 0 {
            line.fg(Color::Red)
        } else {
            line
        });
    }
    lines.push(Line::from(""));
    for f in s.frames.iter() {
        let inlined = if f.inlined { "(inlined) " } else { "" };
        lines.push(Line::from(vec![
            Span::raw(format!("  {inlined}{}", shown(&f.short()))),
            Span::styled(
                format!("  [{}]", shown(&f.location())),
                Style::new().add_modifier(Modifier::DIM),
            ),
        ]));
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(Block::bordered().title(" stack (Esc closes) "))
}

fn help() -> Paragraph<'static> {
    let keys = [
        ("↑ ↓  j k", "move"),
        ("PgUp PgDn", "move by 10"),
        ("Enter / Esc", "open / close the stack and details"),
        ("s", "sort: verdict, bytes, count, growth, age"),
        ("/", "filter by function, file or path (Enter ends)"),
        ("t", "kind: all, heap, mmap, fd, socket"),
        ("p", "pause the display (tracing goes on)"),
        ("e", "export the current state (pprof + JSON)"),
        ("?", "this help"),
        ("q  Ctrl-C", "quit"),
    ];
    let lines: Vec<Line> = keys
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<14}"), Style::new().bold()),
                Span::raw(*what),
            ])
        })
        .collect();
    Paragraph::new(lines).block(Block::bordered().title(" keys "))
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

/// Writes `report` as pprof and JSON in `dir`; returns what to show.
pub fn export(dir: &std::path::Path, report: &Report) -> String {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut written = Vec::new();
    for (ext, format) in [("pb.gz", Format::Pprof), ("json", Format::Json)] {
        let path = dir.join(format!("leaktrace-{stamp}.{ext}"));
        let output = Output {
            path: path.clone(),
            format,
        };
        match output.write(report) {
            Ok(()) => written.push(path.display().to_string()),
            Err(e) => return format!("export failed: {e:#}"),
        }
    }
    format!("exported {}", written.join(" and "))
}

/// Runs the view until the user quits or the pump stops publishing. Returns
/// after restoring the terminal, whatever happened.
pub fn run(
    mut reports: watch::Receiver<Option<Arc<Report>>>,
    quit: watch::Sender<bool>,
    export_dir: PathBuf,
) -> std::io::Result<()> {
    let mut terminal = ratatui::init(); // raw mode, alternate screen, panic hook restores
    let result = event_loop(&mut terminal, &mut reports, &export_dir);
    ratatui::restore();
    let _ = quit.send(true);
    result
}

fn event_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    reports: &mut watch::Receiver<Option<Arc<Report>>>,
    export_dir: &std::path::Path,
) -> std::io::Result<()> {
    let mut app = App::default();
    let mut export = |r: &Report| export(export_dir, r);
    loop {
        match reports.has_changed() {
            Ok(true) => {
                if let Some(r) = reports.borrow_and_update().clone() {
                    app.update(r);
                }
            }
            Ok(false) => {}
            Err(_) => return Ok(()), // the pump is done
        }
        terminal
            .draw(|f| app.draw(f))
            .map_err(std::io::Error::other)?;
        if event::poll(Duration::from_millis(200))? {
            match event::read()? {
                Event::Key(key) => app.key(key, &mut export),
                Event::Resize(..) => terminal.autoresize().map_err(std::io::Error::other)?,
                _ => {}
            }
        }
        if app.quit {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, crossterm::event::KeyEvent};

    use super::*;
    use crate::{
        report::{Detail, Totals},
        symbolize::Frame,
    };

    fn site(function: &str, kind: Kind, bytes: u64, count: u64, verdict: Verdict) -> SiteReport {
        SiteReport {
            kind,
            pid: 42,
            outstanding_bytes: bytes,
            outstanding_count: count,
            total_bytes: bytes,
            total_count: count,
            oldest_age_s: Some(count as f64),
            verdict,
            confidence: 0.9,
            growth_bytes_per_s: 0.0,
            growth_count_per_s: 0.0,
            time_to_limit_s: None,
            details: Vec::new(),
            reachability: None,
            waiting: Vec::new(),
            before_attach: 0,
            survival: None,
            history: (0..30)
                .map(|t| (t as f64, (t as u64 * bytes / 30) as f64))
                .collect(),
            growth_last_minute: (29 * bytes / 30) as f64,
            frames: Arc::from([Arc::new(Frame {
                function: Some(function.into()),
                file: Some("/src/app.c".into()),
                line: Some(7),
                module: Some("/bin/app".into()),
                address: 0x1234,
                inlined: false,
            })]),
        }
    }

    fn report() -> Arc<Report> {
        let mut socket = site("dial_backend", Kind::Socket, 0, 7, Verdict::Growing);
        socket.details = vec![Detail {
            kind: crate::handles::HandleKind::Socket,
            detail: "tcp 10.0.0.1:4242 -> 10.0.0.2:5432".into(),
            count: 7,
        }];
        Arc::new(Report {
            version: 2,
            targets: Vec::new(),
            targets_unlisted: 0,
            events: 0,
            duration_s: 30.0,
            lost: Default::default(),
            stacks: Default::default(),
            scans: Default::default(),
            totals: Totals::default(),
            sites: vec![
                site("remember_session", Kind::Heap, 4096, 4, Verdict::Leak),
                socket,
                site("cache_put", Kind::Heap, 1 << 20, 32, Verdict::Stable),
                site("freed_at_once", Kind::Heap, 0, 0, Verdict::Transient),
            ],
            modules: Vec::new(),
        })
    }

    fn screen(app: &mut App, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| app.draw(f)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn press(app: &mut App, code: KeyCode) {
        app.key(KeyEvent::from(code), &mut |_| "exported".into());
    }

    fn row_of(screen: &str, text: &str) -> usize {
        screen
            .lines()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("{text} not on screen:\n{screen}"))
    }

    #[test]
    fn rows_in_verdict_order_then_by_bytes() {
        let mut app = App::default();
        app.update(report());
        let s = screen(&mut app, 130, 20);
        assert!(row_of(&s, "remember_session") < row_of(&s, "dial_backend"));
        assert!(row_of(&s, "dial_backend") < row_of(&s, "cache_put"));
        assert!(!s.contains("freed_at_once"), "nothing outstanding: no row");
        assert!(s.contains("tcp 10.0.0.1:4242 -> 10.0.0.2:5432"));
        press(&mut app, KeyCode::Char('s'));
        assert_eq!(app.sort, Sort::Bytes);
        let s = screen(&mut app, 120, 20);
        assert!(
            row_of(&s, "cache_put") < row_of(&s, "remember_session"),
            "{s}"
        );
    }

    #[test]
    fn filter_detail_pane_and_pause() {
        let mut app = App::default();
        app.update(report());
        press(&mut app, KeyCode::Char('/'));
        for c in "dial".chars() {
            press(&mut app, KeyCode::Char(c));
        }
        press(&mut app, KeyCode::Enter);
        let s = screen(&mut app, 100, 24);
        assert!(
            s.contains("dial_backend") && !s.contains("remember_session"),
            "{s}"
        );
        press(&mut app, KeyCode::Enter);
        let s = screen(&mut app, 100, 24);
        assert!(
            s.contains("stack (Esc closes)") && s.contains("dial_backend (app.c:7)"),
            "{s}"
        );
        assert!(s.contains("×7"), "details with counts:\n{s}");
        press(&mut app, KeyCode::Esc);
        assert!(!screen(&mut app, 100, 24).contains("stack (Esc closes)"));
        press(&mut app, KeyCode::Char('p'));
        let mut newer = (*report()).clone();
        newer.sites.clear();
        app.update(Arc::new(newer));
        assert!(
            screen(&mut app, 100, 24).contains("dial_backend"),
            "paused: old rows stay"
        );
    }

    #[test]
    fn the_detail_pane_says_how_many_blocks_are_lost() {
        let mut r = (*report()).clone();
        r.scans.at_exit = 1;
        r.sites[0].reachability = Some(crate::reach::Reach {
            unreachable_count: 3,
            unreachable_bytes: 3072,
            indirect_count: 1,
            indirect_bytes: 1024,
            at_exit: true,
            ..Default::default()
        });
        let mut app = App::default();
        app.update(Arc::new(r));
        press(&mut app, KeyCode::Enter);
        let s = screen(&mut app, 120, 24);
        assert!(s.contains("4 heap blocks unreachable"), "{s}");
        assert!(
            s.contains("unreachable 3 (3.0 KiB) · indirect 1 (1.0 KiB)"),
            "{s}"
        );
    }

    #[test]
    fn fits_80_by_24_and_quits_on_q() {
        let mut app = App::default();
        app.update(report());
        let s = screen(&mut app, 80, 24);
        assert!(
            s.contains("remember_session") && s.contains("leaktrace top"),
            "{s}"
        );
        press(&mut app, KeyCode::Char('?'));
        assert!(screen(&mut app, 80, 24).contains("pause the display"));
        press(&mut app, KeyCode::Char('q'));
        assert!(app.quit);
    }

    #[test]
    fn sparkline_scales_to_the_window() {
        let h: Vec<(f64, f64)> = (0..8).map(|i| (i as f64, i as f64)).collect();
        assert_eq!(sparkline(&h, 8), "▁▂▃▄▅▆▇█");
        assert_eq!(sparkline(&[(0.0, 5.0), (1.0, 5.0)], 8), "▁▁");
    }
}
