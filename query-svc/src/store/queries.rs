//! What the REST API reads from the read model.
