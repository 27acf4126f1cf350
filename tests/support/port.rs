//! A free loopback port, for a process started by a test to bind. (A file of
//! its own: test binaries that do not take the whole harness include it by
//! path.)

/// A port nothing listens on at the moment (another process may take it
/// before the caller binds it; callers that start a process retry or fail
/// loudly).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("bound").port()
}
