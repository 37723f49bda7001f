//! The edges of command-svc: gRPC for internal callers, HTTP for the payment webhook and probes.
//! Requests are parsed into validated commands here, and every error is mapped here, once.

pub mod auth;
pub mod error;
pub mod grpc;
pub mod http;
pub mod observe;
pub mod parse;
pub mod webhook;
