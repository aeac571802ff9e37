//! The dependency graph of a workflow: ordering, ancestry, descendants and cycles.
//!
//! Invariant: these functions only read `Step::id` and `Step::deps` and are total — they
//! never fail on an invalid graph (unknown deps are ignored, self-deps are not edges, steps
//! caught in cycles are still returned) — so validation can use them to *describe* what is
//! wrong, and the engine can rely on them for a validated workflow.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::workflow::definition::{Step, Workflow};

/// For each step, the indices of its deps (known ids only, no self-edges, no repeats).
/// With duplicate ids, the first step carrying an id wins.
fn dep_indices(steps: &[Step]) -> Vec<Vec<usize>> {
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        index.entry(step.id.as_str()).or_insert(i);
    }
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let mut deps: Vec<usize> = step
                .deps
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .filter(|&d| d != i)
                .collect();
            deps.sort_unstable();
            deps.dedup();
            deps
        })
        .collect()
}

/// Indices of `steps` in an order where every step comes after its deps; among steps that
/// are ready at the same time, definition order wins. Steps caught in (or behind) a cycle,
/// which a validated workflow never has, come last in definition order.
pub fn topo_order(steps: &[Step]) -> Vec<usize> {
    let mut order = kahn(steps);
    if order.len() < steps.len() {
        let placed: BTreeSet<usize> = order.iter().copied().collect();
        order.extend((0..steps.len()).filter(|i| !placed.contains(i)));
    }
    order
}

/// Kahn's algorithm: the steps whose deps can all be ordered, in order. The steps left out
/// are exactly those on or behind a cycle.
fn kahn(steps: &[Step]) -> Vec<usize> {
    let deps = dep_indices(steps);
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..steps.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(steps.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &next in &dependents[i] {
            waiting[next] -= 1;
            if waiting[next] == 0 {
                ready.insert(next);
            }
        }
    }
    order
}

/// Ids of every step that `steps[index]` waits for, directly or transitively.
pub fn ancestors(steps: &[Step], index: usize) -> BTreeSet<String> {
    let deps = dep_indices(steps);
    let mut seen = BTreeSet::new();
    let mut stack: Vec<usize> = deps.get(index).cloned().unwrap_or_default();
    while let Some(i) = stack.pop() {
        if seen.insert(i) {
            stack.extend(deps[i].iter().copied());
        }
    }
    seen.into_iter().map(|i| steps[i].id.clone()).collect()
}

/// Answers "is step `a` upstream of step `b`?" for many pairs without building any step's
/// whole ancestor set: a depth-first search from `b` that stops at the first hit and reuses
/// one mark vector, after checking direct deps. Validation asks it only for the steps a
/// template references, so a 10,000-step chain or fan-in costs a linear pass, not the
/// quadratic one of an ancestor set per step.
pub struct Upstream {
    deps: Vec<Vec<usize>>,
    mark: Vec<u32>,
    epoch: u32,
    stack: Vec<usize>,
}

impl Upstream {
    pub fn new(steps: &[Step]) -> Upstream {
        Upstream {
            deps: dep_indices(steps),
            mark: vec![0; steps.len()],
            epoch: 0,
            stack: Vec::new(),
        }
    }

    /// Whether `ancestor` is a dep of `of`, directly or transitively.
    pub fn contains(&mut self, of: usize, ancestor: usize) -> bool {
        let Some(direct) = self.deps.get(of) else {
            return false;
        };
        if direct.binary_search(&ancestor).is_ok() {
            return true;
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.mark.fill(0);
            self.epoch = 1;
        }
        self.stack.clear();
        self.stack.extend_from_slice(direct);
        while let Some(i) = self.stack.pop() {
            if i == ancestor {
                return true;
            }
            if self.mark[i] != self.epoch {
                self.mark[i] = self.epoch;
                self.stack.extend_from_slice(&self.deps[i]);
            }
        }
        false
    }
}

/// The step `step_id` itself plus every step downstream of it (empty if there is no such
/// step): what re-runs when a workflow is resumed from `step_id`.
pub fn descendants(wf: &Workflow, step_id: &str) -> BTreeSet<String> {
    let Some(start) = wf.position(step_id) else {
        return BTreeSet::new();
    };
    let deps = dep_indices(&wf.steps);
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); wf.steps.len()];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            dependents[d].push(i);
        }
    }
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(i) = stack.pop() {
        if seen.insert(i) {
            stack.extend(dependents[i].iter().copied());
        }
    }
    seen.into_iter().map(|i| wf.steps[i].id.clone()).collect()
}

/// Dependency cycles, each as a path of step indices `a, b, …, a` where each step depends on
/// the next. Every step on some cycle appears in at least one reported cycle.
pub fn cycles(steps: &[Step]) -> Vec<Vec<usize>> {
    let deps = dep_indices(steps);
    let placed: BTreeSet<usize> = kahn(steps).into_iter().collect();
    let leftover: BTreeSet<usize> = (0..steps.len()).filter(|i| !placed.contains(i)).collect();
    let mut reported = BTreeSet::new();
    let mut found = Vec::new();
    for &start in &leftover {
        if reported.contains(&start) {
            continue;
        }
        if let Some(path) = path_back_to(start, &deps, &leftover) {
            reported.extend(path.iter().copied());
            found.push(path);
        }
    }
    found
}

/// Shortest path `start, …, start` along dep edges within `allowed`, if there is one.
fn path_back_to(
    start: usize,
    deps: &[Vec<usize>],
    allowed: &BTreeSet<usize>,
) -> Option<Vec<usize>> {
    let mut parent: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(i) = queue.pop_front() {
        for &d in &deps[i] {
            if !allowed.contains(&d) {
                continue;
            }
            if d == start {
                let mut path = vec![i];
                let mut at = i;
                while at != start {
                    at = parent.get(&at).copied().unwrap_or(start);
                    path.push(at);
                }
                path.reverse();
                path.push(start);
                return Some(path);
            }
            if let std::collections::btree_map::Entry::Vacant(e) = parent.entry(d) {
                e.insert(i);
                queue.push_back(d);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::definition::{Action, AgentOptions, OnStall, SuccessCheck};
    use crate::workflow::retry::RetryPolicy;
    use crate::workflow::template::Template;

    fn step(id: &str, deps: &[&str]) -> Step {
        Step {
            id: id.into(),
            deps: deps.iter().map(|d| (*d).to_owned()).collect(),
            action: Action::Shell(Template::parse("true").unwrap()),
            cwd: "/".into(),
            env: BTreeMap::new(),
            timeout_s: None,
            stall_timeout_s: 120,
            on_stall: OnStall::Report,
            retry: RetryPolicy::default(),
            agent: AgentOptions::default(),
            role: None,
            success: SuccessCheck::default(),
            when: None,
            continue_on_error: false,
            for_each: None,
            output_json: false,
            output_schema: None,
            max_cost_usd: None,
            group: None,
        }
    }

    fn ids(steps: &[Step], order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| steps[i].id.clone()).collect()
    }

    #[test]
    fn upstream_agrees_with_ancestors_on_every_pair() {
        let steps = [
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["b", "zz"]),
            step("d", &["a", "d"]),
            step("e", &["c", "d"]),
            step("f", &["f"]),
        ];
        let mut up = Upstream::new(&steps);
        for (i, s) in steps.iter().enumerate() {
            let expected = ancestors(&steps, i);
            for (j, t) in steps.iter().enumerate() {
                assert_eq!(
                    up.contains(i, j),
                    expected.contains(&t.id),
                    "{} upstream of {}",
                    t.id,
                    s.id
                );
            }
        }
    }

    #[test]
    fn topo_order_puts_deps_first_and_keeps_definition_order_among_ready_steps() {
        let steps = [
            step("test", &["build"]),
            step("build", &["plan"]),
            step("docs", &[]),
            step("plan", &[]),
        ];
        assert_eq!(
            ids(&steps, &topo_order(&steps)),
            ["docs", "plan", "build", "test"]
        );
    }

    #[test]
    fn topo_order_is_total_on_invalid_graphs() {
        let steps = [
            step("a", &["b", "ghost"]),
            step("b", &["a"]),
            step("c", &["c"]),
            step("d", &["a"]),
        ];
        assert_eq!(ids(&steps, &topo_order(&steps)), ["c", "a", "b", "d"]);
    }

    #[test]
    fn ancestors_are_transitive_deps() {
        let steps = [
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["b"]),
            step("d", &[]),
        ];
        assert_eq!(
            ancestors(&steps, 2),
            BTreeSet::from(["a".to_owned(), "b".to_owned()])
        );
        assert!(ancestors(&steps, 3).is_empty());
    }

    #[test]
    fn descendants_include_the_step_and_everything_downstream() {
        let wf = Workflow {
            name: None,
            inputs: BTreeMap::new(),
            max_cost_usd: None,
            steps: vec![
                step("a", &[]),
                step("b", &["a"]),
                step("c", &["b"]),
                step("d", &[]),
                step("e", &["a", "d"]),
            ],
        };
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(descendants(&wf, "a"), set(&["a", "b", "c", "e"]));
        assert_eq!(descendants(&wf, "d"), set(&["d", "e"]));
        assert_eq!(descendants(&wf, "c"), set(&["c"]));
        assert!(descendants(&wf, "nope").is_empty());
    }

    #[test]
    fn cycles_are_reported_as_dependency_paths() {
        let steps = [
            step("a", &["c"]),
            step("b", &["a"]),
            step("c", &["b"]),
            step("d", &["a"]),
            step("e", &[]),
        ];
        let found: Vec<Vec<String>> = cycles(&steps).iter().map(|c| ids(&steps, c)).collect();
        assert_eq!(
            found,
            [["a", "c", "b", "a"]],
            "a depends on c, c on b, b on a; d is only behind the cycle"
        );
        let two = [step("x", &["y"]), step("y", &["x", "z"]), step("z", &["y"])];
        let found: Vec<Vec<String>> = cycles(&two).iter().map(|c| ids(&two, c)).collect();
        assert_eq!(found, [vec!["x", "y", "x"], vec!["z", "y", "z"]]);
        assert!(
            cycles(&[step("s", &["s"])]).is_empty(),
            "self-deps are reported separately"
        );
    }
}
