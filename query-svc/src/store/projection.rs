//! The projection's writes. Every one is idempotent and order-insensitive.
