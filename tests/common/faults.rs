//! The fault rules every simulator keeps: a rule applies to requests whose path contains
//! its pattern; a limited rule (`first(n, fault)`) only to its next `n` matches.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A simulator's fault enum.
pub trait SimFault: Clone {
    /// For a fault that holds for a few more matches only: how many are left and the fault.
    fn limited(&self) -> Option<(&AtomicUsize, &Self)>;
}

/// Fault rules by path pattern.
pub struct FaultRules<F>(Vec<(String, F)>);

impl<F> Default for FaultRules<F> {
    fn default() -> Self {
        FaultRules(Vec::new())
    }
}

impl<F: SimFault> FaultRules<F> {
    /// A rule that wins over the earlier ones.
    pub fn add(&mut self, pattern: &str, fault: F) {
        self.0.insert(0, (pattern.to_string(), fault));
    }

    /// A rule that the earlier ones win over.
    pub fn add_behind(&mut self, pattern: &str, fault: F) {
        self.0.push((pattern.to_string(), fault));
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The fault for a request to `path`: the first rule whose pattern it contains (a
    /// limited one counts this request, and gives nothing once used up); `None`: no fault.
    pub fn matching(&self, path: &str) -> Option<F> {
        let (_, f) = self.0.iter().find(|(p, _)| path.contains(p.as_str()))?;
        match f.limited() {
            Some((remaining, fault)) => remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .ok()
                .map(|_| fault.clone()),
            None => Some(f.clone()),
        }
    }
}
