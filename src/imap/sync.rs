//! Catch-up commands.
