//! The stacks sites are keyed by: the kernel's, walked by the probes (read
//! from the kernel when needed: kept here, the stacks of short processes,
//! each at its own addresses, would pile up), and those the core makes — a
//! goroutine's creation chain, a site from before attach — which carry notes
//! among their return addresses.
use std::collections::HashMap;

use leaktrace_common::{NO_STACK, StackId, unwind::StackEnd};

use super::seams::Kernel;

/// Ids of the stacks the core makes have this bit set; the kernel's never do.
const MADE: StackId = 1 << 63;

/// One entry of a stack: a return address, or a note where the chain of
/// return addresses changes meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pc {
    Return(u64),
    Note(Note),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Note {
    /// What follows made the goroutine that ran what precedes.
    CreatedBy,
    StartedBeforeAttach,
    AllocatedBeforeAttach,
}

impl Note {
    /// As a frame shows it.
    pub fn text(self) -> &'static str {
        match self {
            Note::CreatedBy => "[goroutine created by]",
            Note::StartedBeforeAttach => "[started before attach]",
            Note::AllocatedBeforeAttach => "[allocated before attach]",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    /// Innermost first.
    pub pcs: Vec<Pc>,
    pub end: StackEnd,
}

impl Stack {
    /// The note ending a stack whose walk stopped before the outermost frame.
    pub fn truncation(&self) -> Option<&'static str> {
        Some(match self.end {
            StackEnd::Complete => return None,
            StackEnd::Depth => "[stack truncated: --max-depth reached]",
            StackEnd::NoMapping => "[stack ends: return address in no known code]",
            StackEnd::Unsupported => "[stack ends: unwind rule not followed]",
            StackEnd::Unreadable => "[stack ends: stack memory unreadable]",
            StackEnd::NotAdvancing => "[stack ends: frame did not move up the stack]",
            StackEnd::NoTable => "[stack ends: unwind table not loaded]",
        })
    }
}

/// The stack of a site whose stack was not recorded.
const EMPTY: Stack = Stack {
    pcs: Vec::new(),
    end: StackEnd::Complete,
};

#[derive(Default)]
pub struct Stacks {
    /// The stacks made here, by id.
    by_id: HashMap<StackId, Stack>,
    /// Ids of the stacks the core made, by their entries.
    made: HashMap<Vec<Pc>, StackId>,
}

impl Stacks {
    /// Stack `id`: made here, or the kernel's; empty when it was not recorded.
    pub fn get(&self, id: StackId, kernel: &dyn Kernel) -> Stack {
        if id & MADE != 0 {
            return self.by_id.get(&id).cloned().unwrap_or(EMPTY);
        }
        match kernel.stack(id) {
            Some((addrs, end)) if id != NO_STACK => Stack {
                pcs: addrs.into_iter().map(Pc::Return).collect(),
                end: StackEnd::ALL
                    .get(end as usize)
                    .copied()
                    .unwrap_or(StackEnd::Complete),
            },
            _ => EMPTY,
        }
    }

    /// The entries of a stack made here (empty for another id).
    pub fn made(&self, id: StackId) -> &[Pc] {
        self.by_id.get(&id).map_or(&[], |stack| &stack.pcs)
    }

    /// The id of a stack made here (top bit set, unlike the kernel's); the
    /// same entries get the same id.
    pub fn intern(&mut self, pcs: Vec<Pc>) -> StackId {
        if let Some(&id) = self.made.get(&pcs) {
            return id;
        }
        let id = MADE | self.made.len() as StackId;
        let stack = Stack {
            pcs: pcs.clone(),
            end: StackEnd::Complete,
        };
        self.by_id.insert(id, stack);
        self.made.insert(pcs, id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::Ns, probes::ProbeError};

    struct OneStack;

    impl Kernel for OneStack {
        fn stack(&self, id: StackId) -> Option<(Vec<u64>, u32)> {
            (id == 7).then(|| (vec![0x10, 0x20], StackEnd::Depth as u32))
        }

        fn take_allocs(
            &mut self,
            _: u32,
            _: Ns,
        ) -> Result<Vec<leaktrace_common::AllocInfo>, ProbeError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn kernel_stacks_are_read_once_and_made_ones_interned() {
        let mut stacks = Stacks::default();
        let walked = stacks.get(7, &OneStack);
        assert_eq!(walked.pcs, [Pc::Return(0x10), Pc::Return(0x20)]);
        assert_eq!(
            walked.truncation(),
            Some("[stack truncated: --max-depth reached]")
        );
        assert!(stacks.get(8, &OneStack).pcs.is_empty());
        assert!(stacks.get(NO_STACK, &OneStack).pcs.is_empty());
        let chain = vec![Pc::Return(1), Pc::Note(Note::CreatedBy), Pc::Return(2)];
        let id = stacks.intern(chain.clone());
        assert_ne!(id & MADE, 0);
        assert_eq!(stacks.intern(chain.clone()), id);
        assert_ne!(stacks.intern(vec![Pc::Return(1)]), id);
        assert_eq!(stacks.get(id, &OneStack).pcs, chain);
    }
}
