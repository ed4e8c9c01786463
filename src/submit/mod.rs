//! Sending mail (#20): the message a submission becomes.
//!
//! - [`mime`]: a draft (addresses, subject, bodies, attachments, the message replied to) →
//!   RFC 5322 bytes with our Message-ID, built by `mail-builder`; pure, every refusal typed.

pub mod mime;
