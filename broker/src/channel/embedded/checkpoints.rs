//! The one owner of a broker's stored checkpoints in memory, and of which of them
//! hold retention back.
//!
//! The broker reads a checkpoint file once and updates the entry after every store
//! (only once the file is written, so nothing here is ahead of the disk's copy).
//! The partition writers ask it for the *floor* of their partition before deleting a
//! segment: the lowest checkpoint of the live triggers and cursors, those the
//! dispatcher registered with [`Checkpoints::set_live`]. A segment is deleted only
//! when the floor is at or past its end, so retention never removes an event a live
//! trigger has not passed. Until a dispatcher registers, nothing holds a floor of
//! its own and every partition is held at 0: nothing is deleted that might be
//! undelivered (with `--role ingress` on the embedded log nobody delivers at all).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::channel::Offset;

/// Who holds a partition back, for the error a producer gets and the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    /// The lowest live checkpoint of the partition.
    pub offset: Offset,
    /// Whose it is: a trigger, `_malformed`, or a note that no dispatcher runs.
    pub holder: String,
}

/// Named when nothing has registered live checkpoints yet.
pub const NO_DISPATCHER: &str = "(no dispatcher has started for this broker)";

#[derive(Default)]
struct State {
    /// Checkpoints by name as stored; `None` per partition where none is.
    offsets: HashMap<String, Vec<Option<Offset>>>,
    /// The names whose checkpoints hold retention; `None` until registered.
    live: Option<Vec<String>>,
}

/// A broker's checkpoints (see the module docs).
#[derive(Default)]
pub struct Checkpoints {
    state: Mutex<State>,
}

impl Checkpoints {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored checkpoint of `name`, if it was loaded.
    pub fn get(&self, name: &str) -> Option<Vec<Option<Offset>>> {
        self.lock().offsets.get(name).cloned()
    }

    /// Records what was stored (or loaded) for `name`.
    pub fn set(&self, name: &str, offsets: Vec<Option<Offset>>) {
        self.lock().offsets.insert(name.to_owned(), offsets);
    }

    /// Forgets `name`'s checkpoint (its file was deleted).
    pub fn remove(&self, name: &str) {
        self.lock().offsets.remove(name);
    }

    /// Names the checkpoints that hold retention from now on (each already loaded
    /// with [`Checkpoints::set`]; one that is not counts as 0).
    pub fn set_live(&self, names: Vec<String>) {
        self.lock().live = Some(names);
    }

    /// The floor of partition `p`: `None` when no live checkpoint holds it (no
    /// triggers), so retention may delete by its limits alone.
    pub fn floor(&self, p: usize) -> Option<Floor> {
        let st = self.lock();
        let Some(live) = &st.live else {
            return Some(Floor {
                offset: 0,
                holder: NO_DISPATCHER.to_owned(),
            });
        };
        live.iter()
            .map(|name| (Self::at(&st, name, p), name))
            .min_by_key(|&(o, _)| o)
            .map(|(offset, name)| Floor {
                offset,
                holder: name.clone(),
            })
    }

    /// The live checkpoints of partition `p` below `end`, lowest first.
    pub fn behind(&self, p: usize, end: Offset) -> Vec<(String, Offset)> {
        let st = self.lock();
        let mut out: Vec<(String, Offset)> = st
            .live
            .iter()
            .flatten()
            .map(|name| (name.clone(), Self::at(&st, name, p)))
            .filter(|&(_, o)| o < end)
            .collect();
        out.sort_by_key(|&(_, o)| o);
        out
    }

    fn at(st: &State, name: &str, p: usize) -> Offset {
        st.offsets
            .get(name)
            .and_then(|v| v.get(p).copied().flatten())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_registered_holds_everything() {
        let c = Checkpoints::default();
        c.set("t", vec![Some(50)]);
        let f = c.floor(0).expect("held");
        assert_eq!(f.offset, 0);
        assert_eq!(f.holder, NO_DISPATCHER);
    }

    #[test]
    fn the_lowest_live_checkpoint_is_the_floor() {
        let c = Checkpoints::default();
        c.set("fast", vec![Some(90), Some(10)]);
        c.set("slow", vec![Some(20), Some(30)]);
        c.set("removed", vec![Some(1), Some(1)]);
        c.set_live(vec!["fast".into(), "slow".into()]);
        assert_eq!(
            c.floor(0),
            Some(Floor {
                offset: 20,
                holder: "slow".into()
            })
        );
        assert_eq!(c.floor(1).map(|f| f.holder), Some("fast".into()));
        assert_eq!(c.behind(0, 50), vec![("slow".to_owned(), 20)]);
        // A live name with no stored checkpoint (or none for this partition) holds at 0.
        c.set("new", vec![None, Some(5)]);
        c.set_live(vec!["fast".into(), "new".into(), "unloaded".into()]);
        assert_eq!(c.floor(0).map(|f| f.offset), Some(0));
        // No live checkpoints at all: nothing holds.
        c.set_live(Vec::new());
        assert_eq!(c.floor(0), None);
    }
}
