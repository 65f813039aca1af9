//! Real parts for the tests of service-proxy-agent: the metadata-server emulator, an xDS control
//! plane over real gRPC, a runner for the real Envoy binary, and private network namespaces.

pub mod discovery_schema;
pub mod envoy;
pub mod exec;
pub mod fleet_apis;
pub mod http_stub;
pub mod metadata_emulator;
pub mod netns;
pub mod project_apis;
pub mod xds;
