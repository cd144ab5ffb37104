//! The operator commands' library code (`check`, `status`, and the dead-letter, group
//! and consumer commands): what they look at and change; `cli/` only parses their
//! arguments and prints their results. Like the pipeline, ops may name several steps.

pub mod check;
pub mod status;
