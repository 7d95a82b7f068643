//! Decisions, after the decider pattern: a query, a state folded from the events it matches, and
//! a pure `decide`.

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::event::{Event, SequencedEvent};
use crate::query::Query;

/// State folded from the events matching a query.
pub trait Projection: Send + Sync + 'static {
    /// What the projection knows. `Clone` lets a command actor keep the state of a warm
    /// boundary and fold only the events appended since.
    type State: Clone + Send + 'static;

    /// The events this projection depends on.
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
}

/// The query matching what either query matches.
pub fn union(a: &Query, b: &Query) -> Query {
    if a.is_all() || b.is_all() {
        return Query::all();
    }
    let mut items = a.items().to_vec();
    for item in b.items() {
        if !items.contains(item) {
            items.push(item.clone());
        }
    }
    Query::from_items(items)
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
}

/// The default consistency key of a query: see [`Decision::consistency_key`].
pub fn default_key(query: &Query) -> u64 {
    let mut h = DefaultHasher::new();
    match query.items().first() {
        None => "*all*".hash(&mut h),
        Some(item) => match item.tags().first() {
            Some(tag) => tag.hash(&mut h),
            None => item.types().first().hash(&mut h),
        },
    }
    h.finish()
}
