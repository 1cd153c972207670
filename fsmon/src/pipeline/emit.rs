//! Emitting: one event as one JSON line, to its group's log and to the
//! live subscribers (the same bytes to both).
use std::sync::Arc;

use super::{SubEvent, write::LogSet};
use crate::event::FileEvent;

/// Writes one line to the group's log and to subscribers.
pub fn emit(
    logs: &mut LogSet,
    subscribe: &tokio::sync::broadcast::Sender<Arc<SubEvent>>,
    line: &mut String,
    group: &Arc<str>,
    ev: &FileEvent<'_>,
) {
    let live = subscribe.receiver_count() > 0;
    if let Some(w) = logs.writer(group) {
        let buf = w.line_buf();
        let start = buf.len();
        serde_json::to_writer(&mut *buf, ev).expect("serializing to memory");
        if live {
            line.clear();
            line.push_str(std::str::from_utf8(&buf[start..]).unwrap_or(""));
        }
        w.end_line();
    } else if live {
        *line = serde_json::to_string(ev).expect("serializing to memory");
    }
    if live {
        let _ = subscribe.send(Arc::new(SubEvent {
            group: group.clone(),
            line: line.as_str().into(),
        }));
    }
}
