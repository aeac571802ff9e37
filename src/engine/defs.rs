//! One compiled copy of each definition in use.
//!
//! Invariant: two workflows whose stored definitions are the same text — a saved workflow
//! started many times with the same inputs, a batch of identical invocations, all of them
//! adopted again after a restart — share one [`Workflow`]; a definition no running workflow
//! uses is not kept. A compiled workflow is immutable, so sharing it changes nothing a
//! workflow can observe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::workflow::Workflow;

/// Entries kept before the first sweep of definitions no longer in use.
const FIRST_SWEEP: usize = 64;

#[derive(Default)]
pub(crate) struct Definitions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Stored definition text → its compiled form, while some workflow holds it.
    map: HashMap<Box<str>, Weak<Workflow>>,
    /// Size at which dead entries are swept next: twice the live ones after a sweep, so
    /// sweeping costs O(1) per insert.
    sweep_at: usize,
}

impl Definitions {
    /// The compiled workflow of this stored definition, if one is in use.
    pub(crate) fn get(&self, stored: &str) -> Option<Arc<Workflow>> {
        let inner = self.inner.lock().ok()?;
        inner.map.get(stored).and_then(Weak::upgrade)
    }

    /// `wf`, compiled from `stored`, or the copy already in use for the same text.
    pub(crate) fn share(&self, stored: &str, wf: Arc<Workflow>) -> Arc<Workflow> {
        let Ok(mut inner) = self.inner.lock() else {
            return wf;
        };
        if let Some(shared) = inner.map.get(stored).and_then(Weak::upgrade) {
            return shared;
        }
        if inner.map.len() >= inner.sweep_at.max(FIRST_SWEEP) {
            inner.map.retain(|_, w| w.strong_count() > 0);
            inner.sweep_at = inner.map.len() * 2;
        }
        inner.map.insert(stored.into(), Arc::downgrade(&wf));
        wf
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|i| i.map.len()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn compiled(run: &str) -> (String, Workflow) {
        let def = serde_json::json!({"steps": [{"id": "a", "run": [run]}]});
        let wf = crate::workflow::compile(&def, &BTreeMap::new(), Path::new("/tmp")).unwrap();
        (serde_json::to_string(&wf).unwrap(), wf)
    }

    #[test]
    fn the_same_stored_definition_is_one_shared_copy() {
        let defs = Definitions::default();
        let (text, wf) = compiled("true");
        let first = defs.share(&text, Arc::new(wf.clone()));
        let second = defs.share(&text, Arc::new(wf));
        assert!(Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&first, &defs.get(&text).unwrap()));
        let (other, wf) = compiled("false");
        assert!(!Arc::ptr_eq(&first, &defs.share(&other, Arc::new(wf))));
    }

    #[test]
    fn a_definition_no_workflow_holds_is_not_kept() {
        let defs = Definitions::default();
        for i in 0..1000 {
            let (text, wf) = compiled(&format!("step-{i}"));
            drop(defs.share(&text, Arc::new(wf)));
        }
        assert!(defs.len() <= FIRST_SWEEP, "{} entries kept", defs.len());
        let (text, wf) = compiled("step-1");
        assert!(defs.get(&text).is_none());
        let held = defs.share(&text, Arc::new(wf));
        assert!(Arc::ptr_eq(&held, &defs.get(&text).unwrap()));
    }
}
