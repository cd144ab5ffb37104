//! Dev and demo tools, not part of the sync: the generated Debezium order events and
//! the XADD helper behind `redsink produce`, `scripts/demo.sh`, the tests and the
//! benchmark.

pub mod produce;
