//! How `tail`, `query`, `changes`, `monitored` and `health` print: JSON
//! exactly as logged (the default when stdout is not a terminal), or text
//! made for eyes (the default on a terminal).
//!
//! The text form is an output adapter: [`EventSink`] takes the JSONL lines
//! the log readers and the subscribe stream produce and renders each one,
//! so the code that finds the lines does not know how they are shown. The
//! JSON form passes the bytes through untouched.
//!
//! Everything shown comes from files and processes anyone may name: a path,
//! a command name, a user or container name may hold control characters
//! (`touch $'\e[2J'`). Text output escapes them the way the log's JSON does
//! (`\n`, `\u001b`), and Unicode's bidirectional overrides too, so no byte
//! of a name ever acts on the terminal. Names are already in fsmon's path
//! text form, in which a backslash is `\\`: the escapes stay unambiguous.
use std::{
    borrow::Cow,
    ffi::OsStr,
    io::{self, IsTerminal, Write},
};

use anstyle::{AnsiColor, Effects, Style};
use clap::{Args, ValueEnum};
use serde_json::Value;
use unicode_width::UnicodeWidthStr;

/// `-o json|text`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// JSON lines exactly as logged (byte for byte)
    Json,
    /// One readable line per event (tables and `key: value` lines for the rest)
    Text,
}

/// `--color auto|always|never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ColorChoice {
    /// When stdout is a terminal, TERM is not `dumb` and NO_COLOR is unset or empty
    #[default]
    Auto,
    Always,
    Never,
}

/// The output flags of the commands that print events or status.
#[derive(Debug, Clone, Default, Args)]
pub struct OutputArgs {
    /// Output: text (readable; the default on a terminal) or json (the lines exactly as logged; the default otherwise)
    #[arg(short = 'o', long = "output", value_name = "FORMAT", value_enum)]
    pub output: Option<Format>,
    /// Colour in text output (NO_COLOR set to anything non-empty turns auto off)
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

/// What to print, decided once per command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub format: Format,
    pub color: bool,
}

impl OutputArgs {
    /// The mode for this process's stdout and environment.
    pub fn mode(&self) -> Mode {
        decide(
            self.output,
            self.color,
            io::stdout().is_terminal(),
            std::env::var_os("TERM").as_deref(),
            std::env::var_os("NO_COLOR").as_deref(),
        )
    }
}

/// The rule, as a pure function: text on a terminal unless `-o` says
/// otherwise; colour by `--color`, and for `auto` only on a terminal that
/// is not `dumb` and without a non-empty `NO_COLOR` (https://no-color.org;
/// the command-line flag overrides it).
pub fn decide(
    output: Option<Format>,
    color: ColorChoice,
    stdout_terminal: bool,
    term: Option<&OsStr>,
    no_color: Option<&OsStr>,
) -> Mode {
    let format = output.unwrap_or(if stdout_terminal {
        Format::Text
    } else {
        Format::Json
    });
    let color = format == Format::Text
        && match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                stdout_terminal
                    && term.is_some_and(|t| !t.is_empty() && t != "dumb")
                    && no_color.is_none_or(|v| v.is_empty())
            }
        };
    Mode { format, color }
}

/// `text` safe for a terminal: control characters as the log's JSON
/// writes them (`\n`, `\t`, `\r`, `\u001b`; DEL and the C1 controls too,
/// which JSON leaves raw), and the bidirectional overrides and isolates
/// (which reorder what follows on screen) as `\u202e` and the like.
pub fn terminal_text(text: &str) -> Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The styles of the text form; all plain without colour.
#[derive(Debug, Clone, Copy)]
struct Palette {
    color: bool,
}

impl Palette {
    /// `text` in `style` (escaped by the caller).
    fn paint(&self, out: &mut String, style: Style, text: &str) {
        if self.color && style != Style::new() {
            out.push_str(&format!("{}{text}{}", style.render(), style.render_reset()));
        } else {
            out.push_str(text);
        }
    }

    fn dim() -> Style {
        Style::new().effects(Effects::DIMMED)
    }

    fn fg(c: AnsiColor) -> Style {
        Style::new().fg_color(Some(c.into()))
    }

    /// A colour per kind of change: made green, gone red, moved blue,
    /// written yellow, metadata magenta; losses bold red.
    fn event_type(kind: &str) -> Style {
        match kind {
            "CREATE" => Self::fg(AnsiColor::Green),
            "DELETE" | "DELETE_SELF" => Self::fg(AnsiColor::Red),
            "MOVED_FROM" | "MOVED_TO" | "MOVE_SELF" => Self::fg(AnsiColor::Blue),
            "CLOSE_WRITE" | "MODIFY" => Self::fg(AnsiColor::Yellow),
            "ATTRIB" => Self::fg(AnsiColor::Magenta),
            crate::event::OVERFLOW_TYPE | crate::event::TRACKER_LOSS_TYPE | "FS_ERROR" => {
                Self::fg(AnsiColor::Red).effects(Effects::BOLD)
            }
            _ => Style::new(),
        }
    }

    fn warning() -> Style {
        Self::fg(AnsiColor::Yellow).effects(Effects::BOLD)
    }
}

/// The width `event_type` is padded to (the longest names, `CLOSE_NOWRITE`).
const TYPE_WIDTH: usize = 13;
/// The width a `[group]` tag is padded to: 15 bytes of name and brackets.
const GROUP_WIDTH: usize = 17;

/// The local time of an RFC 3339 stamp, to the millisecond; the stamp
/// itself (escaped) if it is not one.
fn local_time(stamp: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(stamp) {
        Ok(t) => t
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S%.3f")
            .to_string(),
        Err(_) => terminal_text(stamp).into_owned(),
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// One JSONL line (a log line, a subscribe-stream line with its `group`,
/// or the stream's `missed` notice) as one readable line, with a newline.
/// `show_group`: put the line's group first (a stream of several groups).
pub fn render_event_line(line: &[u8], color: bool, show_group: bool) -> String {
    let p = Palette { color };
    let mut out = String::with_capacity(160);
    let v: Value = match serde_json::from_slice(line) {
        Ok(v @ Value::Object(_)) => v,
        // Not an event (readers skip such lines; a stream never sends
        // them): shown as it is, escaped, and marked.
        _ => {
            p.paint(&mut out, Palette::warning(), "unreadable line:");
            out.push(' ');
            out.push_str(&terminal_text(&String::from_utf8_lossy(line)));
            out.push('\n');
            return out;
        }
    };
    if v.get("notice").is_some() {
        let text = match v.get("missed").and_then(Value::as_u64) {
            Some(n) => format!(
                "-- missed {n} events: this reader fell behind the daemon ([cache] subscribe_buf); they are in the log --"
            ),
            None => format!(
                "-- notice from the daemon: {} --",
                terminal_text(&v.to_string())
            ),
        };
        p.paint(&mut out, Palette::warning(), &text);
        out.push('\n');
        return out;
    }
    let kind = str_field(&v, "event_type");
    p.paint(&mut out, Palette::dim(), &local_time(str_field(&v, "time")));
    out.push_str("  ");
    // Events read from a fleet's stream name their host.
    if let Some(h) = v.get("host").and_then(Value::as_str) {
        p.paint(&mut out, Palette::fg(AnsiColor::Blue), &terminal_text(h));
        out.push(' ');
    }
    if show_group && let Some(g) = v.get("group").and_then(Value::as_str) {
        let tag = format!("[{}]", terminal_text(g));
        p.paint(&mut out, Palette::fg(AnsiColor::Cyan), &tag);
        // Padded to the longest group name (a command's 15 bytes) so the
        // columns after it line up across groups.
        let pad = GROUP_WIDTH.saturating_sub(tag.chars().count()) + 1;
        out.extend(std::iter::repeat_n(' ', pad));
    }
    let kind_text = terminal_text(kind);
    p.paint(&mut out, Palette::event_type(kind), &kind_text);
    let pad = TYPE_WIDTH.saturating_sub(kind_text.chars().count()) + 2;
    out.extend(std::iter::repeat_n(' ', pad));
    let lost = v.get("lost").and_then(Value::as_bool).unwrap_or(false);
    if lost {
        let what = match kind {
            crate::event::OVERFLOW_TYPE => {
                "events were LOST here: the kernel queue overflowed ([fanotify] queue_size)"
            }
            crate::event::TRACKER_LOSS_TYPE => {
                "the process tracker LOST track of processes: events near here may lack or misname theirs"
            }
            _ => "events were LOST here",
        };
        p.paint(
            &mut out,
            Palette::event_type(crate::event::OVERFLOW_TYPE),
            what,
        );
        out.push('\n');
        return out;
    }
    out.push_str(&terminal_text(str_field(&v, "path")));
    // Who: cmd[pid] user; `?` for what the tracker did not know.
    let pid = v.get("pid").and_then(Value::as_u64).unwrap_or(0);
    let cmd = str_field(&v, "cmd");
    let user = str_field(&v, "user");
    out.push_str("  ");
    let who = format!(
        "{}[{pid}]",
        if cmd.is_empty() {
            "?".into()
        } else {
            terminal_text(cmd)
        }
    );
    p.paint(&mut out, Palette::fg(AnsiColor::Cyan), &who);
    out.push(' ');
    out.push_str(
        if user.is_empty() {
            "?".into()
        } else {
            terminal_text(user)
        }
        .as_ref(),
    );
    if let Some(c) = v.get("container").and_then(Value::as_str) {
        out.push_str("  ");
        p.paint(
            &mut out,
            Palette::fg(AnsiColor::Magenta),
            &format!("container={}", terminal_text(c)),
        );
    }
    // Flags that say the event is not what the kernel reported as is.
    for flag in ["scan", "unresolved"] {
        if v.get(flag).and_then(Value::as_bool) == Some(true) {
            out.push_str("  ");
            p.paint(&mut out, Palette::warning(), flag);
        }
    }
    out.push('\n');
    out
}

/// Where event lines go: straight through (JSON), or rendered (text).
pub enum EventSink<W: Write> {
    Json(W),
    Text(TextEvents<W>),
}

impl<W: Write> EventSink<W> {
    pub fn new(out: W, mode: Mode, show_group: bool) -> Self {
        match mode.format {
            Format::Json => EventSink::Json(out),
            Format::Text => EventSink::Text(TextEvents {
                out,
                pending: Vec::new(),
                color: mode.color,
                show_group,
            }),
        }
    }

    /// Renders what is left of an unfinished last line, and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        match self {
            EventSink::Json(w) => w.flush(),
            EventSink::Text(t) => {
                if !t.pending.is_empty() {
                    let line = std::mem::take(&mut t.pending);
                    t.out
                        .write_all(render_event_line(&line, t.color, t.show_group).as_bytes())?;
                }
                t.out.flush()
            }
        }
    }
}

/// The text adapter: collects bytes into lines and writes each rendered.
pub struct TextEvents<W: Write> {
    out: W,
    /// The start of a line whose newline has not come yet.
    pending: Vec<u8>,
    color: bool,
    show_group: bool,
}

impl<W: Write> Write for EventSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = match self {
            EventSink::Json(w) => return w.write(buf),
            EventSink::Text(t) => t,
        };
        let mut rest = buf;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let text = if t.pending.is_empty() {
                render_event_line(&rest[..nl], t.color, t.show_group)
            } else {
                t.pending.extend_from_slice(&rest[..nl]);
                let line = std::mem::take(&mut t.pending);
                render_event_line(&line, t.color, t.show_group)
            };
            t.out.write_all(text.as_bytes())?;
            rest = &rest[nl + 1..];
        }
        t.pending.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            EventSink::Json(w) => w.flush(),
            EventSink::Text(t) => t.out.flush(),
        }
    }
}

/// The store's event types, short: `default` for the 8 core types, `all`
/// for the 14, else the names.
fn types_text(types: &[Value]) -> String {
    let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
    let set = crate::event::EventType::parse_list(&names).ok();
    match set {
        Some(s) if s == crate::event::TypeSet::ALL => "all".into(),
        Some(s) if s == crate::event::TypeSet::default() => "default".into(),
        _ => terminal_text(&names.join(",")).into_owned(),
    }
}

/// `monitored`'s lines (`{"cmd":..,"paths":{path:{recursive,types,size?,mark?}}}`)
/// as a table: one row per group and path.
pub fn render_monitored(lines: &[String], color: bool) -> String {
    let header = ["GROUP", "PATH", "RECURSIVE", "TYPES", "SIZE", "MARK"].map(String::from);
    let mut rows = vec![header];
    for line in lines {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let group = terminal_text(str_field(&v, "cmd")).into_owned();
        let Some(paths) = v.get("paths").and_then(Value::as_object) else {
            continue;
        };
        for (path, o) in paths {
            let recursive = o.get("recursive").and_then(Value::as_bool) == Some(true);
            let types = o
                .get("types")
                .and_then(Value::as_array)
                .map(|t| types_text(t));
            rows.push([
                group.clone(),
                terminal_text(path).into_owned(),
                (if recursive { "yes" } else { "no" }).into(),
                types.unwrap_or_else(|| "default".into()),
                o.get("size")
                    .and_then(Value::as_str)
                    .map_or("-".into(), |s| terminal_text(s).into_owned()),
                // Omitted from the line when it is the default.
                o.get("mark")
                    .and_then(Value::as_str)
                    .map_or("auto".into(), |s| terminal_text(s).into_owned()),
            ]);
        }
    }
    if rows.len() == 1 {
        return "no monitored paths (fsmon add CMD --path P adds one)\n".into();
    }
    table(&rows, color)
}

/// Rows as columns, the first row a bold header; the last column unpadded.
fn table<const N: usize>(rows: &[[String; N]], color: bool) -> String {
    let p = Palette { color };
    // Columns on a terminal: a CJK character or an emoji in a path takes
    // two cells, a combining accent none.
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.width());
        }
    }
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for (j, cell) in row.iter().enumerate() {
            if j + 1 < N {
                line.push_str(cell);
                let pad = widths[j] - cell.width() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            } else {
                line.push_str(cell);
            }
        }
        let line = line.trim_end();
        if i == 0 {
            p.paint(&mut out, Style::new().effects(Effects::BOLD), line);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The keys of `health` shown first, in this order; the rest follow sorted.
const HEALTH_ORDER: &[&str] = &[
    "version",
    "pid",
    "user",
    "uptime_secs",
    "ready",
    "tracker",
    "tracker_fallback",
    "groups",
    "log_dir",
    "events_logged",
    "events_unwritten",
    "queue_overflows",
    "unresolved_paths",
    "events_hidden",
    "tracker_losses",
    "subscribers",
];

/// `health`'s answer as `key: value` lines; nested objects indented, lists
/// one item a line; losses and errors that are not zero or empty stand out.
pub fn render_health(v: &Value, color: bool) -> String {
    let p = Palette { color };
    let mut out = String::new();
    let Some(map) = v.as_object() else {
        return format!("{}\n", terminal_text(&v.to_string()));
    };
    let mut keys: Vec<&String> = map.keys().filter(|k| *k != "ok").collect();
    keys.sort_by_key(|k| {
        (
            HEALTH_ORDER
                .iter()
                .position(|o| o == k)
                .unwrap_or(usize::MAX),
            k.to_string(),
        )
    });
    for key in keys {
        let value = &map[key];
        let alarming = matches!(
            key.as_str(),
            "events_unwritten"
                | "queue_overflows"
                | "tracker_losses"
                | "watch_errors"
                | "store_unparsed"
        ) && !is_nothing(value)
            || (key == "ready" && value == &Value::Bool(false))
            || (key == "tracker_fallback" && value.as_bool() == Some(true));
        let label = if key == "uptime_secs" { "uptime" } else { key };
        let mut block = String::new();
        write_value(&mut block, label, value, 0);
        if alarming {
            p.paint(&mut out, Palette::warning(), block.trim_end_matches('\n'));
            out.push('\n');
        } else {
            out.push_str(&block);
        }
    }
    out
}

/// Zero, false, empty, null, or an object of only such values.
fn is_nothing(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_nothing),
    }
}

fn scalar_text(key: &str, v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        Value::String(s) => terminal_text(s).into_owned(),
        Value::Number(n) if key == "uptime" => match n.as_u64() {
            Some(s) => format!("{}h {:02}m {:02}s", s / 3600, s / 60 % 60, s % 60),
            None => n.to_string(),
        },
        other => terminal_text(&other.to_string()).into_owned(),
    }
}

fn write_value(out: &mut String, key: &str, v: &Value, depth: usize) {
    let indent = "  ".repeat(depth);
    let key = terminal_text(key);
    match v {
        Value::Object(o)
            if o.values().all(|x| !x.is_object() && !x.is_array()) && !o.is_empty() =>
        {
            // A flat object on one line: `tracker_losses: map_full 0, ...`.
            let parts: Vec<String> = o
                .iter()
                .map(|(k, x)| format!("{} {}", terminal_text(k), scalar_text(k, x)))
                .collect();
            out.push_str(&format!("{indent}{key}: {}\n", parts.join(", ")));
        }
        Value::Object(o) => {
            out.push_str(&format!("{indent}{key}:\n"));
            for (k, x) in o {
                write_value(out, k, x, depth + 1);
            }
        }
        Value::Array(a) if a.is_empty() => out.push_str(&format!("{indent}{key}: none\n")),
        Value::Array(a) => {
            out.push_str(&format!("{indent}{key}:\n"));
            for item in a {
                let text = match item {
                    // `path=/x recursive=yes`: one item per line.
                    Value::Object(o) => o
                        .iter()
                        .map(|(k, x)| format!("{}={}", terminal_text(k), scalar_text(k, x)))
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => scalar_text("", other),
                };
                out.push_str(&format!("{indent}  - {text}\n"));
            }
        }
        scalar => out.push_str(&format!("{indent}{key}: {}\n", scalar_text(&key, scalar))),
    }
}

/// Writes `text` to stdout; a closed pipe (`fsmon health | head -1`) is
/// not an error.
pub fn print(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn text_on_terminals_colour_by_flag_term_and_no_color() {
        let text = |color| Mode {
            format: Format::Text,
            color,
        };
        let auto = ColorChoice::Auto;
        assert_eq!(decide(None, auto, true, os("xterm"), None), text(true));
        assert_eq!(
            decide(None, auto, false, os("xterm"), None).format,
            Format::Json
        );
        assert_eq!(decide(None, auto, true, os("dumb"), None), text(false));
        assert_eq!(decide(None, auto, true, None, None), text(false));
        // no-color.org: any non-empty value disables; empty does not.
        assert_eq!(decide(None, auto, true, os("xterm"), os("1")), text(false));
        assert_eq!(decide(None, auto, true, os("xterm"), os("")), text(true));
        // The flag wins over NO_COLOR and over a pipe.
        assert_eq!(
            decide(None, ColorChoice::Always, true, os("dumb"), os("1")),
            text(true)
        );
        assert_eq!(
            decide(Some(Format::Text), ColorChoice::Always, false, None, None),
            text(true)
        );
        assert_eq!(
            decide(Some(Format::Text), auto, false, os("xterm"), None),
            text(false)
        );
        assert_eq!(
            decide(None, ColorChoice::Never, true, os("xterm"), None),
            text(false)
        );
        // JSON is never coloured.
        assert_eq!(
            decide(
                Some(Format::Json),
                ColorChoice::Always,
                true,
                os("xterm"),
                None
            ),
            Mode {
                format: Format::Json,
                color: false
            }
        );
    }

    #[test]
    fn hostile_names_are_escaped() {
        assert_eq!(terminal_text("plain/päth"), "plain/päth");
        assert_eq!(
            terminal_text("a\u{1b}[2J\nb\tc\r"),
            "a\\u001b[2J\\nb\\tc\\r"
        );
        assert_eq!(
            terminal_text("x\u{7f}\u{9b}y\u{202e}z"),
            "x\\u007f\\u009by\\u202ez"
        );
        let line = br#"{"time":"2026-05-07T10:00:01.204371+00:00","event_type":"CREATE","path":"/w/e\u001b[31m\nvil","pid":7,"cmd":"to\u001buch","user":"u\u009b","file_size":0,"ppid":1,"tgid":7,"container":"c\u0007"}"#;
        for color in [false, true] {
            let out = render_event_line(line, color, false);
            assert!(out.contains("/w/e\\u001b[31m\\nvil"), "{out:?}");
            assert!(out.contains("to\\u001buch[7]"), "{out:?}");
            assert!(out.contains(" u\\u009b"), "{out:?}");
            assert!(out.contains("container=c\\u0007"), "{out:?}");
            assert_eq!(out.matches('\n').count(), 1, "{out:?}");
            // Without colour, not one escape byte; with it, only ours.
            let escapes = out.matches('\u{1b}').count();
            assert_eq!(escapes == 0, !color, "{out:?}");
            assert!(!out.contains('\u{9b}') && !out.contains('\u{7}'), "{out:?}");
        }
    }

    #[test]
    fn event_lines_show_time_type_path_process_user_and_flags() {
        let line = br#"{"time":"2026-05-07T10:00:01.204371+00:00","event_type":"CLOSE_WRITE","path":"/var/www/index.html","pid":1234,"cmd":"bash","user":"deploy","file_size":15,"ppid":1200,"tgid":1234,"unresolved":true,"scan":true}"#;
        let out = render_event_line(line, false, false);
        let local = local_time("2026-05-07T10:00:01.204371+00:00");
        assert_eq!(
            out,
            format!(
                "{local}  CLOSE_WRITE    /var/www/index.html  bash[1234] deploy  scan  unresolved\n"
            )
        );
        let stream = br#"{"group":"nginx","time":"2026-05-07T10:00:01+00:00","event_type":"CREATE","path":"/x","pid":0,"cmd":"","user":"","file_size":0,"ppid":0,"tgid":0}"#;
        let out = render_event_line(stream, false, true);
        assert!(
            out.contains("  [nginx]           CREATE         /x  ?[0] ?\n"),
            "{out:?}"
        );
        // A fleet's line names its host before the group.
        let fleet = br#"{"host":"web-1","group":"_global","time":"2026-05-07T10:00:01+00:00","event_type":"DELETE","path":"/y","pid":7,"cmd":"rm","user":"root","file_size":0,"ppid":1,"tgid":7}"#;
        let out = render_event_line(fleet, false, true);
        assert!(
            out.contains("  web-1 [_global]         DELETE         /y  rm[7] root\n"),
            "{out:?}"
        );
        let lost = br#"{"time":"2026-05-07T10:00:01+00:00","event_type":"Q_OVERFLOW","path":"","pid":0,"cmd":"","user":"","file_size":0,"ppid":0,"tgid":0,"lost":true}"#;
        assert!(
            render_event_line(lost, false, false).contains("Q_OVERFLOW     events were LOST here")
        );
        let loss = br#"{"time":"2026-05-07T10:00:01+00:00","event_type":"TRACKER_LOSS","path":"","pid":0,"cmd":"","user":"","file_size":0,"ppid":0,"tgid":0,"lost":true}"#;
        assert!(
            render_event_line(loss, false, false)
                .contains("TRACKER_LOSS   the process tracker LOST track")
        );
        let missed = render_event_line(br#"{"notice":"missed","missed":120}"#, false, true);
        assert!(missed.starts_with("-- missed 120 events"), "{missed}");
        let junk = render_event_line(b"\x1b]0;pwned\x07", false, false);
        assert!(
            junk.starts_with("unreadable line: \\u001b]0;pwned\\u0007"),
            "{junk:?}"
        );
    }

    #[test]
    fn the_sink_renders_lines_split_anywhere_and_json_passes_through() {
        let a = br#"{"time":"2026-05-07T10:00:01+00:00","event_type":"CREATE","path":"/a","pid":1,"cmd":"c","user":"u","file_size":0,"ppid":0,"tgid":1}"#;
        let mut input = a.to_vec();
        input.push(b'\n');
        input.extend_from_slice(a);
        input.push(b'\n');
        let text = Mode {
            format: Format::Text,
            color: false,
        };
        let mut sink = EventSink::new(Vec::new(), text, false);
        for chunk in input.chunks(7) {
            sink.write_all(chunk).unwrap();
        }
        sink.finish().unwrap();
        let EventSink::Text(t) = sink else { panic!() };
        let expected = render_event_line(a, false, false);
        assert_eq!(String::from_utf8(t.out).unwrap(), expected.repeat(2));
        let json = Mode {
            format: Format::Json,
            color: false,
        };
        let mut sink = EventSink::new(Vec::new(), json, false);
        sink.write_all(&input).unwrap();
        let EventSink::Json(out) = sink else { panic!() };
        assert_eq!(out, input);
    }

    #[test]
    fn monitored_as_a_table_and_health_as_key_value_lines() {
        let lines = vec![
            r#"{"cmd":"_global","paths":{"/var/www":{"recursive":true,"types":["CLOSE_WRITE","ATTRIB","CREATE","DELETE","DELETE_SELF","MOVED_FROM","MOVED_TO","MOVE_SELF"]}}}"#.to_string(),
            r#"{"cmd":"nginx","paths":{"/srv/a\u001b":{"recursive":false,"types":["MODIFY","CREATE"],"size":">=1MB","mark":"inode"}}}"#.to_string(),
        ];
        let t = render_monitored(&lines, false);
        assert_eq!(
            t,
            "GROUP    PATH          RECURSIVE  TYPES          SIZE   MARK\n\
             _global  /var/www      yes        default        -      auto\n\
             nginx    /srv/a\\u001b  no         MODIFY,CREATE  >=1MB  inode\n"
        );
        // Wide characters take two columns, a combining accent none: the
        // next column still lines up on a terminal.
        let wide = vec![
            r#"{"cmd":"_global","paths":{"/数据":{"recursive":true}}}"#.to_string(),
            r#"{"cmd":"_global","paths":{"/cafe\u0301s":{"recursive":true}}}"#.to_string(),
            r#"{"cmd":"_global","paths":{"/abcdef":{"recursive":true}}}"#.to_string(),
        ];
        let t = render_monitored(&wide, false);
        let columns: Vec<usize> = t
            .lines()
            .map(|l| {
                let at = l.find(" yes").or_else(|| l.find(" RECURSIVE")).unwrap();
                l[..at].width()
            })
            .collect();
        assert!(columns.windows(2).all(|w| w[0] == w[1]), "{t}\n{columns:?}");
        let h: Value = serde_json::from_str(
            r#"{"ok":true,"version":"0.5.0","uptime_secs":3725,"ready":true,"paths":[{"group":"g","path":"/x","pending":false}],"watch_errors":[],"tracker_losses":{"map_full":0},"ship":null}"#,
        )
        .unwrap();
        let t = render_health(&h, false);
        assert_eq!(
            t,
            "version: 0.5.0\nuptime: 1h 02m 05s\nready: yes\ntracker_losses: map_full 0\npaths:\n  - group=g path=/x pending=no\nship: -\nwatch_errors: none\n"
        );
    }
}
