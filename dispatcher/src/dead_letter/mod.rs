//! The broker's own dead-letter log, and the one owner of it: the entries (an event
//! plus the `knativeerror*` extensions and `triggerfishtrigger`), storing them,
//! listing them page by page, and redriving them.
//!
//! The log has one partition. Entries are appended by the dispatcher (delivery and the
//! dead-letter sink failed for good, a reply could not be stored, a malformed record)
//! and by redrive (an entry that failed again, or one it passes over). Its checkpoint
//! [`REDRIVE_CURSOR`] is the redrive cursor: entries before it are done, the others
//! are pending (the backlog gauge `triggerfish_dead_letter_log_entries`).
//!
//! Redrive is [`redrive`]'s (re-exported here).

use std::time::Duration;

use base64::Engine;
use broker::channel::{BrokerLog, ChannelError, Malformed, Offset, Record, StartAt};
use broker::event::{
    self, AttrValue, Event, ERROR_CODE, ERROR_DATA, ERROR_DATA_MAX, ERROR_DEST, ERROR_TRIGGER,
    REASON,
};
use tokio_util::sync::CancellationToken;

use crate::deliver::Attempt;
use crate::trigger::{append_until_stored, Abandoned, Unstored};

/// Checkpoint name of the dead-letter log's redrive cursor (not a valid trigger name,
/// so it cannot collide with one).
pub const REDRIVE_CURSOR: &str = "_redrive";

/// The most entries one listing page returns.
pub const MAX_PAGE: usize = 1000;

// ---------------------------------------------------------------------------------
// Entries

/// The event as it goes to a dead-letter sink or log: the original plus the three
/// `knativeerror*` extensions.
pub fn entry_for(event: &Event, dest: &str, last: &Attempt) -> Event {
    let mut dead = event.clone();
    dead.set(ERROR_DEST, AttrValue::String(dest.into()));
    match last.status {
        Some(s) => dead.set(ERROR_CODE, AttrValue::String(s.as_u16().to_string().into())),
        None => {
            dead.remove(ERROR_CODE);
        }
    }
    let body = &last.body[..last.body.len().min(ERROR_DATA_MAX)];
    if body.is_empty() {
        dead.remove(ERROR_DATA);
    } else {
        let b64 = base64::engine::general_purpose::STANDARD.encode(body);
        dead.set(ERROR_DATA, AttrValue::String(b64.into()));
    }
    dead
}

/// The event an entry stood for: without the dead-letter extensions.
pub fn original(entry: &Event) -> Event {
    let mut e = entry.clone();
    for ext in event::DEAD_LETTER_EXTENSIONS {
        e.remove(ext);
    }
    e
}

/// Sets the reason of a dead-letter entry that did not come from a failed delivery:
/// in [`REASON`], and base64 in `knativeerrordata` as for failed deliveries. Control
/// characters are replaced (attribute values must be printable).
pub fn set_reason(e: &mut Event, reason: &str) {
    let reason = printable(reason, usize::MAX);
    e.set(
        ERROR_DATA,
        AttrValue::String(
            base64::engine::general_purpose::STANDARD
                .encode(reason.as_bytes())
                .into(),
        ),
    );
    e.set(REASON, AttrValue::String(reason.into()));
}

/// An entry that keeps only an event's identity and the reason (when the full entry
/// cannot be stored or built).
pub(crate) fn minimal_entry(event: &Event, trigger: &str, reason: &str) -> Event {
    let mut e = Event::new();
    e.set_str("specversion", "1.0");
    for name in [event::ID, event::SOURCE, event::TYPE] {
        let v = event.get_str(name).unwrap_or("unknown");
        e.set_str(name, printable(v, 1024));
    }
    e.set_str(ERROR_TRIGGER, trigger);
    e.set_str(REASON, format!("{reason} (attributes and data not kept)"));
    e
}

/// `s` cut to at most `max` bytes with control characters replaced by spaces (an
/// attribute value must be printable).
pub(crate) fn printable(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Stores an entry, retrying until it is stored ([`append_until_stored`]) or
/// `shutdown` abandons it. An entry larger than the log accepts is stored as a
/// [`minimal_entry`] with the reason, and the loss of its attributes logged.
pub(crate) async fn store(
    log: &dyn BrokerLog,
    entry: &Event,
    trigger: &str,
    shutdown: &CancellationToken,
) -> Result<(), Abandoned> {
    match append_until_stored(log, entry, trigger, "dead letter", shutdown).await {
        Ok(()) => Ok(()),
        Err(Unstored::Abandoned) => Err(Abandoned),
        Err(Unstored::Never(e)) => {
            tracing::error!(broker = %log.broker(), trigger, event_id = entry.id(), error = %e,
                "dead letter too large for the dead-letter log; storing it without its attributes and data");
            let small = shrunk(entry, trigger, &e);
            match append_until_stored(log, &small, trigger, "dead letter", shutdown).await {
                Err(Unstored::Abandoned) => Err(Abandoned),
                // A minimal entry always fits; were it refused for good, the reason is
                // logged above and retrying cannot help.
                Ok(()) | Err(Unstored::Never(_)) => Ok(()),
            }
        }
    }
}

/// The minimal entry standing for `entry` when the log refused it with `e`.
pub(crate) fn shrunk(entry: &Event, trigger: &str, e: &ChannelError) -> Event {
    let reason = entry.get_str(REASON).unwrap_or("delivery failed");
    minimal_entry(entry, trigger, &printable(&format!("{reason}; {e}"), 1024))
}

// ---------------------------------------------------------------------------------
// Cursor, backlog, listing

/// Where the redrive of a dead-letter log resumes: its [`REDRIVE_CURSOR`] checkpoint
/// (partition 0), or 0.
pub async fn cursor(log: &dyn BrokerLog) -> Result<Offset, ChannelError> {
    Ok(log
        .load_checkpoint(REDRIVE_CURSOR)
        .await?
        .first()
        .copied()
        .flatten()
        .unwrap_or(0))
}

/// Entries of a dead-letter log not yet redriven.
pub async fn backlog(log: &dyn BrokerLog) -> Result<u64, ChannelError> {
    let end = log.end_offset(0).await?;
    Ok(end.saturating_sub(cursor(log).await?))
}

/// One entry as read.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its offset.
    pub offset: Offset,
    /// The entry, or why it is not a CloudEvent (with its stored bytes, if any).
    pub entry: Result<Event, Malformed>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    /// The redrive cursor (entries from here on are pending).
    pub cursor: Offset,
    /// The end of the log when the page was read.
    pub end: Offset,
    /// Entries in offset order.
    pub entries: Vec<Listed>,
    /// Where the next page starts (`end` when there is none).
    pub next: Offset,
}

/// A listing that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// `limit` is 0 or over [`MAX_PAGE`].
    #[error("limit={0}: a page holds 1 to {MAX_PAGE} entries")]
    Limit(usize),
    /// The log failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
}

/// Up to `limit` entries from `from` (default: the cursor), at most [`MAX_PAGE`].
pub async fn page(
    log: &dyn BrokerLog,
    from: Option<Offset>,
    limit: usize,
) -> Result<Page, ListError> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(ListError::Limit(limit));
    }
    let cursor = cursor(log).await?;
    let end = log.end_offset(0).await?;
    let from = from.unwrap_or(cursor).min(end);
    let mut reader = log.reader(0, StartAt::Offset(from)).await?;
    let records = read_until(reader.as_mut(), end, limit).await?;
    // A short page reached the end; a full one continues after its last entry.
    let next = match records.last() {
        Some(r) if records.len() == limit => r.offset.saturating_add(1).min(end),
        _ => end,
    };
    Ok(Page {
        cursor,
        end,
        entries: records.into_iter().map(listed).collect(),
        next,
    })
}

/// The entry at `offset`, if the log holds one there.
pub async fn entry_at(log: &dyn BrokerLog, offset: Offset) -> Result<Option<Listed>, ChannelError> {
    let end = log.end_offset(0).await?;
    if offset >= end {
        return Ok(None);
    }
    let mut reader = log.reader(0, StartAt::Offset(offset)).await?;
    let records = read_until(reader.as_mut(), offset.saturating_add(1), 1).await?;
    Ok(records.into_iter().find(|r| r.offset == offset).map(listed))
}

fn listed(r: Record) -> Listed {
    Listed {
        offset: r.offset,
        entry: r.event,
    }
}

/// How long a read waits for records the log's end says exist (NATS and Kafka fetch
/// them over the network) before the listing ends short.
const READ_WAIT: Duration = Duration::from_secs(5);

/// Reads records with offsets below `end`, at most `max`.
pub(crate) async fn read_until(
    reader: &mut dyn broker::channel::LogReader,
    end: Offset,
    max: usize,
) -> Result<Vec<Record>, ChannelError> {
    let mut out = Vec::new();
    while reader.position() < end && out.len() < max {
        let want = max - out.len();
        let mut batch = reader.try_batch(want).await?;
        if batch.is_empty() {
            batch = match tokio::time::timeout(READ_WAIT, reader.next_batch(want)).await {
                Ok(b) => b?,
                Err(_) => break,
            };
        }
        let before = out.len();
        out.extend(batch.into_iter().filter(|r| r.offset < end));
        if out.len() == before && reader.position() < end {
            // Nothing below `end` came back although the reader has not reached it.
            break;
        }
    }
    out.truncate(max);
    Ok(out)
}

mod redrive;
pub use redrive::*;
