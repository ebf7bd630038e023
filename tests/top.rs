//! `leaktrace top` in a real terminal: tmux, as `cargo xtask setup`
//! installs it (run as root).
mod common;

use std::{process::Command, time::Duration};

use common::{c::target, root_or_skip, scratch_dir, wait_until};

/// tmux, as `cargo xtask setup` installs it: a real terminal for `leaktrace top`.
fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(["-L", "leaktrace-test"])
        .args(args)
        .output()
        .expect("tmux (run cargo xtask setup)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pane once `what` is on it.
fn wait_for_pane(what: &str) -> String {
    let mut pane = String::new();
    if wait_until(Duration::from_secs(15), || {
        pane = tmux(&["capture-pane", "-p", "-t", "top"]);
        pane.contains(what)
    }) {
        return pane;
    }
    panic!("{what} never on screen:\n{pane}");
}

#[test]
fn top_shows_the_leak_live_and_restores_the_terminal() {
    if !root_or_skip() {
        return;
    }
    let dir = scratch_dir("top");
    let status = dir.join("status");
    let command = format!(
        "cd {}; {} top -- {} 60; echo $? > {}",
        dir.display(),
        env!("CARGO_BIN_EXE_leaktrace"),
        target("scenario").display(),
        status.display()
    );
    let _ = tmux(&["kill-server"]);
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "100",
        "-y",
        "30",
        &command,
    ]);
    tmux(&["set-option", "-t", "top", "remain-on-exit", "on"]);
    let pane = wait_for_pane("leak_forever");
    assert!(
        pane.contains("leaktrace top") && pane.contains("VERDICT"),
        "{pane}"
    );
    assert_eq!(
        tmux(&["display", "-p", "-t", "top", "#{alternate_on}"]).trim(),
        "1"
    );
    // Sort, filter, open the stack.
    tmux(&["send-keys", "-t", "top", "s"]);
    wait_for_pane("sort: bytes");
    tmux(&["send-keys", "-t", "top", "/", "g", "r", "o", "w", "Enter"]);
    let pane = wait_for_pane("filter: grow");
    assert!(
        pane.contains("grow_buffer") && !pane.contains("leak_forever"),
        "{pane}"
    );
    tmux(&["send-keys", "-t", "top", "Enter"]);
    wait_for_pane("stack (Esc closes)");
    tmux(&["send-keys", "-t", "top", "e"]);
    wait_for_pane("exported");
    tmux(&["send-keys", "-t", "top", "q"]);
    // The shell writes the exit status on a line once leaktrace top has exited.
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&status).is_ok_and(|s| s.ends_with('\n'))
    });
    let code = std::fs::read_to_string(&status).expect("leaktrace top exited");
    assert_eq!(code.trim(), "0");
    assert_eq!(
        tmux(&["display", "-p", "-t", "top", "#{alternate_on}"]).trim(),
        "0",
        "terminal restored"
    );
    let _ = tmux(&["kill-server"]);
    let exported: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("leaktrace-"))
        .collect();
    assert_eq!(exported.len(), 2, "{exported:?}");
}
