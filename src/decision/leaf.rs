//! A leaf projection as the key of its folded state.

use std::any::{Any, TypeId};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use super::Projection;
use crate::query::Query;

/// A leaf projection by value: the key under which the runtime keeps its folded state warm and
/// by which a chain's commands share a state. Two leaves are equal exactly when they are
/// projections of the same type with equal fields (`Projection: Eq + Hash`), so projections
/// whose `evolve` would fold the same events differently (a field the query does not name)
/// never share a state.
#[doc(hidden)]
#[derive(Clone)]
pub struct Leaf {
    projection: Arc<dyn AnyProjection>,
    query: Query,
    /// Of the type and the value, computed once: leaves are hashed on every cache look-up.
    hash: u64,
}

impl Leaf {
    pub(crate) fn of<P: Projection>(projection: &P) -> Self {
        let mut hasher = DefaultHasher::new();
        TypeId::of::<P>().hash(&mut hasher);
        projection.hash(&mut hasher);
        Self {
            projection: Arc::new(projection.clone()),
            query: projection.query(),
            hash: hasher.finish(),
        }
    }

    /// The query the projection answered when the leaf was made.
    pub(crate) fn query(&self) -> &Query {
        &self.query
    }
}

impl PartialEq for Leaf {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.projection.equals(other.projection.as_any())
    }
}

impl Eq for Leaf {}

impl Hash for Leaf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

/// A projection compared with another of any type.
trait AnyProjection: Any + Send + Sync {
    fn equals(&self, other: &dyn Any) -> bool;
    fn as_any(&self) -> &dyn Any;
}

impl<P: Projection> AnyProjection for P {
    fn equals(&self, other: &dyn Any) -> bool {
        other.downcast_ref::<P>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SequencedEvent;
    use crate::query::QueryItem;

    /// Counts a student's courses of one semester: the semester is not in the query.
    #[derive(Clone, PartialEq, Eq, Hash)]
    struct Courses {
        student: String,
        semester: u32,
    }

    impl Projection for Courses {
        type State = u32;
        fn query(&self) -> Query {
            QueryItem::new(["Enrolled"], [crate::P("student", &*self.student)]).into()
        }
        fn initial_state(&self) -> u32 {
            0
        }
        fn evolve(&self, _: &mut u32, _: &SequencedEvent) {}
    }

    #[derive(Clone, PartialEq, Eq, Hash)]
    struct Other(String);

    impl Projection for Other {
        type State = ();
        fn query(&self) -> Query {
            QueryItem::new(["Enrolled"], [crate::P("student", &*self.0)]).into()
        }
        fn initial_state(&self) {}
        fn evolve(&self, (): &mut (), _: &SequencedEvent) {}
    }

    fn courses(student: &str, semester: u32) -> Leaf {
        Leaf::of(&Courses {
            student: student.to_owned(),
            semester,
        })
    }

    #[test]
    fn leaves_are_equal_exactly_when_type_and_fields_are() {
        assert_eq!(courses("s1", 1), courses("s1", 1));
        assert_eq!(courses("s1", 1).hash, courses("s1", 1).hash);
        // Same query, another field: another state.
        assert_eq!(courses("s1", 1).query(), courses("s1", 2).query());
        assert_ne!(courses("s1", 1), courses("s1", 2));
        assert_ne!(courses("s1", 1), courses("s2", 1));
        // Same query, another type.
        let other = Leaf::of(&Other("s1".to_owned()));
        assert_eq!(other.query(), courses("s1", 1).query());
        assert_ne!(other, courses("s1", 1));
    }
}
