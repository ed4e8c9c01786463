//! Search over the store (#21): the search box's language ([`query`], parsed once into a
//! tree, pure), the text both databases index and query ([`text`], pure), and the background
//! indexing of mail stored before the index existed ([`backfill`]). Running a query is the
//! store's (`store/search.rs`): each term becomes a bound condition on PostgreSQL's `tsvector`
//! index or SQLite's FTS5 table, never SQL text built from the query.

pub mod backfill;
pub mod query;
pub mod text;

pub use query::{parse, Field, Is, ParseError, Query, Term};
