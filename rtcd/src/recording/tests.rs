//! File tests (real ffmpeg).
