//! Decisions, after the decider pattern: a query, a state folded from the events it matches, and
//! a pure `decide`.

mod leaf;

use std::any::Any;
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::event::{Event, Position, SequencedEvent};
use crate::query::{Query, QueryItem};
pub use leaf::Leaf;

/// A leaf projection's folded state, type-erased: what a command actor keeps warm.
#[doc(hidden)]
pub type PartState = Box<dyn Any + Send>;

/// State folded from the events matching a query.
///
/// A projection is a value (`Clone + Eq + Hash`): the runtime keeps a projection's folded state
/// warm between commands, and lets the commands of a chain share it, only with projections
/// *equal* to it, so that a field `evolve` reads but the query does not name (a semester, a
/// limit) can never make one projection fold with another's state. Derive the three over every
/// field that `query` or `evolve` reads.
pub trait Projection: Clone + Eq + Hash + Send + Sync + 'static {
    /// What the projection knows. `Clone` lets a command actor keep the state of a warm
    /// boundary and fold only the events appended since.
    type State: Clone + Send + 'static;

    /// The events this projection depends on. A pure function of the projection's fields: the
    /// runtime reads, caches and folds by the query it answered when the command was made.
    fn query(&self) -> Query;

    /// The state before any event.
    fn initial_state(&self) -> Self::State;

    /// Applies one event matching [`Projection::query`].
    fn evolve(&self, state: &mut Self::State, event: &SequencedEvent);

    /// Applies events in position order; each must match [`Projection::query`].
    fn fold<'a>(
        &self,
        state: &mut Self::State,
        events: impl IntoIterator<Item = &'a SequencedEvent>,
    ) {
        for event in events {
            self.evolve(state, event);
        }
    }

    // The runtime keeps the folded state of each *leaf* projection warm on its own, so a tuple
    // (an account and another account) reuses what other tuples sharing a leaf folded. Tuples
    // override these; a leaf projection never needs to.

    /// The leaf projections this one is made of: itself, unless it is a tuple.
    #[doc(hidden)]
    fn parts(&self) -> Vec<Leaf> {
        vec![Leaf::of(self)]
    }

    /// `state` as its leaves' states, in the order of [`Projection::parts`].
    #[doc(hidden)]
    fn split_state(&self, state: Self::State, out: &mut Vec<PartState>) {
        out.push(Box::new(state));
    }

    /// A copy of the state made of its leaves' states, in the order of [`Projection::parts`].
    #[doc(hidden)]
    fn join_state(&self, parts: &mut dyn Iterator<Item = &PartState>) -> Option<Self::State> {
        parts.next()?.downcast_ref::<Self::State>().cloned()
    }

    /// Folds into each leaf the events matching its query (`parts`, as [`Projection::parts`]
    /// answered when the command was made) that lie after the position that leaf has seen
    /// (`seen`, same order); the number of leaves.
    #[doc(hidden)]
    fn fold_parts(
        &self,
        state: &mut Self::State,
        events: &[SequencedEvent],
        parts: &[Leaf],
        seen: &[Option<Position>],
    ) -> usize {
        let after = seen.first().copied().flatten().map_or(0, Position::get);
        let query = parts[0].query();
        self.fold(
            state,
            events
                .iter()
                .filter(|e| e.position.get() > after && query.matches(&e.event)),
        );
        1
    }
}

/// Two projections read together in one round trip: the query is the union of both, and each
/// event is applied to the projection(s) whose own query it matches.
impl<A: Projection, B: Projection> Projection for (A, B) {
    type State = (A::State, B::State);

    fn query(&self) -> Query {
        union(&self.0.query(), &self.1.query())
    }

    fn initial_state(&self) -> Self::State {
        (self.0.initial_state(), self.1.initial_state())
    }

    fn evolve(&self, state: &mut Self::State, event: &SequencedEvent) {
        self.fold(state, [event]);
    }

    fn fold<'a>(
        &self,
        state: &mut Self::State,
        events: impl IntoIterator<Item = &'a SequencedEvent>,
    ) {
        let (qa, qb) = (self.0.query(), self.1.query());
        for event in events {
            if qa.matches(&event.event) {
                self.0.evolve(&mut state.0, event);
            }
            if qb.matches(&event.event) {
                self.1.evolve(&mut state.1, event);
            }
        }
    }

    fn parts(&self) -> Vec<Leaf> {
        let mut parts = self.0.parts();
        parts.extend(self.1.parts());
        parts
    }

    fn split_state(&self, state: Self::State, out: &mut Vec<PartState>) {
        self.0.split_state(state.0, out);
        self.1.split_state(state.1, out);
    }

    fn join_state(&self, parts: &mut dyn Iterator<Item = &PartState>) -> Option<Self::State> {
        Some((self.0.join_state(parts)?, self.1.join_state(parts)?))
    }

    fn fold_parts(
        &self,
        state: &mut Self::State,
        events: &[SequencedEvent],
        parts: &[Leaf],
        seen: &[Option<Position>],
    ) -> usize {
        let a = self.0.fold_parts(&mut state.0, events, parts, seen);
        a + self
            .1
            .fold_parts(&mut state.1, events, &parts[a..], &seen[a..])
    }
}

/// Three projections read together; see the pair.
impl<A: Projection, B: Projection, C: Projection> Projection for (A, B, C) {
    type State = (A::State, B::State, C::State);

    fn query(&self) -> Query {
        union(&union(&self.0.query(), &self.1.query()), &self.2.query())
    }

    fn initial_state(&self) -> Self::State {
        (
            self.0.initial_state(),
            self.1.initial_state(),
            self.2.initial_state(),
        )
    }

    fn evolve(&self, state: &mut Self::State, event: &SequencedEvent) {
        self.fold(state, [event]);
    }

    fn fold<'a>(
        &self,
        state: &mut Self::State,
        events: impl IntoIterator<Item = &'a SequencedEvent>,
    ) {
        let (qa, qb, qc) = (self.0.query(), self.1.query(), self.2.query());
        for event in events {
            if qa.matches(&event.event) {
                self.0.evolve(&mut state.0, event);
            }
            if qb.matches(&event.event) {
                self.1.evolve(&mut state.1, event);
            }
            if qc.matches(&event.event) {
                self.2.evolve(&mut state.2, event);
            }
        }
    }

    fn parts(&self) -> Vec<Leaf> {
        let mut parts = self.0.parts();
        parts.extend(self.1.parts());
        parts.extend(self.2.parts());
        parts
    }

    fn split_state(&self, state: Self::State, out: &mut Vec<PartState>) {
        self.0.split_state(state.0, out);
        self.1.split_state(state.1, out);
        self.2.split_state(state.2, out);
    }

    fn join_state(&self, parts: &mut dyn Iterator<Item = &PartState>) -> Option<Self::State> {
        Some((
            self.0.join_state(parts)?,
            self.1.join_state(parts)?,
            self.2.join_state(parts)?,
        ))
    }

    fn fold_parts(
        &self,
        state: &mut Self::State,
        events: &[SequencedEvent],
        parts: &[Leaf],
        seen: &[Option<Position>],
    ) -> usize {
        let a = self.0.fold_parts(&mut state.0, events, parts, seen);
        let b = self
            .1
            .fold_parts(&mut state.1, events, &parts[a..], &seen[a..]);
        a + b
            + self
                .2
                .fold_parts(&mut state.2, events, &parts[a + b..], &seen[a + b..])
    }
}

/// The query matching what either query matches.
pub fn union(a: &Query, b: &Query) -> Query {
    union_all([a, b]).unwrap_or_else(Query::all)
}

/// The query matching what any of `queries` matches (`None` for none): each distinct item once,
/// in the order first met. A chain's read and condition are the union of tens of queries;
/// folding [`union`] over them copied the growing union at every step.
pub(crate) fn union_all<'a>(queries: impl IntoIterator<Item = &'a Query>) -> Option<Query> {
    let mut seen: HashSet<&QueryItem> = HashSet::new();
    let mut items = Vec::new();
    let mut any = false;
    for query in queries {
        any = true;
        if query.is_all() {
            return Some(Query::all());
        }
        for item in query.items() {
            if seen.insert(item) {
                items.push(item.clone());
            }
        }
    }
    any.then(|| Query::from_items(items))
}

/// A command: reads its projection, decides on the folded state, and has the runtime append the
/// resulting events only if its boundary did not change since the read.
///
/// `decide` must be pure: the runtime may call it again after a conflict, on newer state.
pub trait Decision: Send + Sync + 'static {
    /// A short static name, used as the `decision` label of metrics (never an id).
    const NAME: &'static str;

    /// What the decision reads; a tuple of projections is read in one round trip.
    type Projection: Projection;

    /// Why a command may be refused (a business rule).
    type Rejection: Send + 'static;

    /// The projection to fold before deciding.
    fn projection(&self) -> Self::Projection;

    /// The events to append, or why not.
    ///
    /// # Errors
    ///
    /// A business rule refuses the command.
    fn decide(
        &self,
        state: &<Self::Projection as Projection>::State,
    ) -> Result<Vec<Event>, Self::Rejection>;

    /// The boundary that must not change between the read and the append. Defaults to the read
    /// query; it may be narrower (deposits count towards a balance but need not invalidate a
    /// withdrawal).
    fn condition_query(&self, read_query: &Query) -> Query {
        read_query.clone()
    }

    /// Commands with the same key run on the same command actor, one after the other, instead of
    /// conflicting in the database. Defaults to the first tag of the read query's first item
    /// (its first type when it names no tag), so commands on one course, one account or one
    /// invoice sequence share an actor.
    fn consistency_key(&self, read_query: &Query) -> u64 {
        default_key(read_query)
    }

    /// The keys a command holds while it runs: no other command holding one of them reads or
    /// appends at the same time, whichever actor of the process runs it (nor, for keys found
    /// contended by other processes, a command of another runtime taking its turn on them).
    /// Defaults to one key per item of the condition query (its first tag, its types when it
    /// names no tag), so a transfer holds both its accounts and an enrollment its course and its
    /// student. Keys only spare conflicts: the append condition still guards every append, so
    /// keys too few or too coarse cost retries, never consistency.
    fn consistency_keys(&self, condition_query: &Query) -> Vec<u64> {
        default_keys(condition_query)
    }
}

/// The default consistency key of a query: see [`Decision::consistency_key`].
pub fn default_key(query: &Query) -> u64 {
    match query.items().first() {
        None => key_of(&"*all*"),
        Some(item) => match item.tags().first() {
            Some(tag) => key_of(tag),
            None => key_of(&item.types().first()),
        },
    }
}

/// The default consistency keys of a query, sorted, without repeats: see
/// [`Decision::consistency_keys`]. The key of a query's first item is its [`default_key`].
pub fn default_keys(query: &Query) -> Vec<u64> {
    let mut keys: Vec<u64> = Vec::with_capacity(query.items().len());
    if query.items().is_empty() {
        keys.push(key_of(&"*all*"));
    }
    for item in query.items() {
        match item.tags().first() {
            Some(tag) => keys.push(key_of(tag)),
            // Type-only: any event of these types may match it.
            None if item.types().is_empty() => keys.push(key_of(&item.types().first())),
            None => keys.extend(item.types().iter().map(|t| key_of(&Some(t)))),
        }
    }
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn key_of(value: &(impl Hash + ?Sized)) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::P;

    fn on(tag: &str) -> Query {
        QueryItem::new(["T"], [P("k", tag)]).into()
    }

    #[test]
    fn union_all_keeps_each_item_once_in_the_order_first_met() {
        let both: Query = Query::from_items(vec![
            QueryItem::new(["T"], [P("k", "b")]),
            QueryItem::new(["T"], [P("k", "c")]),
        ]);
        let all = union_all([&on("a"), &both, &on("b"), &on("a")]).expect("a union");
        assert_eq!(
            all,
            Query::from_items(vec![
                QueryItem::new(["T"], [P("k", "a")]),
                QueryItem::new(["T"], [P("k", "b")]),
                QueryItem::new(["T"], [P("k", "c")]),
            ])
        );
    }

    #[test]
    fn union_all_of_everything_is_everything_and_of_nothing_is_none() {
        assert!(
            union_all([&on("a"), &Query::all()])
                .expect("a union")
                .is_all()
        );
        assert!(union_all(std::iter::empty()).is_none());
    }
}
