//! One seeded simulation run.
