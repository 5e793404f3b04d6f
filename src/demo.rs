//! `ssegate demo`: ssegate on the embedded defaults with a built-in demo app as upstream.

/// Runs the demo until interrupted.
pub async fn run() -> Result<(), String> {
    Err("the demo is not built yet".to_owned())
}
