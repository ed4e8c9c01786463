//! The nasty-mail corpus and the harness that runs mail through the real daemon.
//!
//! Every case is built by code here (large ones are generated), delivered to a throwaway
//! Dovecot (APPEND, or straight into the Maildir when APPEND refuses the bytes), fetched by the
//! daemon, and then checked field by field in the database.
#![allow(dead_code)]

pub mod cases;
pub mod harness;
