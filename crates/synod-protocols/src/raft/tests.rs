//! Scenario tests for the Raft core and the key-value node.
