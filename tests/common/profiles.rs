//! pprof profiles: read by the real `go tool pprof`, and decoded.

use std::path::Path;

use super::go::go;

/// `go tool pprof ARGS PROFILE`'s output, which must succeed.
pub fn pprof(args: &[&str], profile: &Path) -> String {
    let out = go()
        .arg("tool")
        .arg("pprof")
        .args(args)
        .arg(profile)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "go tool pprof {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The gzipped profile.proto at `path`.
pub fn decode(path: &Path) -> leaktrace::pprof::proto::Profile {
    use prost::Message;
    use std::io::Read;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("profile written"))
        .read_to_end(&mut bytes)
        .expect("gzip");
    leaktrace::pprof::proto::Profile::decode(&*bytes).expect("profile.proto")
}
