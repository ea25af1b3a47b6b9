//! Recordings as files: the contract between rtcd, which writes them, and whoever reads them
//! (the platform, `rtcd-compose`, a person with ffprobe).
//!
//! A recording is one directory: one file per published track, written without transcoding,
//! and [`manifest::Manifest`] (`manifest.json`) naming each file with its participant, source,
//! codec and start on a common clock. `docs/recording.md` documents both.
//!
//! [`compose`] (the `rtcd-compose` binary) turns such a directory into one playable file.

pub mod compose;
pub mod manifest;
